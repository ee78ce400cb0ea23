"""Fleet at scale (issue 14): Dask is the optional p2pdma[dask] extra (a missing one is a one-line
error), tasks are batched, rows stream as machines finish, ``--out FILE.jsonl`` writes one line per
machine under the output rules, counts are of distinct ordered pairs as report.documents counts them,
and serial, pool and Dask give identical documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from p2pdma.cli import main
from p2pdma.fleet import analyse, engines
from p2pdma.fleet.analyse import analyse_topology, cause_counts
from p2pdma.fleet.discover import find_tasks
from p2pdma.fleet.engines import DASK_EXTRA, batch_size, batches, run
from p2pdma.fleet.report import MACHINE_SCHEMA, build_report, jsonl_text, report_json
from p2pdma.fleet.synth import write_fleet
from p2pdma.p2p.decide import MapType
from p2pdma.p2p.kernels import ALIASES, NEWEST_MAINLINE, PROFILES
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.report.documents import pair_counts
from p2pdma.sources.spec import parse_spec
from p2pdma.sources.synth import generate
from tests.fleet.test_fleet import _bad_captures, _brute_causes

REPO = Path(__file__).resolve().parents[2]


def _machine(seed: int) -> Topology:
    spec = generate(
        18 + seed, seed=seed, acs_probability=0.8, ec_probability=0.5, multifunction_probability=0.4,
        vf_probability=0.3, config_size_64_probability=0.2, max_switch_depth=3, whitelisted=seed % 3 != 0,
        host_bridges=1 + seed % 3,
    )
    return parse_spec(spec).topology()


@pytest.mark.parametrize("seed", range(6, 12))
def test_distinct_counts_and_causes_agree_with_pair_counts(seed: int) -> None:
    topo = _machine(seed)
    for profile in ("6.1", "7.2"):
        mat = compute_matrix(topo, profile)
        row = analyse_topology("m", "m.tar.gz", topo, profile)
        expect = pair_counts(mat)
        got = dict(zip(analyse.MAP_TYPES, row.distinct, strict=True))
        assert got == {k: expect[k] for k in analyse.MAP_TYPES}
        assert row.distinct_uncertain == expect["uncertain"]
        assert sum(row.distinct) == expect["pairs"] and row.endpoints == expect["self"]
        # the /1 fields keep counting every ordered pair, the diagonal included
        assert sum(row.pairs) == expect["pairs"] + expect["self"]
        assert dict(row.causes) == _brute_causes(topo, profile)
        assert dict(row.distinct_causes) == _brute_causes(topo, profile, self_pairs=False)
        assert cause_counts(topo, mat, self_pairs=False) == dict(row.distinct_causes)


def test_self_pairs_are_left_out_where_they_count() -> None:
    """At least one generated machine has an endpoint whose own ACS redirect makes its self pair
    THRU_HOST_BRIDGE: there the distinct counts and the /1 counts differ by exactly the diagonal."""
    differing = 0
    for seed in range(6, 12):
        topo = _machine(seed)
        mat = compute_matrix(topo, "7.2")
        row = analyse_topology("m", "m.tar.gz", topo, "7.2")
        diag = Counter(int(x) for x in mat.map_type.diagonal())
        for k, name in enumerate(analyse.MAP_TYPES):
            assert row.pairs[k] - row.distinct[k] == diag[MapType[name].value]
        differing += row.pairs[1] != row.distinct[1]
    assert differing > 0


def test_cause_counts_in_row_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    topo = _machine(7)
    mat = compute_matrix(topo, "7.2")
    whole = cause_counts(topo, mat)
    distinct = cause_counts(topo, mat, self_pairs=False)
    assert whole != distinct  # this machine has self pairs with causes
    monkeypatch.setattr(analyse, "BLOCK_CELLS", 1)  # one provider row per numpy step
    assert cause_counts(topo, mat) == whole
    assert cause_counts(topo, mat, self_pairs=False) == distinct


def test_batches_cover_every_machine_once() -> None:
    assert batch_size(10_000, 2) == engines.MAX_BATCH
    assert batch_size(5, 2) == 1
    assert batch_size(80, 2) == 10
    for count, size in ((0, 3), (1, 4), (10, 3), (64, 32), (65, 32)):
        cut = batches(count, size)
        assert [i for b in cut for i in b] == list(range(count))
        assert all(1 <= len(b) <= size for b in cut)


@pytest.fixture(scope="module")
def fleet40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("fleet40")
    write_fleet(dest, 40, endpoints=6, distinct=4, outlier_every=7, seed=3)
    _bad_captures(dest)
    return dest


def test_serial_pool_and_dask_documents_and_lines_are_identical(fleet40: Path) -> None:
    tasks = find_tasks(str(fleet40))
    docs = {}
    lines = {}
    for engine in ("serial", "pool", "dask"):
        rows = run(tasks, "7.2", engine, workers=2)
        assert [r.name for r in rows] == [t.name for t in tasks]  # input order whatever finished first
        rep = build_report(rows, "7.2")
        docs[engine] = report_json(rep)
        lines[engine] = jsonl_text(rep)
    assert docs["serial"] == docs["pool"] == docs["dask"]
    assert lines["serial"] == lines["pool"] == lines["dask"]
    doc = docs["pool"]
    assert doc["summary"]["machines"] == 42 and doc["summary"]["failed"] == 2
    ok = [m for m in doc["machines"] if m["status"] == "ok"]
    assert all(m["counts"]["pairs"] == m["endpoints"] * (m["endpoints"] - 1) for m in ok)
    assert all(sum(m["pairs"].values()) == m["counts"]["pairs"] + m["counts"]["self"] for m in ok)
    assert all(m["counts"] is None for m in doc["machines"] if m["status"] == "failed")


def test_rows_stream_as_machines_finish(fleet40: Path) -> None:
    tasks = find_tasks(str(fleet40))
    seen: list[str] = []
    ticks: list[tuple[int, int, int]] = []
    rows = run(tasks, "7.2", "pool", workers=2, progress=lambda d, t, f: ticks.append((d, t, f)),
               on_row=lambda r: seen.append(r.name))
    assert sorted(seen) == sorted(t.name for t in tasks) and len(seen) == len(tasks)
    assert ticks[0] == (0, 42, 0) and ticks[-1] == (42, 42, 2)
    assert [d for d, _, _ in ticks] == list(range(43))  # one tick per machine, never backwards
    assert sum(not r.ok for r in rows) == 2


def test_missing_dask_is_one_line_naming_the_extra(fleet40: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    assert main(["fleet", str(fleet40), "--engine", "dask"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert DASK_EXTRA in err and "pip install 'p2pdma[dask]'" in err and "Traceback" not in err
    assert main(["fleet", str(fleet40), "--scheduler", "tcp://127.0.0.1:1"]) == 2  # implies dask
    assert DASK_EXTRA in capsys.readouterr().err
    with pytest.raises(engines.DaskMissing):
        run(find_tasks(str(fleet40)), "7.2", "dask")
    # the default engine does not need it
    assert main(["fleet", str(fleet40), "--workers", "2"]) == 0
    assert "on engine pool" in capsys.readouterr().err


def test_dask_is_imported_only_by_its_engine(tmp_path: Path) -> None:
    write_fleet(tmp_path, 3, endpoints=4, distinct=1)
    code = (
        "import sys\n"
        "from p2pdma.cli import main\n"
        f"rc = main(['fleet', {str(tmp_path)!r}, '--workers', '2', '--json'])\n"
        "rc += main(['fleet', " + repr(str(tmp_path)) + ", '--engine', 'serial'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print('RC', rc, 'DASK', bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "RC 0 DASK []" in proc.stdout, proc.stderr[-2000:]


def test_install_pulls_numpy_and_pyyaml_only() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("[")[0].split("=")[0].strip().lower() for d in meta["dependencies"])
    assert names == ["numpy", "pyyaml"]
    extras = meta["optional-dependencies"]
    assert any(d.startswith("dask[distributed]") for d in extras["dask"])
    assert any(d.startswith("dask[distributed]") for d in extras["test"])  # CI runs both engines


def test_out_jsonl_one_line_per_machine(fleet40: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet.jsonl"
    assert main(["fleet", str(fleet40), "--engine", "serial", "--json", "--out", str(out)]) == 0
    stdout, err = capsys.readouterr()
    doc = json.loads(stdout)
    assert f"42 lines in {out}" in err and "\r[" not in err  # no progress bar off a terminal
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 42
    assert [x["name"] for x in lines] == sorted(x["name"] for x in lines) == [m["name"] for m in doc["machines"]]
    assert {x["schema"] for x in lines} == {MACHINE_SCHEMA} and {x["kernel"] for x in lines} == {"7.3"}
    for line, m in zip(lines, doc["machines"], strict=True):
        assert line["source"] == m["source"] and line["counts"] == m["counts"]
        assert line["causes"] == m["distinct_causes"]
        assert line["errors"] == ([m["reason"]] if m["status"] == "failed" else [])
    bad = {x["name"]: x for x in lines if x["errors"]}
    assert set(bad) == {"corrupt", "hostile"} and all(x["counts"] is None for x in bad.values())
    node = next(x for x in lines if x["name"] == "node00000")
    topo = analyse.load_machine("node00000", node["source"])
    assert node["counts"] == pair_counts(compute_matrix(topo, "7.2"))
    assert list(tmp_path.iterdir()) == [out]


def test_out_refuses_an_existing_file_before_running(fleet40: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "old.jsonl"
    out.write_text("the user's data\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fleet ran although its output was refused")

    monkeypatch.setattr(engines, "run", never)
    for argv in (["--out", str(out)], ["--out", "-"], ["--out", str(tmp_path / "no" / "such.jsonl")],
                 ["--out", str(tmp_path)]):
        assert main(["fleet", str(fleet40), "--engine", "serial", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out.read_text() == "the user's data\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jsonl"]
    monkeypatch.undo()
    assert main(["fleet", str(fleet40), "--engine", "serial", "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert len(out.read_text().splitlines()) == 42
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jsonl"]  # no temporary left beside it


def test_out_write_failure_leaves_nothing(fleet40: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.jsonl"
    real_write = os.write

    def full(fd: int, data: object) -> int:
        if fd > 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", full)
    assert main(["fleet", str(fleet40), "--engine", "serial", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_kernel_help_names_the_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fleet", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "HMAT" not in text and "per-port ACS decision" not in text
    assert all(name in text for name in (*PROFILES, *ALIASES))
    assert f"aliases of {NEWEST_MAINLINE}" in text and "p2pdma[dask]" in text
