"""benchmarks/hostile_table.py's runner: a FIFO spec through the real CLI answers with one line and exit 2,
measured, and nothing appears where the user did not name; a write the user did not name is caught."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "hostile_table.py"


@pytest.fixture(scope="module")
def table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostile_table", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hostile_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_fifo_spec_is_one_line_and_exit_2(table: ModuleType, tmp_path: Path) -> None:
    if not Path(table.EXE).exists():
        pytest.skip("no p2pdma console script next to this interpreter")
    inputs = table.Inputs(tmp_path / "in")
    inputs.base.mkdir()
    case = next(c for c in table.cases() if c.name == "--spec a FIFO")
    argv, r = table.run_case(case, inputs, tmp_path / "case")
    assert argv[0] == "topo" and r.code == 2 and r.lines == 1 and "a FIFO, not a regular file" in r.first
    assert r.wall < 30 and 0 < r.rss_mib < 1024 and not r.extra and not r.changed and not r.killed
    assert table.verdict(case, r) == "ok"


def test_unnamed_writes_and_tracebacks_fail_the_verdict(table: ModuleType) -> None:
    case = table.Case("c", "n", lambda i: [])
    clean = table.Result(2, 0.1, 30.0, "p2pdma: refused", 1, [], [], "")
    assert table.verdict(case, clean) == "ok"
    wrote = table.Result(2, 0.1, 30.0, "p2pdma: refused", 1, ["-"], [], "")
    assert "wrote unnamed" in table.verdict(case, wrote)
    tb = table.Result(1, 0.1, 30.0, "Traceback (most recent call last):", 10, [], [], "")
    assert "traceback" in table.verdict(case, tb) and "10 stderr lines" in table.verdict(case, tb)
    hung = table.Result(None, 120.0, 30.0, "", 0, [], [], "killed: still running after 120 s")
    assert table.verdict(case, hung).startswith("FAIL: killed")
