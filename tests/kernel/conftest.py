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
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-machines")


_BASES: dict[str, tuple[qemu.KernelAssets, Path] | str] = {}


def _kernel(k: machines.KernelUnderTest) -> tuple[qemu.KernelAssets, Path]:
    """The kernel and its base initramfs, made once per session; skips (every time) when unavailable."""
    if k.name not in _BASES:
        try:
            qemu.qemu_binary()
            assets = k.assets()
            _BASES[k.name] = (assets, machines.base_initramfs(assets, k.modules))
        except qemu.Unavailable as e:
            _BASES[k.name] = str(e)
    got = _BASES[k.name]
    if isinstance(got, str):
        pytest.skip(got)
    return got


@pytest.fixture(scope="session")
def boot_machine(work_dir: Path):  # type: ignore[no-untyped-def]
    """boot_machine(kernel, machine) -> MachineRun: each machine boots once per kernel per session."""

    def get(k: machines.KernelUnderTest, m: machines.Machine) -> machines.MachineRun:
        key = f"{k.name}/{m.name}"
        if key not in _RUNS:
            assets, base = _kernel(k)
            t = time.monotonic()
            _RUNS[key] = machines.run_machine(assets, base, m, work_dir / k.name)
            _STATS[key] = time.monotonic() - t
        return _RUNS[key]

    return get


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for k in machines.KERNELS:
        names = sorted(n for n in _RUNS if n.startswith(k.name + "/"))
        if not names:
            continue
        pairs = sum(int(_STATS.get(f"{n}:pairs", 0)) for n in names)
        matched = sum(int(_STATS.get(f"{n}:matched", 0)) for n in names)
        boots = [_RUNS[n].result.seconds for n in names]
        got = _BASES.get(k.name)
        release = got[0].release if isinstance(got, tuple) else k.name
        terminalreporter.write_line(
            f"kernel conformance ({release}, QEMU TCG): {len(names)} machines booted, {pairs} pairs compared,"
            f" {matched} matched; boots {min(boots):.1f}-{max(boots):.1f} s, {sum(boots):.0f} s in all"
        )
