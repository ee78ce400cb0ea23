"""Fleets: per-machine causes equal a pair-by-pair count, fingerprints ignore numbering but not shape,
groups and outliers, a bad capture fails only its row, and the process pool, a local Dask cluster and
an existing Dask scheduler give the same document as one process."""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from p2pdma.cli import main
from p2pdma.cli.fleet import ProgressBar
from p2pdma.fleet.analyse import MachineResult, analyse_machine, cause_counts, topology_fingerprint
from p2pdma.fleet.discover import find_tasks
from p2pdma.fleet.engines import Task, run
from p2pdma.fleet.report import build_report, report_json
from p2pdma.fleet.synth import write_fleet
from p2pdma.p2p.acs import AcsState
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.synth import generate

HB_REASON = re.compile(
    r"host bridge \S+ \((?P<id>[0-9a-f]{4}:[0-9a-f]{4}) at [^)]*\) is (?P<what>not in|whitelisted only)"
)


def _brute_causes(topo: Topology, profile: str, self_pairs: bool = True) -> dict[str, int]:
    """Cause codes counted pair by pair from the full per-pair verdicts and their reason text
    (``self_pairs=False``: distinct ordered pairs only)."""
    out: Counter[str] = Counter()
    eps = [d for d in topo.devices if not d.is_bridge]
    for p in eps:
        for c in eps:
            if p is c and not self_pairs:
                continue
            v = calc_map_type_and_dist(topo, p, c, profile)
            if not v.certain:
                out["acs-unknown"] += 1
            if v.map_type == MapType.BUS_ADDR:
                continue
            if v.common is None:
                out["no-common:host-bridges" if p.host_bridge != c.host_bridge else "no-common:root-ports"] += 1
            else:
                states = {x.bdf: x.state for x in v.ports}
                codes = set()
                for bdf in v.acs_ports:
                    word = "acs-redirect" if states[bdf] == AcsState.REDIRECT else "acs-blocked"
                    d = topo[bdf]
                    codes.add(f"{word}:{d.port_type_name or ('bridge' if d.is_bridge else 'endpoint')}")
                for code in codes:
                    out[code] += 1
            if v.map_type == MapType.NOT_SUPPORTED:
                found = set()
                for m in HB_REASON.finditer(v.reason):
                    kind = "hb-not-whitelisted" if m["what"] == "not in" else "hb-same-host-bridge-only"
                    found.add(f"{kind}:{m['id']}")
                if "has no devfn 00.0" in v.reason:
                    found.add("hb-no-device")
                for code in found or {"hb-refused"}:
                    out[code] += 1
    return dict(out)


@pytest.mark.parametrize("seed", range(6))
def test_cause_counts_equal_pair_by_pair(seed: int) -> None:
    spec = generate(
        20 + seed, seed=seed, acs_probability=0.7, ec_probability=0.5, multifunction_probability=0.4,
        vf_probability=0.3, config_size_64_probability=0.25, max_switch_depth=3, whitelisted=seed % 2 == 0,
        host_bridges=1 + seed % 3,
    )
    topo = parse_spec(spec).topology()
    for profile in ("latest", "classic"):
        mat = compute_matrix(topo, profile)
        fast = cause_counts(topo, mat)
        assert fast == _brute_causes(topo, profile), (seed, profile)


def _renumbered(spec: dict[str, Any]) -> dict[str, Any]:
    """The same machine with every PCI domain moved by 0x10 and every device list reversed."""
    text = json.dumps(spec)
    text = re.sub(r'"(pci)?([0-9a-f]{4}):(?=[0-9a-f]{2}[:"])', lambda m: f'"{m[1] or ""}{int(m[2], 16) + 0x10:04x}:',
                  text)
    out: dict[str, Any] = json.loads(text)

    def flip(devs: list[dict[str, Any]]) -> None:
        devs.reverse()
        for d in devs:
            flip(d.get("children", []))

    for hb in out["host_bridges"]:
        flip(hb["devices"])
    out["host_bridges"].reverse()
    return out


