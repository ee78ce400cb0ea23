"""IOMMU state and virtual-machine detection, read from a sysfs/procfs root (or a tar of one).

IOMMU: ``sys/class/iommu/*`` (an entry per IOMMU unit: a driver is active), each function's
``iommu_group`` link and ``sys/kernel/iommu_groups/N/type`` (the default domain: ``DMA``/``DMA-FQ``
translate, ``identity`` passes physical addresses through, ``blocked``, ``unmanaged``), as
iommu_group_show_type() in drivers/iommu/iommu.c prints it.

Roots are read through ``sources.fs`` (archives in memory, validated like ``--root X.tar.gz``).

Guest: the ``hypervisor`` CPU flag, DMI strings (``sys/class/dmi/id``) and emulated PCI devices
(QEMU's 1b36:*, virtio 1af4:*, VMware 15ad:*, ...). Links are resolved inside the root only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from p2pdma.pci.topology import Device, Topology
from p2pdma.sources.fs import FsView, LinkEscape, LiveFs

IOMMU_CLASS = "sys/class/iommu"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
DMI_ID = "sys/class/dmi/id"
DMI_FIELDS = ("sys_vendor", "product_name", "board_vendor", "bios_vendor")
MAX_SMALL = 4096
TRANSLATED = ("DMA", "DMA-FQ")

# DMI substrings that name a hypervisor (sys_vendor / product_name / bios_vendor)
DMI_HYPERVISORS = (
    "QEMU", "KVM", "VMware", "VirtualBox", "innotek", "Xen", "Bochs", "Parallels", "Virtual Machine",
    "Google Compute Engine", "Amazon EC2", "OpenStack", "Hypervisor", "BHYVE", "Cloud Hypervisor",
)
# PCI vendors whose devices exist only inside VMs (emulated or paravirtual)
VIRTUAL_VENDORS = {
    0x1B36: "Red Hat/QEMU emulated device",
    0x1AF4: "virtio device",
    0x15AD: "VMware virtual device",
    0x5853: "Xen platform device",
    0x80EE: "VirtualBox device",
    0x1414: "Microsoft Hyper-V device",
}
VIRTUAL_IDS = {
    (0x1B36, 0x000C): "QEMU pcie-root-port",
    (0x1B36, 0x000E): "QEMU pcie-pci-bridge",
    (0x1B36, 0x0001): "QEMU pci-bridge",
    (0x15AD, 0x07A0): "VMware PCIe root port",
    (0x15AD, 0x0790): "VMware PCI bridge",
}


@dataclass(frozen=True)
class IommuState:
    """What is known of the IOMMU: ``active`` None when the source cannot say."""

    active: bool | None
    units: tuple[str, ...] = ()
    group_types: dict[int, str] = field(default_factory=dict)
    source: str = "topology"
    notes: tuple[str, ...] = ()

    def domain_type(self, dev: Device) -> str | None:
        """The default domain type of ``dev``'s group, when read."""
        if dev.iommu_group is None:
            return None
        return self.group_types.get(dev.iommu_group)


@dataclass(frozen=True)
class GuestFacts:
    """Whether the machine is a virtual machine, with the evidence found."""

    guest: bool
    evidence: tuple[str, ...] = ()
    dmi: dict[str, str] = field(default_factory=dict)

    def warning(self) -> str | None:
        """The one warning line for a guest, None on bare metal."""
        if not self.guest:
            return None
        return (
            "this is a virtual machine (" + "; ".join(self.evidence) + "): the PCI tree, its ACS bits and"
            " every verdict describe the guest's view, not the hardware's; whether P2P really goes"
            " direct is decided by the host's ACS, IOMMU and the hypervisor"
        )


class _Files:
    """Small-file access to a root: a directory, an archive of one (read in memory, validated), or a
    ``sources.fs`` view; links resolved inside it."""

    def __init__(self, root: Path | str | FsView) -> None:
        if isinstance(root, FsView):
            self.fs: FsView = root
        elif os.path.isfile(root):
            from p2pdma.sources.archive import open_archive

            self.fs = open_archive(root).fs
        else:
            self.fs = LiveFs(os.fspath(root))

    def read(self, rel: str) -> str | None:
        """A small text file's content, or None when absent, unreadable or leading out of the root."""
        try:
            return self.fs.read(rel, MAX_SMALL).decode("utf-8", "replace")
        except (LinkEscape, OSError):
            return None

    def listdir(self, rel: str) -> list[str] | None:
        """Entry names of a directory inside the root, or None when it is absent."""
        try:
            return self.fs.listdir(rel)
        except (LinkEscape, OSError):
            return None


def iommu_from_topology(topo: Topology) -> IommuState:
    """IOMMU facts the topology alone gives: on a sysfs root or capture, ``iommu_group`` links mean
    an IOMMU driver is active; other sources (specs, hwloc, lspci, NCCL) do not say."""
    if not topo.source.startswith(("sysfs:", "capture:")):
        return IommuState(active=None, source=topo.source)
    groups = {d.iommu_group for d in topo.devices if d.iommu_group is not None}
    if groups:
        return IommuState(active=True, source="iommu_group links",
                          notes=(f"{len(groups)} IOMMU groups on {len(topo.devices)} functions",))
    return IommuState(active=False if topo.source == "sysfs:/" else None, source=topo.source)


