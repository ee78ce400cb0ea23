"""Fixtures for the report tests: the 500-endpoint machine, and headless Chromium when installed."""

from __future__ import annotations

import pytest

from p2pdma.pci.topology import Topology
from tests.report.browser import find_chromium


@pytest.fixture(scope="session")
def big_topology() -> Topology:
    """The 500-endpoint synthetic machine of the issue (seeded, so the same every run)."""
    from p2pdma.sources.synth import generate_machine

    return generate_machine(500, seed=1).topology()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; skips when none is installed."""
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (.ci/run does) to run the browser tests")
    return path
