"""p2pdma's P2P verdict against a running Linux booted in QEMU (TCG) on emulated q35 machines: Debian unstable's
7.2.13 (its own packages) and Linux 6.1.176 built from Debian's linux-source-6.1 with CONFIG_PCI_P2PDMA.

For every pair a machine probes (guest.py says how nvmet makes the kernel run calc_map_type_and_dist()), the
model, given the sysfs facts the guest captured at that moment and `--kernel auto` (the captured osrelease),
must give the kernel's map type, the kernel's distance, refuse exactly when the kernel refused, and print the
kernel's p2pdma log lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.kernels import resolve_kernel
from p2pdma.sources import open_machine
from tests.kernel import guest, machines, qemu

_DEV_PREFIX = re.compile(r"^(\S+) ([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): ")


def _p2pdma_lines(lines: tuple[str, ...]) -> list[str]:
    return [x for x in lines if machines.P2PDMA_LINE.search(x)]


def _without_driver(line: str) -> str:
    """'nvme 0000:01:00.1: msg' -> '0000:01:00.1: msg' (dev_printk's dev_driver_string() prefix removed)."""
    return _DEV_PREFIX.sub(r"\2: ", line)


@pytest.mark.parametrize("machine", machines.MACHINES, ids=lambda m: m.name)
@pytest.mark.parametrize("kernel", machines.KERNELS, ids=lambda k: k.name)
def test_model_verdict_equals_running_kernel(
    kernel: machines.KernelUnderTest, machine: machines.Machine, boot_machine: Any
) -> None:
    run = boot_machine(kernel, machine)
    probes = machine.probes()
    answers = run.answers
    assert len(answers) == len(probes), (
        f"{machine.name}: {len(probes)} probes planned, {len(answers)} answered; console:\n{run.result.console[-3000:]}"
    )
    problems: list[str] = []
    matched = 0
    for (want_p, want_c, expected), ans in zip(probes, answers, strict=True):
        pair = f"{machine.name} {ans.provider} -> {ans.client} ({want_p} -> {want_c})"
        # The kernel was really asked, once, about this pair.
        assert ans.p2pmem_rc == 0, f"{pair}: nvmet refused p2pmem={ans.provider} (no published p2pmem?)"
        assert len(ans.map_types) == 1 and len(ans.totals) == 1, (
            f"{pair}: expected one calc_map_type_and_dist() return, trace gave {ans.map_types} {ans.totals}"
        )
        kmap = MapType[kernel.map_names[ans.map_types[0]]]
        if kernel.reads_dist:
            assert len(ans.distances) == 1, f"{pair}: *dist not read at return: {ans.distances}"
            kdist: int | None = ans.distances[0]
        else:  # pci_p2pdma_distance_many() returns -1 for NOT_SUPPORTED: the distance is not seen then
            kdist = ans.totals[0] if kmap != MapType.NOT_SUPPORTED else None
        assert (ans.totals[0] < 0) == (kmap == MapType.NOT_SUPPORTED), f"{pair}: {ans.totals} vs {kmap.name}"
        # The machine shows the case it was built for (else the emulated setup, not the model, is wrong).
        assert kmap.name == expected, f"{pair}: the kernel said {kmap.name}, the machine was built for {expected}"
        assert (ans.enable_rc == 0) == (kmap != MapType.NOT_SUPPORTED), (
            f"{pair}: nvmet enable rc {ans.enable_rc} disagrees with the kernel's own {kmap.name}"
        )

        topo = open_machine("root", run.capture(ans.capture))
        profile, source, _notes = resolve_kernel("auto", topo.kernel_release)
        release = (run.root / ans.capture / "proc/sys/kernel/osrelease").read_text().strip()
        assert (profile, source) == (kernel.profile, f"osrelease {release}"), (profile, source)
        v = calc_map_type_and_dist(topo, ans.provider, ans.client, profile)
        bad = []
        if v.map_type != kmap:
            bad.append(f"map type: model {v.map_type.name}, kernel {kmap.name}")
        if kdist is not None and v.distance != kdist:
            bad.append(f"distance: model {v.distance}, kernel {kdist}")
        if not v.certain:
            bad.append(f"model verdict uncertain: {v.unknown_ports} {v.unknown}")
        klog = _p2pdma_lines(ans.dmesg)  # byte for byte, dev_printk()'s driver prefix included
        mlog = list(v.kernel_log)
        if klog != mlog:
            bad.append("log lines:\n    kernel: " + "\n            ".join(klog) + "\n    model:  "
                       + "\n            ".join(mlog))
        if bad:
            problems.append(f"{pair}: " + "; ".join(bad) + f"\n  model reason: {v.reason}")
        else:
            matched += 1
    machines.record(f"{kernel.name}/{machine.name}", len(answers), matched)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("machine_name", ["multifunction-iommu", "root-ports-epyc", "switch"])
@pytest.mark.parametrize("kernel", machines.KERNELS, ids=lambda k: k.name)
def test_cli_explain_on_the_capture_says_what_the_kernel_did(
    kernel: machines.KernelUnderTest, machine_name: str, boot_machine: Any
) -> None:
    """The one face: `p2pdma explain --root CAPTURE --json` (default --kernel auto) on the guest's capture."""
    machine = next(m for m in machines.MACHINES if m.name == machine_name)
    run = boot_machine(kernel, machine)
    assert run.answers, f"{machine_name}: no answers"
    for ans in run.answers:
        proc = subprocess.run(
            [sys.executable, "-m", "p2pdma", "explain", "--root", str(run.capture(ans.capture)), "--json",
             ans.provider, ans.client],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        kmap = kernel.map_names[ans.map_types[0]]
        got = (doc["kernel"], doc["map_type"], doc["certain"])
        assert got == (kernel.profile, kmap, True), f"{ans.provider} -> {ans.client}: {got}"
        if ans.totals[0] >= 0:
            assert doc["distance"] == ans.totals[0]
        assert doc["kernel_log"] == _p2pdma_lines(ans.dmesg)


def test_log_lines_carry_the_kernels_device_prefix(boot_machine: Any) -> None:
    machine = next(m for m in machines.MACHINES if m.name == "multifunction-iommu")
    run = boot_machine(machines.KERNELS[0], machine)  # 7.2
    ans = run.answers[0]
    topo = open_machine("root", run.capture(ans.capture))
    v = calc_map_type_and_dist(topo, ans.provider, ans.client, "7.2")
    assert _p2pdma_lines(ans.dmesg), "the kernel printed no p2pdma lines for the ACS case"
    assert list(v.kernel_log) == _p2pdma_lines(ans.dmesg)


def test_debian_6_1_image_lacks_p2pdma() -> None:
    """Why the suite builds its own 6.1: Debian bookworm's linux-image-6.1 has CONFIG_PCI_P2PDMA unset, so its NVMe
    driver registers no p2pmem and nvmet has nothing to check. If Debian ever turns it on, use that image."""
    try:
        release, config = qemu.kernel_6_1()
    except qemu.Unavailable as e:
        pytest.skip(str(e))
    text = config.read_text()
    assert "CONFIG_NVME_TARGET=m" in text, f"{config}: no nvmet"
    assert "# CONFIG_PCI_P2PDMA is not set" in text or "CONFIG_PCI_P2PDMA=" not in text, (
        f"Debian's {release} now has CONFIG_PCI_P2PDMA: boot it instead of the kernel-setup --build-6.1 kernel"
    )


def test_parse_answers_reads_the_guest_files() -> None:
    """The host side of the probe protocol, on what a 7.2.13 guest wrote (no QEMU needed)."""
    outputs = {
        "pairs.txt": b"1 rr 0000:01:00.0 0000:01:00.1 nvme1n1 0 1\n2 sv 0000:01:00.1 0000:01:00.0 nvme0n1 0 0\n",
        "pair-1.trace": b"  sh-1 [000] ..... 9.1: p2pmap: (pci_p2pdma_distance_many+0x5c/0xd0 <- "
                        b"calc_map_type_and_dist) map=2 dist=2\n",
        "pair-1.dmesg": b"[    9.100000] nvme 0000:01:00.1: ACS redirect is set between the client and provider"
                        b" (0000:01:00.0)\n[    9.2] nvmet: foo\n",
        "pair-2.trace": b"p2pmap: (x <- calc_map_type_and_dist) map=3 dist=2\n",
    }
    a, b = guest.parse_answers(outputs)
    assert (a.capture, a.provider, a.client, a.enable_rc, a.map_types, a.distances) == (
        "rr", "0000:01:00.0", "0000:01:00.1", 1, (2,), (2,))
    assert a.dmesg[0] == "nvme 0000:01:00.1: ACS redirect is set between the client and provider (0000:01:00.0)"
    assert _p2pdma_lines(a.dmesg) == [a.dmesg[0]]
    assert _without_driver(a.dmesg[0]).startswith("0000:01:00.1: ACS redirect")
    assert (b.map_types, b.distances, b.dmesg) == ((3,), (2,), ())
    assert a.totals == b.totals == ()