def read_iommu(root: Path | str | FsView, topo: Topology | None = None) -> IommuState:
    """The IOMMU state under a sysfs root (directory or tar): units, group default domain types.

    Absence of ``sys/class/iommu`` is conclusive only on the live root ``/`` (captures may omit it).
    """
    files = _Files(root)
    units = files.listdir(IOMMU_CLASS)
    group_dirs = files.listdir(IOMMU_GROUPS) or []
    types: dict[int, str] = {}
    for g in group_dirs:
        if g.isdigit():
            t = files.read(f"{IOMMU_GROUPS}/{g}/type")
            if t is not None and t.strip():
                types[int(g)] = t.strip()
    linked = topo is not None and any(d.iommu_group is not None for d in topo.devices)
    active: bool | None
    if units or group_dirs or linked:
        active = True
    elif units is not None or files.fs.live:
        active = False  # the class directory is there and empty, or this is the live system
    else:
        active = None  # a capture that did not record sys/class/iommu says nothing
    notes: list[str] = []
    if active and not types:
        notes.append("group default domain types not captured (sys/kernel/iommu_groups/N/type)")
    kinds = sorted(set(types.values()))
    if kinds:
        notes.append("default domains: " + ", ".join(f"{k} x{list(types.values()).count(k)}" for k in kinds))
    return IommuState(active=active, units=tuple(units or ()), group_types=types,
                      source=files.fs.label if isinstance(root, FsView) else str(root),
                      notes=tuple(notes))


def mapping_text(state: IommuState, client: Device, map_type: str) -> str | None:
    """For a ``THRU_HOST_BRIDGE`` pair (``map_type`` by name): whether the client's DMA to the
    provider goes through the IOMMU (dma-iommu maps it like host memory) or uses physical addresses."""
    if map_type != "THRU_HOST_BRIDGE":
        if map_type == "BUS_ADDR":
            return "BUS_ADDR: the request never reaches the root complex, so the IOMMU does not translate it"
        return None
    if state.active is False:
        return "no IOMMU is active: the client reaches the provider's BAR at its physical address"
    if state.active is None:
        return ("IOMMU state unknown (the source does not say): with a translating IOMMU the BAR is mapped"
                " through it like host memory, without one the physical address is used")
    t = state.domain_type(client)
    grp = f"group {client.iommu_group}" if client.iommu_group is not None else "its group"
    if t in TRANSLATED:
        return f"through the IOMMU: the client's {grp} has a translated default domain ({t}); the BAR gets an IOVA"
    if t == "identity":
        return (f"the IOMMU is active but the client's {grp} is identity-mapped (iommu=pt or a passthrough"
                " default): the physical address of the BAR is used")
    if t is not None:
        return f"the client's {grp} default domain is {t}: the domain's owner (e.g. vfio) maps the BAR"
    return ("an IOMMU is active: the mapping goes through it if the client's group translates (DMA, DMA-FQ),"
            " or uses the physical address if it is identity-mapped; see sys/kernel/iommu_groups/N/type")


def _dmi(files: _Files | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if files is None:
        return out
    for name in DMI_FIELDS:
        text = files.read(f"{DMI_ID}/{name}")
        if text and text.strip():
            out[name] = text.strip()
    return out


def guest_facts(topo: Topology, root: Path | str | FsView | None = None) -> GuestFacts:
    """Whether ``topo`` is a virtual machine: cpuinfo's hypervisor flag, DMI strings (when a root is
    given) and emulated PCI devices."""
    evidence: list[str] = []
    if topo.cpu is not None and topo.cpu.hypervisor:
        evidence.append("cpuinfo has the hypervisor flag")
    dmi = _dmi(_Files(root) if root is not None else None)
    product = dmi.get("product_name", "")
    metal = product.endswith(".metal")  # EC2 bare-metal instances keep "Amazon EC2" as sys_vendor
    hits = [f"DMI {k}={v!r}" for k, v in dmi.items()
            if not metal and any(h.lower() in v.lower() for h in DMI_HYPERVISORS)]
    if dmi.get("sys_vendor", "").startswith("Microsoft") and product == "Virtual Machine":
        hits = hits or [f"DMI sys_vendor={dmi['sys_vendor']!r} product_name='Virtual Machine'"]
    evidence.extend(hits[:2])
    seen: dict[str, list[str]] = {}
    for d in topo.devices:
        what = VIRTUAL_IDS.get((d.vendor, d.device)) or VIRTUAL_VENDORS.get(d.vendor)
        if what:
            seen.setdefault(what, []).append(d.bdf)
    for what, bdfs in seen.items():
        more = f" and {len(bdfs) - 1} more" if len(bdfs) > 1 else ""
        evidence.append(f"{what} at {bdfs[0]}{more}")
    return GuestFacts(guest=bool(evidence), evidence=tuple(evidence), dmi=dmi)


__all__ = [
    "GuestFacts",
    "IommuState",
    "guest_facts",
    "iommu_from_topology",
    "mapping_text",
    "read_iommu",
]
