"""The HTML report generator without a browser: self-contained, data faithful to the matrix."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from p2pdma.cli import main
from p2pdma.examples import load, names
from p2pdma.p2p.decide import KERNEL_PROFILES, MapType
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.report.html import CELL_CLASSES, DATA_SCHEMA, Cause, pair_causes, render_html, report_data
from p2pdma.sources.synth import generate_machine
from tests.helpers import as_topology, dev, hb, machine

DATA_RE = re.compile(r'<script type="application/json" id="p2pdma-data">(.*?)</script>', re.S)


def embedded(page: str) -> dict[str, object]:
    m = DATA_RE.search(page)
    assert m, "no embedded data blob"
    doc: dict[str, object] = json.loads(m.group(1))
    return doc


def decode(doc: dict[str, object], key: str, width_key: str | None = None) -> np.ndarray:
    mat = doc["matrix"]
    assert isinstance(mat, dict)
    width = mat[width_key] if width_key else 1
    raw = base64.b64decode(mat[key])
    return np.frombuffer(raw, dtype=f"<u{width}").reshape(mat["n"], mat["n"])


@pytest.mark.parametrize("name", names())
def test_page_is_self_contained(name: str) -> None:
    page = render_html(load(name))
    assert page.startswith("<!DOCTYPE html>")
    # nothing is fetched: no external scripts, styles, fonts or images
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(|@font-face", page)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, not a fetch
    assert page.count("<script") == 3 and page.count("</script>") == 3


@pytest.mark.parametrize("profile", KERNEL_PROFILES)
@pytest.mark.parametrize("name", ["gpu8-switches", "acs-redirect", "unlisted-hostbridge"])
def test_embedded_matrix_is_the_matrix(name: str, profile: str) -> None:
    topo = load(name)
    mat = compute_matrix(topo, profile)
    doc = embedded(render_html(topo, profile))
    assert doc["schema"] == DATA_SCHEMA and doc["kernel"] == profile and doc["machine"] == name
    devices = doc["devices"]
    assert isinstance(devices, list) and [d["bdf"] for d in devices] == [d.bdf for d in topo.devices]
    for d, rec in zip(topo.devices, devices, strict=True):
        parent = rec["parent"]
        assert (devices[parent]["bdf"] if parent >= 0 else None) == d.parent
    assert [devices[k]["bdf"] for k in doc["endpoints"]] == list(mat.bdfs)  # type: ignore[attr-defined]
    assert (decode(doc, "map_type") == mat.map_type).all()
    assert (decode(doc, "distance", "distance_bytes") == mat.distance).all()
    assert (decode(doc, "certain") == mat.certain).all()
    causes = doc["causes"]
    assert isinstance(causes, list)
    idx = decode(doc, "cause", "cause_bytes")
    n = len(mat.bdfs)
    for i in range(n):
        for j in range(n):
            v = mat.verdict(i, j)
            reason, fix, ports = causes[idx[i, j]]
            assert (reason, fix) == (v.reason, v.fix)
            assert [devices[k]["bdf"] for k in ports] == list(v.acs_ports)


def _all_pairs_agree(topo: Topology, profile: str) -> None:
    mat = compute_matrix(topo, profile)
    idx, causes = pair_causes(mat)
    n = len(mat.bdfs)
    for i in range(n):
        for j in range(n):
            v = mat.verdict(i, j)
            assert causes[idx[i, j]] == Cause(v.reason, v.fix, v.acs_ports), (mat.bdfs[i], mat.bdfs[j])


@pytest.mark.parametrize("profile", KERNEL_PROFILES)
@pytest.mark.parametrize(
    "kw",
    [
        {"seed": 3, "host_bridges": 3},
        {"seed": 4, "host_bridges": 2, "whitelisted": False, "hmat": True, "config_size_64_probability": 0.2},
        {"seed": 5, "host_bridges": 2, "cpu": "amd", "ec_probability": 0.5, "acs_probability": 0.7},
    ],
)
def test_grouped_causes_equal_per_pair_verdicts(kw: dict[str, object], profile: str) -> None:
    """The shortcut (one verdict per pair of host bridges across root-bus devices) loses nothing."""
    _all_pairs_agree(generate_machine(60, **kw).topology(), profile)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", names())
def test_grouped_causes_on_every_example(name: str) -> None:
    for profile in KERNEL_PROFILES:
        _all_pairs_agree(load(name), profile)


def test_markup_in_names_cannot_break_out() -> None:
    spec = machine(
        [hb("pci0000:00", [dev("0000:00:00.0", "8086:2020", port="rc-endpoint"), dev("0000:00:01.0")])],
        name="x</script><b>",
    )
    page = render_html(as_topology(spec))
    assert "x</script>" not in page and "<b>" not in page
    assert embedded(page)["machine"] == "x</script><b>"


def test_cell_classes_documented() -> None:
    assert CELL_CLASSES == {
        MapType.BUS_ADDR: "cell-bus-addr",
        MapType.THRU_HOST_BRIDGE: "cell-thru-host-bridge",
        MapType.NOT_SUPPORTED: "cell-not-supported",
    }
    page = render_html(load("gpu8-switches"))
    for cls in CELL_CLASSES.values():
        assert f".{cls} {{" in page


def test_acs_ports_and_links_in_the_data() -> None:
    doc = report_data(load("acs-redirect"))
    devices = {d["bdf"]: d for d in doc["devices"]}
    assert devices["0000:02:00.0"]["acs"] == "SV,RR,CR,UF" and devices["0000:02:00.0"]["acs_redir"]
    assert devices["0000:07:02.0"]["acs"] == "-" and not devices["0000:07:02.0"]["acs_redir"]
    # a switch downstream port's link is the edge below it, not the one into it
    assert devices["0000:02:00.0"]["edge_link"] is None
    assert devices["0000:03:00.0"]["edge_link"] == "x16 8GT/s"
    assert devices["0000:01:00.0"]["edge_link"] == "x16 8GT/s"


def test_500_endpoints_small_and_quick(big_topology: Topology) -> None:
    t = time.perf_counter()
    page = render_html(big_topology)
    seconds = time.perf_counter() - t
    doc = embedded(page)
    assert doc["matrix"]["n"] == 500  # type: ignore[index]
    assert len(page.encode()) < 10 * 1024 * 1024
    assert seconds < 20


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(out), "--example", "acs-redirect", "--kernel", "classic", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["schema"] == "p2pdma.report/1" and summary["bytes"] == out.stat().st_size
    # classic: alias of the newest profile; the matrix holds the devices people peer (the tree every function)
    assert summary["kernel"] == "7.3" and summary["endpoints"] == 6
    assert summary["selection"]["summary"] == "1 function hidden: 1 bridge; --all-functions shows it"
    assert summary["counts"]["pairs"] == 30 and summary["tool_version"]
    assert main(["report", str(out), "--example", "acs-redirect", "--all-functions", "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"] == 7
    assert embedded(out.read_text())["kernel"] == "7.3"
    assert main(["report", str(out), "--example", "gpu8-switches"]) == 2  # exists: refused without --force
    capsys.readouterr()
    assert main(["report", str(out), "--example", "gpu8-switches", "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")


def test_report_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "-", "--example", "unlisted-hostbridge"]) == 0
    assert embedded(capsys.readouterr().out)["machine"] == "unlisted-hostbridge"


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "/nonexistent-dir/r.html", "--example", "gpu8-switches"],
        ["report", "r.html", "--example", "no-such-machine"],
    ],
)
def test_report_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pdma: ") and err.count("\n") == 1
