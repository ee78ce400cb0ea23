"""Fixtures of the real-kernel conformance suite: Debian's kernel, the shared initramfs, one boot per machine.

Everything is marked `kernel` (deselect with `-m "not kernel"`). Where QEMU, busybox-static or the kernel
packages are missing the tests skip and say how to get them (`bash .ci/kernel-setup`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.kernel import machines, qemu

_RUNS = machines.RUNS
_STATS = machines.STATS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: boots Debian's kernels in QEMU (tests/kernel; needs .ci/kernel-setup)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def kernel72() -> qemu.KernelAssets:
    try:
        qemu.qemu_binary()
        return qemu.kernel_7_2()
    except qemu.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def base72(kernel72: qemu.KernelAssets) -> Path:
    try:
        return machines.base_initramfs(kernel72)
    except qemu.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-machines")


@pytest.fixture(scope="session")
def boot_machine(kernel72: qemu.KernelAssets, base72: Path, work_dir: Path):  # type: ignore[no-untyped-def]
    """boot_machine(machine) -> MachineRun: each machine boots once per session."""

    def get(m: machines.Machine) -> machines.MachineRun:
        if m.name not in _RUNS:
            t = time.monotonic()
            _RUNS[m.name] = machines.run_machine(kernel72, base72, m, work_dir)
            _STATS[m.name] = time.monotonic() - t
        return _RUNS[m.name]

    return get


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _RUNS:
        return
    names = sorted(_RUNS)
    pairs = sum(int(_STATS.get(f"{n}:pairs", 0)) for n in names)
    matched = sum(int(_STATS.get(f"{n}:matched", 0)) for n in names)
    boots = [_RUNS[n].result.seconds for n in names]
    terminalreporter.write_line(
        f"kernel conformance ({qemu.RELEASE_7_2}, QEMU TCG): {len(names)} machines, {pairs} pairs compared,"
        f" {matched} matched; boots {min(boots):.1f}-{max(boots):.1f} s, {sum(boots):.0f} s in all"
    )
