"""The report's names, counts, opening pair and fixes agree with the commands: ``matrix`` counts the same
distinct ordered pairs, the page opens on a pair worth reading, and each ACS fix is what ``fix`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pdma.cli import main
from p2pdma.examples import load, names
from p2pdma.p2p.decide import MapType
from p2pdma.p2p.fix import plan_fix
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci import names as pci_names
from p2pdma.report.html import config_acs_fix, initial_pair, pair_causes, render_html, report_data
from tests.report.test_html import embedded

TREE_137 = "32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(list(argv)) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def _report_vs_matrix(capsys: pytest.CaptureFixture[str], tmp_path: Path, *source: str) -> dict[str, int]:
    """The report's header counts (embedded pair_counts and the --json summary) against `matrix --json`."""
    out = tmp_path / "r.html"
    summary = _json(capsys, "report", str(out), "--force", "--json", *source)
    page = embedded(out.read_text())
    matrix = _json(capsys, "matrix", "--json", *source)
    assert summary["counts"] == page["pair_counts"] == matrix["counts"]
    assert summary["endpoints"] == page["matrix"]["n"] == len(matrix["devices"])  # type: ignore[arg-type,index]
    assert page["selection"] == matrix["selection"]
    counts = matrix["counts"]
    assert isinstance(counts, dict)
    return counts


@pytest.mark.parametrize("name", names())
def test_report_counts_equal_matrix_counts(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    c = _report_vs_matrix(capsys, tmp_path, "--example", name)
    n = c["self"]
    assert c["pairs"] == n * (n - 1) == c["BUS_ADDR"] + c["THRU_HOST_BRIDGE"] + c["NOT_SUPPORTED"]
    # --all-functions too: every endpoint, still distinct ordered pairs
    c = _report_vs_matrix(capsys, tmp_path, "--example", name, "--all-functions")
    assert c["self"] == len(load(name).endpoints)


def test_report_counts_on_the_137_function_tree(
    shared_hwloc: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    c = _report_vs_matrix(capsys, tmp_path, "--root", str(shared_hwloc / TREE_137))
    assert c["pairs"] == 30 and c["BUS_ADDR"] == 2  # 6 devices people peer; the diagonal is not counted


def test_gpu8_counts_are_distinct_pairs() -> None:
    topo = load("gpu8-switches")
    sel = pci_names.select_devices(topo)
    doc = report_data(topo, mat=compute_matrix(topo, select=sel.bdfs), selection=sel)
    # 8 GPUs and 4 NICs in pairs and triples below 4 switches: 24 direct pairs, not 24 + the diagonal
    assert doc["pair_counts"]["BUS_ADDR"] == 24 and doc["pair_counts"]["self"] == 13
    assert doc["counts"]["BUS_ADDR"] == 24 + 13  # the /1 field keeps what it always meant
    assert doc["selection"]["summary"].startswith("2 functions hidden: 2 uncore")


@pytest.mark.parametrize("name", names())
def test_opens_on_a_pair_people_peer_that_is_not_direct(name: str) -> None:
    topo = load(name)
    mat = compute_matrix(topo)  # every endpoint: the memory-map RCiEPs come first in BDF order
    start = initial_pair(mat)
    assert start is not None
    i, j = start
    peers = [k for k, b in enumerate(mat.bdfs) if pci_names.is_peer_device(topo[b])]
    if len(peers) < 2:  # spr-dsa-hostbridge: one accelerator; the first pair that is not direct
        peers = list(range(len(mat.bdfs)))
    assert i != j and i in peers and j in peers
    sub = mat.map_type[np.ix_(peers, peers)] != MapType.BUS_ADDR.value
    np.fill_diagonal(sub, False)
    if sub.any():
        a, b = np.argwhere(sub)[0]
        assert (i, j) == (peers[a], peers[b]) and mat.map_type[i, j] != MapType.BUS_ADDR.value
    assert embedded(render_html(topo, mat=mat))["initial"] == [i, j]


def test_opens_on_a_gpu_nic_pair_when_every_pair_is_direct() -> None:
    topo = load("gpu8-switches")
    sel = pci_names.select_devices(topo, devices="GPU0,GPU1,NIC0")  # one switch: all direct
    mat = compute_matrix(topo, select=sel.bdfs)
    assert (mat.map_type[~np.eye(3, dtype=bool)] == MapType.BUS_ADDR.value).all()
    alias = pci_names.aliases(topo)
    i, j = initial_pair(mat) or (-1, -1)
    assert (alias[mat.bdfs[i]], alias[mat.bdfs[j]]) == ("GPU0", "NIC0")


@pytest.mark.parametrize("name", names())
def test_config_acs_is_what_fix_recommends(name: str) -> None:
    topo = load(name)
    mat = compute_matrix(topo)
    idx, causes = pair_causes(mat)
    doc = report_data(topo, mat=mat)
    fixed = 0
    for k, c in enumerate(causes):
        assert doc["cause_config_acs"][k] == (config_acs_fix(topo, c.acs_ports) if c.fix else None)
        if not c.fix:
            continue
        i, j = (int(x) for x in np.argwhere(idx == k)[0])
        plan = plan_fix(topo, [mat.bdfs[i], mat.bdfs[j]])
        assert doc["cause_config_acs"][k] == plan.config_acs
        fixed += 1
    if name == "acs-redirect":
        assert fixed >= 2


def test_acs_redirect_fix_text() -> None:
    topo = load("acs-redirect")
    assert config_acs_fix(topo, ("0000:02:01.0", "0000:02:00.0")) == (
        "pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0")


def test_devices_carry_names_numa_and_os_names() -> None:
    topo = load("gpu8-switches")
    doc = report_data(topo)
    devs = {d["bdf"]: d for d in doc["devices"]}
    alias = pci_names.aliases(topo)
    labels = pci_names.labels(topo)
    for d in topo.devices:
        got = devs[d.bdf]
        assert got["alias"] == alias.get(d.bdf) and got["label"] == labels[d.bdf]
        assert got["peer"] == pci_names.is_peer_device(d)
        assert got["os_names"] == list(d.os_names)
        assert got["numa"] == (d.numa_node if d.numa_node is not None and d.numa_node >= 0 else None)
    assert devs["0000:03:00.0"]["alias"] == "GPU0" and devs["0000:03:00.0"]["numa"] == 0
    # dN is the index lookup() takes for every endpoint, aliased or not
    for k, d in enumerate(topo.endpoints):
        assert devs[d.bdf]["dn"] == k and pci_names.lookup(topo, f"d{k}").bdf == d.bdf


def test_report_view_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    s = _json(capsys, "report", str(out), "--example", "gpu8-switches", "--class", "nic", "--json")
    assert s["endpoints"] == 4 and s["counts"]["pairs"] == 12  # type: ignore[index]
    s = _json(capsys, "report", str(out), "--force", "--example", "gpu8-switches", "--devices", "GPU0,3:0.0,NIC3",
              "--json")
    assert s["endpoints"] == 2
    assert main(["report", str(out), "--force", "--example", "gpu8-switches", "--devices", "GPU9"]) == 2
    assert "did you mean" in capsys.readouterr().err
