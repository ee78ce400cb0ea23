"""Fixtures: the real machines' sysfs trees of ../shared/data, unpacked once per session."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hwloc"


def _shared_or_skip() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data not present at {SHARED} (a user's clone has no ../shared)")
    return SHARED


@pytest.fixture(scope="session")
def shared_hwloc() -> Path:
    return _shared_or_skip()


@pytest.fixture(scope="session")
def real_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Each hwloc-gather-topology tarball unpacked: {tarball stem: root directory}."""
    base = _shared_or_skip()
    out: dict[str, Path] = {}
    dest = tmp_path_factory.mktemp("hwloc")
    for tb in sorted(base.glob("*.tar.bz2")):
        with tarfile.open(tb) as tf:
            tf.extractall(dest / tb.name[:-8], filter="data")
        tops = [p for p in (dest / tb.name[:-8]).iterdir() if p.is_dir()]
        assert len(tops) == 1, tb
        out[tb.name[:-8]] = tops[0]
    yield out
