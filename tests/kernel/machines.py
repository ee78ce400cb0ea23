"""The emulated PCIe machines of the P2P conformance suite (QEMU q35) and what each guest does.

Every machine carries NVMe controllers named by serial ("a", "b", ...), each with a namespace backed by a small
raw file and, where `cmb` is set, a 64 MiB controller memory buffer the nvme driver publishes as p2pmem. A
machine's `steps` are lines of guest shell (see guest.py): `capture NAME` saves the sysfs facts, `setacs DEV
VALUE` writes an ACS control register, `probe PROVIDER CLIENT EXPECTED` asks the kernel for one pair. EXPECTED is
what the machine was built to show (so a setup that silently fails to build the case fails the test); the
oracle is the kernel's own answer, which p2pdma's verdict must equal.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel import guest, qemu

MODULES = ("nvme_core multipath=N", "nvme", "configfs", "nvmet")


@dataclass(frozen=True)
class KernelUnderTest:
    """One kernel the suite boots: how to get it, its modules, the profile --kernel auto must pick for it."""

    name: str
    assets: Callable[[], qemu.KernelAssets]
    modules: tuple[str, ...]
    profile: str
    reads_dist: bool  # $arg3 at kretprobe return (>= 6.10): the distance even when NOT_SUPPORTED
    map_names: tuple[str, ...]  # enum pci_p2pdma_map_type of this tree, by value


# include/linux/pci-p2pdma.h (7.2) has PCI_P2PDMA_MAP_NONE at 1; 6.1's enum (include/linux/dma-map-ops.h) has not.
_MAP_72 = ("UNKNOWN", "NONE", "NOT_SUPPORTED", "BUS_ADDR", "THRU_HOST_BRIDGE")
_MAP_61 = ("UNKNOWN", "NOT_SUPPORTED", "BUS_ADDR", "THRU_HOST_BRIDGE")


KERNELS: tuple[KernelUnderTest, ...] = (
    KernelUnderTest("7.2", qemu.kernel_7_2, MODULES, "7.2", True, _MAP_72),
    # Debian's 7.2 config with NVME_MULTIPATH=y needs nvme_core multipath=N; the 6.1 build has it off.
    KernelUnderTest("6.1", qemu.kernel_6_1_p2pdma, (), "6.1", False, _MAP_61),
)


@dataclass(frozen=True)
class Nvme:
    serial: str
    bus: str
    cmb: bool = True
    extra: str = ""  # more -device properties (addr=..., multifunction=on)


@dataclass(frozen=True)
class Machine:
    name: str
    what: str
    bridges: tuple[str, ...]  # -device values, in order (ports, switches, bridges)
    nvme: tuple[Nvme, ...]
    steps: tuple[str, ...]
    cpu: str = "qemu64"
    append: str = ""
    first: tuple[str, ...] = field(default=())  # -device values that must come before every PCI device

    def probes(self) -> list[tuple[str, str, str]]:
        """(provider, client, expected map type) of each probe step."""
        out = []
        for s in self.steps:
            parts = s.split()
            if parts and parts[0] == "probe":
                out.append((parts[1], parts[2], parts[3]))
        return out

    def qemu_args(self, disks: Path) -> list[str]:
        args = ["-M", "q35", "-cpu", self.cpu]
        for d in (*self.first, *self.bridges):
            args += ["-device", d]
        for n in self.nvme:
            img = disks / f"{self.name}-{n.serial}.img"
            if not img.exists():
                with img.open("wb") as f:
                    f.truncate(8 << 20)
            args += ["-drive", f"file={img},if=none,id=drv-{n.serial},format=raw"]
            dev = f"nvme,serial={n.serial},drive=drv-{n.serial},bus={n.bus}"
            if n.cmb:
                dev += ",cmb_size_mb=64"
            if n.extra:
                dev += "," + n.extra
            args += ["-device", dev]
        return args

    def script(self) -> str:
        lines = []
        for s in self.steps:
            parts = s.split()
            if parts[0] == "probe":
                lines.append(f"probe {parts[1]} {parts[2]}")
            else:
                lines.append(s)
        return guest.CAPTURE + guest.HELPERS + guest.PROBE + "\n".join(lines) + "\n"


def _rp(n: int, bus: str = "pcie.0", addr: int | None = None) -> str:
    a = f",addr={addr:#x}" if addr is not None else f",addr={n:#x}"
    return f"pcie-root-port,id=rp{n},bus={bus},chassis={n},slot={n}{a}"


# RR = 0x04, CR = 0x08 in the ACS Control register (PCI_ACS_RR, PCI_ACS_CR).
MACHINES: tuple[Machine, ...] = (
    Machine(
        "switch", "two NVMe on two downstream ports of one switch below a root port",
        (_rp(1), "x3130-upstream,id=up1,bus=rp1",
         "xio3130-downstream,id=dn1,bus=up1,chassis=11,slot=0", "xio3130-downstream,id=dn2,bus=up1,chassis=12,slot=1"),
        (Nvme("a", "dn1"), Nvme("b", "dn2")),
        ("capture root", "probe a b BUS_ADDR", "probe b a BUS_ADDR", "probe a a BUS_ADDR"),
    ),
    Machine(
        "switch-iommu", "the switch with intel_iommu=on: RR|CR on the root port, above the common upstream port",
        (_rp(1), "x3130-upstream,id=up1,bus=rp1",
         "xio3130-downstream,id=dn1,bus=up1,chassis=11,slot=0", "xio3130-downstream,id=dn2,bus=up1,chassis=12,slot=1"),
        (Nvme("a", "dn1"), Nvme("b", "dn2")),
        ("capture root", "probe a b BUS_ADDR"),
        append="intel_iommu=on", first=("intel-iommu,intremap=off",),
    ),
    Machine(
        "nested-switch", "a switch below a switch: a on the outer switch, b two levels down",
        (_rp(1), "x3130-upstream,id=up1,bus=rp1",
         "xio3130-downstream,id=dn1,bus=up1,chassis=11,slot=0", "xio3130-downstream,id=dn2,bus=up1,chassis=12,slot=1",
         "x3130-upstream,id=up2,bus=dn2", "xio3130-downstream,id=dn3,bus=up2,chassis=13,slot=0"),
        (Nvme("a", "dn1"), Nvme("b", "dn3")),
        ("capture root", "probe a b BUS_ADDR", "probe b a BUS_ADDR"),
    ),
    Machine(
        "root-ports-intel", "two NVMe on two root ports, Intel CPU model: q35's 8086:29c0 is not whitelisted",
        (_rp(1), _rp(2)),
        (Nvme("a", "rp1"), Nvme("b", "rp2")),
        ("capture root", "probe a b NOT_SUPPORTED", "probe b a NOT_SUPPORTED"),
        cpu="Nehalem",
    ),
    Machine(
        "root-ports-epyc", "two NVMe on two root ports, AMD EPYC (family 0x17): cpu_supports_p2pdma()",
        (_rp(1), _rp(2)),
        (Nvme("a", "rp1"), Nvme("b", "rp2")),
        ("capture root", "probe a b THRU_HOST_BRIDGE", "probe b a THRU_HOST_BRIDGE"),
        cpu="EPYC",
    ),
    Machine(
        "multifunction", "two NVMe functions of one multifunction device below one root port",
        (_rp(1),),
        (Nvme("a", "rp1", extra="addr=0.0,multifunction=on"), Nvme("b", "rp1", extra="addr=0.1")),
        ("capture root", "probe a b BUS_ADDR", "probe b a BUS_ADDR"),
    ),
    Machine(
        "multifunction-setpci", "the multifunction device with the root port's ACS control written in the guest",
        (_rp(1),),
        (Nvme("a", "rp1", extra="addr=0.0,multifunction=on"), Nvme("b", "rp1", extra="addr=0.1")),
        ("setacs $(parent_of $(bdf_of a)) 0x4", "capture rr", "probe a b NOT_SUPPORTED",
         "setacs $(parent_of $(bdf_of a)) 0x8", "capture cr", "probe b a NOT_SUPPORTED",
         "setacs $(parent_of $(bdf_of a)) 0x1", "capture sv", "probe a b BUS_ADDR"),
    ),
    Machine(
        "multifunction-iommu", "intel-iommu and intel_iommu=on: pci_enable_acs() sets RR|CR on the root port",
        (_rp(1),),
        (Nvme("a", "rp1", extra="addr=0.0,multifunction=on"), Nvme("b", "rp1", extra="addr=0.1")),
        ("capture root", "probe a b NOT_SUPPORTED", "probe b a NOT_SUPPORTED"),
        append="intel_iommu=on", first=("intel-iommu,intremap=off",),
    ),
    Machine(
        "multifunction-iommu-epyc", "RR|CR set by the IOMMU, AMD EPYC CPU: through the host bridge",
        (_rp(1),),
        (Nvme("a", "rp1", extra="addr=0.0,multifunction=on"), Nvme("b", "rp1", extra="addr=0.1")),
        ("capture root", "probe a b THRU_HOST_BRIDGE"),
        cpu="EPYC", append="intel_iommu=on", first=("intel-iommu,intremap=off",),
    ),
    Machine(
        "multifunction-iommu-disable-acs-redir", "RR|CR set by the IOMMU, then undone by pci=disable_acs_redir=",
        (_rp(1),),
        (Nvme("a", "rp1", extra="addr=0.0,multifunction=on"), Nvme("b", "rp1", extra="addr=0.1")),
        ("capture root", "probe a b BUS_ADDR"),
        append="intel_iommu=on pci=disable_acs_redir=0000:00:01.0", first=("intel-iommu,intremap=off",),
    ),
    Machine(
        "pcie-pci-bridge", "two NVMe on the conventional bus of a pcie-pci-bridge below a root port",
        (_rp(1), "pcie-pci-bridge,id=pb1,bus=rp1"),
        (Nvme("a", "pb1", extra="addr=1"), Nvme("b", "pb1", extra="addr=2")),
        ("capture root", "probe a b BUS_ADDR", "probe b a BUS_ADDR"),
    ),
    Machine(
        "pxb-two-host-bridges", "a on a root port of pcie.0, b on a root port of a second host bridge (pxb-pcie)",
        (_rp(1), "pxb-pcie,id=pxb1,bus_nr=64,bus=pcie.0,addr=0x8", _rp(9, bus="pxb1", addr=0)),
        (Nvme("a", "rp1"), Nvme("b", "rp9")),
        ("capture root", "probe a b NOT_SUPPORTED", "probe b a NOT_SUPPORTED"),
        cpu="Nehalem",
    ),
)


@dataclass
class MachineRun:
    machine: Machine
    result: qemu.BootResult
    root: Path  # where the guest's /out was unpacked
    answers: list[guest.KernelAnswer]

    def capture(self, name: str) -> Path:
        """The guest's capture `name` as a capture archive (manifest on top, links kept), as `p2pdma capture`
        writes one; made once."""
        out = self.root / f"{name}.tar"
        if not out.exists():
            src = self.root / name
            with tarfile.open(out, "w") as tar:
                for entry in sorted(src.iterdir()):
                    tar.add(entry, arcname=entry.name)
        return out


RUNS: dict[str, MachineRun] = {}  # this session's boots, by "kernel/machine" (conftest's boot_machine)
STATS: dict[str, float] = {}  # boot wall times and the pairs/matches the verdict test counted, for the summary


def record(machine: str, pairs: int, matched: int) -> None:
    """Counted by the verdict test for the closing note."""
    STATS[f"{machine}:pairs"] = pairs
    STATS[f"{machine}:matched"] = matched


def run_machine(kernel: qemu.KernelAssets, base: Path, m: Machine, work: Path) -> MachineRun:
    """Boot `m` under `kernel` with the shared base initramfs plus this machine's script; unpack /out."""
    image = qemu.with_files(base, f"{m.name}", {"/steps.sh": m.script().encode()})
    append = f"{m.append}".strip()
    work.mkdir(parents=True, exist_ok=True)
    result = qemu.boot(kernel, image, m.qemu_args(work), append=append, timeout=420)
    root = result.extract(work / m.name)
    return MachineRun(m, result, root, guest.parse_answers(result.outputs))


def base_initramfs(kernel: qemu.KernelAssets, modules: tuple[str, ...] = MODULES) -> Path:
    """The image every machine shares: busybox, the nvme + nvmet modules where they are modules (with
    nvme_core.multipath=N, so a namespace's parent is its PCI controller), and an init that runs /steps.sh."""
    return qemu.build_initramfs(f"p2p-{kernel.release}", ". /steps.sh", modules=modules, kernel=kernel)


P2PDMA_LINE = re.compile(
    r"ACS redirect is set|to disable ACS redirect|cannot be used for peer-to-peer DMA|not in P2PDMA whitelist"
)
