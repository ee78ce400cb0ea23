"""Fleet, matrix, fix and report count the same distinct ordered pairs: every bundled example (as a
capture) and every shared hwloc-gathered tree, through `p2pdma fleet --json` and `p2pdma matrix --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma import examples
from p2pdma.cli import main
from p2pdma.sources.capture import capture
from p2pdma.sources.sysfs import write_root

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "hwloc"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_fleet_counts_equal_matrix_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in examples.names():
        m = examples.load_spec(name)
        root = tmp_path / "roots" / name
        write_root(root, m.raws, cpu=m.cpu, kernel_release="7.2.13+deb14-amd64")
        capture(str(fleet / f"{name}.tar.gz"), str(root))
    shared = sorted(SHARED.glob("*.tar.bz2")) if SHARED.is_dir() else []
    for p in shared:
        (fleet / p.name).symlink_to(p)
    doc = _json(capsys, "fleet", str(fleet), "--engine", "serial", "--json", "--kernel", "7.2")
    rows = {r["name"]: r for r in doc["machines"]}
    assert len(rows) == len(examples.names()) + len(shared)
    checked = 0
    for f in sorted(fleet.iterdir()):
        name = f.name.split(".tar")[0]
        row = rows[name]
        if row["status"] != "ok":  # a tree without PCI (the GB10): refused the same way by matrix
            assert main(["matrix", "--root", str(f), "--json"]) == 2
            capsys.readouterr()
            continue
        mat = _json(capsys, "matrix", "--root", str(f), "--json", "--all-functions", "--kernel", "7.2",
                    "--max-functions", "100000")
        assert row["counts"] == mat["counts"], name
        checked += 1
    assert checked >= len(examples.names())