def _walk(devs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in devs:
        out.append(d)
        out.extend(_walk(d.get("children", [])))
    return out


def test_fingerprint_ignores_numbering_and_acs_but_not_shape() -> None:
    spec = generate(24, seed=3, vf_probability=0.3)
    base = topology_fingerprint(parse_spec(spec).topology())
    moved = parse_spec(_renumbered(spec)).topology()
    assert {d.domain for d in moved.devices} != {d.domain for d in parse_spec(spec).topology().devices}
    assert topology_fingerprint(moved) == base
    acs = copy.deepcopy(spec)
    port = next(d for hb in acs["host_bridges"] for d in _walk(hb["devices"]) if d.get("port") == "root-port")
    port["acs"] = {"cap": 0x7F, "ctrl": 0x1D}
    assert topology_fingerprint(parse_spec(acs).topology()) == base
    other = copy.deepcopy(spec)
    ep = next(d for hb in other["host_bridges"] for d in _walk(hb["devices"]) if d.get("port") == "endpoint")
    ep["id"] = "1234:5678"
    assert topology_fingerprint(parse_spec(other).topology()) != base
    amd = copy.deepcopy(spec)
    amd["cpu"] = {"vendor": "AuthenticAMD", "family": 0x19}
    assert topology_fingerprint(parse_spec(amd).topology()) != base


def _row(name: str, fp: str, pairs: tuple[int, int, int], causes: tuple[tuple[str, int], ...] = ()) -> MachineResult:
    return MachineResult(name=name, source=f"/x/{name}.tar.gz", status="ok", pairs=pairs, fingerprint=fp,
                         causes=causes)


def test_groups_outliers_and_causes_from_rows() -> None:
    rows = [
        _row("c", "f1", (4, 0, 0)),
        _row("a", "f1", (4, 0, 0)),
        _row("b", "f1", (2, 2, 0), (("acs-redirect:switch-downstream", 2),)),
        _row("d", "f2", (1, 0, 3), (("hb-not-whitelisted:8086:1234", 3),)),
        _row("e", "f3", (1, 1, 0)),
        _row("f", "f3", (0, 2, 0)),
        MachineResult(name="z", source="/x/z.tar.gz", status="failed", reason="refused: bad"),
    ]
    rep = build_report(rows, "latest")
    assert [m.name for m in rep.machines] == ["a", "b", "c", "d", "e", "f", "z"]
    assert [(g.fingerprint, g.machines) for g in rep.groups] == [
        ("f1", ("a", "b", "c")), ("f3", ("e", "f")), ("f2", ("d",))]
    # the summary two of three share is the reference; a tie goes to the first name
    assert [(o.machine, o.reference) for o in rep.outliers] == [("b", "a"), ("f", "e")]
    assert any("acs-redirect:switch-downstream 2 pairs (reference 0)" in d for d in rep.outliers[0].differences)
    assert rep.failed == 1
    doc = report_json(rep)
    assert doc["summary"] == {"machines": 7, "ok": 6, "failed": 1, "groups": 3, "outliers": 2}
    assert [(c["code"], c["machines"], c["pairs"]) for c in doc["causes"]] == [
        ("hb-not-whitelisted:8086:1234", 1, 3), ("acs-redirect:switch-downstream", 1, 2)]
    assert doc["machines"][-1]["status"] == "failed" and doc["machines"][-1]["reason"] == "refused: bad"
    # the same rows in any order give the same document
    assert report_json(build_report(list(reversed(rows)), "latest")) == doc


def _bad_captures(dest: Path) -> None:
    (dest / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is no gzip stream")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("sys/link")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "/etc/shadow"
        tf.addfile(ti)
    (dest / "hostile.tar.gz").write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def fleet200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("fleet200")
    write_fleet(dest, 200, endpoints=6, distinct=5, outlier_every=9, seed=11)
    _bad_captures(dest)
    return dest


def test_pool_and_local_dask_cluster_give_identical_results(fleet200: Path) -> None:
    tasks = find_tasks(str(fleet200))
    assert len(tasks) == 202
    pool = report_json(build_report(run(tasks, "latest", "pool", workers=2), "latest"))
    dask = report_json(build_report(run(tasks, "latest", "dask", workers=2), "latest"))
    assert pool == dask
    assert pool["summary"]["machines"] == 202 and pool["summary"]["failed"] == 2
    failed = {m["name"]: m["reason"] for m in pool["machines"] if m["status"] == "failed"}
    assert set(failed) == {"corrupt", "hostile"}
    assert "refused" in failed["hostile"] and "outside the root" in failed["hostile"]
    # 5 distinct machines: 5 groups, and every outlier is one of the generated variants
    assert len(pool["groups"]) == 5
    outliers = {o["machine"] for o in pool["outliers"]}
    assert outliers and all(int(name[4:]) % 9 == 8 for name in outliers)
    assert all(o["differences"] for o in pool["outliers"])


def test_serial_and_an_existing_dask_scheduler_agree(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    write_fleet(tmp_path, 12, endpoints=5, distinct=3, outlier_every=4, seed=5)
    _bad_captures(tmp_path)
    tasks = find_tasks(str(tmp_path / "*.tar.gz"))
    serial = run(tasks, "classic", "serial")
    import dask

    scratch = str(tmp_path / "dask-scratch")
    with dask.config.set({"temporary-directory": scratch}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, local_directory=scratch
    ) as c:
        shipped = run(tasks, "classic", "dask", scheduler=c.scheduler_address)
    assert serial == shipped
    assert sum(not r.ok for r in serial) == 2


def test_a_failed_row_does_not_stop_the_run(tmp_path: Path) -> None:
    write_fleet(tmp_path, 3, endpoints=4, distinct=1)
    _bad_captures(tmp_path)
    (tmp_path / "bad.xml").write_text("<topology><object")
    rows = run(find_tasks(str(tmp_path)), "latest", "serial")
    assert [r.ok for r in rows] == [False, False, False, True, True, True]
    assert all(r.reason and "\n" not in r.reason for r in rows if not r.ok)
    r = analyse_machine("gone", str(tmp_path / "gone.tar.gz"), "latest")
    assert r.status == "failed" and r.reason is not None and "gone.tar.gz" in r.reason


def test_cli_fleet_table_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         shared_hwloc: Path) -> None:
    write_fleet(tmp_path, 6, endpoints=5, distinct=2, outlier_every=3)
    shutil.copy(shared_hwloc / "24em64t-2n6c2t-pci.xml", tmp_path)
    assert main(["fleet", str(tmp_path), "--engine", "serial"]) == 0
    out, err = capsys.readouterr()
    assert "topology groups (3):" in out and "outliers (" in out and "top causes" in out
    assert "24em64t-2n6c2t-pci" in out and "machines/s on engine serial" in err
    assert main(["fleet", str(tmp_path / "node*.tar.gz"), "--engine", "pool", "--workers", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "p2pdma.fleet/1" and doc["summary"]["machines"] == 6
    assert {"name", "status", "pairs", "uncertain", "fingerprint", "causes"} <= set(doc["machines"][0])
    assert all(c["text"] for c in doc["causes"])
    for argv in (["fleet", str(tmp_path / "nothing-*.tgz")],
                 ["fleet", str(tmp_path), "--engine", "pool", "--scheduler", "tcp://127.0.0.1:1"]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(stream)
        bar(1, 4, 0)
        bar(4, 4, 1)
    assert "[" in tty.getvalue() and "4/4 machines, 1 failed" in tty.getvalue() and tty.getvalue().endswith("\n")
    assert pipe.getvalue() == ""


def test_task_names_come_from_file_names(tmp_path: Path) -> None:
    for name in ("b.tar.gz", "a.tgz", "c.xml", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert find_tasks(str(tmp_path)) == [
        Task("a", str(tmp_path / "a.tgz")), Task("b", str(tmp_path / "b.tar.gz")), Task("c", str(tmp_path / "c.xml"))]
