"""The numpy-free matrix of the text table (p2p.small) against the vectorised one: every cell and every
count equal, on random synthetic machines, the bundled examples and the shared real files; and the
small table of ``p2pdma matrix`` never loads numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma.examples import names as example_names
from p2pdma.p2p.decide import KERNEL_PROFILES
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.p2p.small import SmallMatrix, compute_small
from p2pdma.pci.topology import Topology
from p2pdma.report.documents import pair_counts, uncertain_why
from p2pdma.sources import open_machine
from p2pdma.sources.synth import generate_machine
from tests.p2p.test_matrix_property import MACHINE_ARGS

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
KINDS = {"lspci": "lspci", "nccl": "nccl_xml", "hwloc": "hwloc"}


def _real_files() -> list[Path]:
    real = DATA / "real"
    out = [p for sub in KINDS for p in sorted((real / sub).glob("*")) if p.is_file()] if real.is_dir() else []
    return out + sorted((DATA / "hwloc").glob("*.xml"))


def _same(topo: Topology, profile: str, **kw: Any) -> None:
    big = compute_matrix(topo, profile, **kw)
    small = compute_small(topo, profile, **kw)
    assert small.bdfs == big.bdfs
    n = len(big.bdfs)
    diff = [(big.bdfs[i], big.bdfs[j], big.cell(i, j), small.cell(i, j))
            for i in range(n) for j in range(n) if big.cell(i, j) != small.cell(i, j)]
    assert not diff, diff[:5]
    assert pair_counts(small) == pair_counts(big)
    assert uncertain_why(small) == uncertain_why(big)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=MACHINE_ARGS, profile=st.sampled_from(KERNEL_PROFILES), include_bridges=st.booleans())
def test_small_equals_vectorised_on_random_machines(args: dict[str, Any], profile: str, include_bridges: bool) -> None:
    _same(generate_machine(**args).topology(), profile, include_bridges=include_bridges)


@pytest.mark.parametrize("name", example_names())
@pytest.mark.parametrize("profile", KERNEL_PROFILES)
def test_small_equals_vectorised_on_examples(name: str, profile: str) -> None:
    _same(open_machine("example", name), profile, include_bridges=True)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in _real_files()]
                         or [pytest.param(None, marks=pytest.mark.skip(reason="no ../shared/data"))])
def test_small_equals_vectorised_on_real_files(path: Path) -> None:
    topo = open_machine(KINDS.get(path.parent.name, "hwloc"), path)
    for profile in ("6.1", "7.2", "5.4"):
        _same(topo, profile)


def test_selection_keeps_its_order() -> None:
    topo = open_machine("example", "gpu8-switches")
    pick = [topo.endpoints[3].bdf, topo.endpoints[0].bdf, topo.endpoints[5].bdf]
    small = compute_small(topo, "7.2", select=pick)
    big: Matrix = compute_matrix(topo, "7.2", select=pick)
    assert small.bdfs == tuple(pick) == big.bdfs
    cells = [(i, j) for i in range(3) for j in range(3)]
    assert [small.cell(i, j) for i, j in cells] == [big.cell(i, j) for i, j in cells]


def test_empty_selection() -> None:
    small = compute_small(open_machine("example", "gpu8-switches"), "7.2", select=[])
    assert isinstance(small, SmallMatrix) and small.bdfs == () and pair_counts(small)["pairs"] == 0


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernel profile"):
        compute_small(open_machine("example", "gpu8-switches"), "9.99")


def test_text_matrix_imports_no_numpy() -> None:
    code = (
        "import sys\nfrom p2pdma.cli import main\n"
        "main(['matrix', '--example', 'gpu8-switches'])\n"
        "sys.stdout.flush()\nprint('numpy' in sys.modules, file=sys.stderr)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "GPU0" in got.stdout and "pairs:" in got.stdout
    assert got.stderr.strip().splitlines()[-1] == "False"
    # the JSON document is the vectorised path, with numpy
    code_json = code.replace("'gpu8-switches']", "'gpu8-switches', '--json']")
    got = subprocess.run([sys.executable, "-c", code_json], capture_output=True, text=True, check=True)
    assert got.stderr.strip().splitlines()[-1] == "True"
