"""IOMMU groups as the kernel forms them from ACS: which functions could not be given to different VMs.

Mirrors pci_device_group() of drivers/iommu/iommu.c with the ACS checks it uses
(pci_acs_enabled(), pci_acs_flags_enabled() and pci_acs_path_enabled() of drivers/pci/pci.c) and
the topology DMA aliases of pci_for_each_dma_alias() (drivers/pci/search.c). Device-specific quirks
(pci_dev_specific_acs_enabled(), DMA alias quirks) are not modelled: a real kernel may split or
merge some groups differently on hardware that has them.

pci_device_group() looks only at the ports above each function: two functions below sibling
switch downstream ports without ACS land in two groups although they reach each other directly.
Callers that care about real isolation should also list such pairs (see ``fix``).

Where a function's ACS is unknown (config space past 64 bytes unreadable), the groups are computed
twice, once as if every unknown function were isolated and once as if none were; a group is
certain only when both answers agree, and is otherwise marked uncertain rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

# PCI_ACS_ISOLATED (REQ_ACS_FLAGS in older kernels): SV | RR | CR | UF
REQ_ACS_FLAGS = cfg.PCI_ACS_SV | cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_UF


@dataclass(frozen=True, slots=True)
class Group:
    """One computed IOMMU group: its functions (sorted) and whether unknown ACS could change it."""

    devices: tuple[str, ...]
    certain: bool


@dataclass(frozen=True, slots=True)
class Groups:
    """All groups of a machine, and each function's group index."""

    groups: tuple[Group, ...]
    index: dict[str, int]

    def group_of(self, bdf: str) -> Group:
        """The group holding ``bdf``."""
        return self.groups[self.index[bdf]]


@dataclass(frozen=True, slots=True)
class Merge:
    """Functions that were in several groups and share one after a change."""

    devices: tuple[str, ...]
    before: tuple[tuple[str, ...], ...]
    certain: bool


def acs_flags_enabled(dev: Device, flags: int) -> bool:
    """Whether ``flags`` are all enabled, missing capabilities counting as hard-wired on.

    Mirrors pci_acs_flags_enabled() in drivers/pci/pci.c.
    """
    if dev.acs is None:
        return False
    flags &= dev.acs.cap | cfg.PCI_ACS_EC
    return (dev.acs.ctrl & flags) == flags


def acs_enabled(dev: Device, flags: int, assume: bool) -> bool:
    """Whether ``dev`` isolates its peers for ``flags``; ``assume`` answers where ACS is unknown.

    Mirrors pci_acs_enabled() in drivers/pci/pci.c without pci_dev_specific_acs_enabled() quirks.
    """
    if not dev.acs_known:
        return assume
    pt = dev.port_type
    if pt is None:
        return False  # conventional PCI / PCI-X: a shared bus
    if pt in (cfg.PCI_EXP_TYPE_PCIE_BRIDGE, cfg.PCI_EXP_TYPE_PCI_BRIDGE, cfg.PCI_EXP_TYPE_RC_EC):
        return False
    if pt in (cfg.PCI_EXP_TYPE_DOWNSTREAM, cfg.PCI_EXP_TYPE_ROOT_PORT):
        return acs_flags_enabled(dev, flags)
    if pt in (cfg.PCI_EXP_TYPE_ENDPOINT, cfg.PCI_EXP_TYPE_UPSTREAM, cfg.PCI_EXP_TYPE_LEG_END,
              cfg.PCI_EXP_TYPE_RC_END):
        if not _multifunction(dev):
            return True
        return acs_flags_enabled(dev, flags)
    return True


def acs_path_enabled(topo: Topology, start: Device, flags: int, assume: bool) -> bool:
    """ACS ``flags`` enabled on ``start`` and every bridge above it up to the root bus.

    Mirrors pci_acs_path_enabled(start, NULL, flags) in drivers/pci/pci.c.
    """
    return all(acs_enabled(d, flags, assume) for d in topo.chain(start.bdf))


def _multifunction(dev: Device) -> bool:
    return dev.multifunction and not dev.is_vf


def _alias_bridge(topo: Topology, dev: Device, assume: bool) -> Device | None:
    """The lowest upstream PCIe-to-PCI/X, PCI/X-to-PCIe or conventional bridge: it owns ``dev``'s
    requests (a DMA alias). Mirrors the topology part of pci_for_each_dma_alias()."""
    for b in topo.chain(dev.bdf)[1:]:
        pt = b.port_type
        if pt in (cfg.PCI_EXP_TYPE_ROOT_PORT, cfg.PCI_EXP_TYPE_UPSTREAM, cfg.PCI_EXP_TYPE_DOWNSTREAM):
            continue
        if pt in (cfg.PCI_EXP_TYPE_PCI_BRIDGE, cfg.PCI_EXP_TYPE_PCIE_BRIDGE):
            return b
        if pt is None:
            # Not PCIe as far as we can see; unreadable capabilities leave that to ``assume``.
            if not b.acs_known and assume:
                continue
            return b
    return None


class _UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {x: x for x in items}

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _partition(topo: Topology, assume: bool) -> dict[str, frozenset[str]]:
    """Each function's group members under one assumption for unknown ACS."""
    uf = _UnionFind(d.bdf for d in topo.devices)
    by_slot: dict[tuple[int, int, int], list[Device]] = {}
    for d in topo.devices:
        by_slot.setdefault((d.domain, d.bus, d.slot), []).append(d)
    for d in topo.devices:
        alias = _alias_bridge(topo, d, assume)
        if alias is not None:
            uf.union(d.bdf, alias.bdf)  # get_pci_alias_or_group(): the alias's group
            continue
        up = topo[d.parent] if d.parent is not None else None
        if up is not None and not acs_path_enabled(topo, up, REQ_ACS_FLAGS, assume):
            uf.union(d.bdf, up.bdf)  # the upstream bridge's group
            continue
        # get_pci_function_alias_group(): non-isolated functions of one slot share a group
        if _multifunction(d) and not acs_enabled(d, REQ_ACS_FLAGS, assume):
            for t in by_slot[(d.domain, d.bus, d.slot)]:
                if t.bdf != d.bdf and not acs_enabled(t, REQ_ACS_FLAGS, assume):
                    uf.union(d.bdf, t.bdf)
    members: dict[str, set[str]] = {}
    for d in topo.devices:
        members.setdefault(uf.find(d.bdf), set()).add(d.bdf)
    return {d.bdf: frozenset(members[uf.find(d.bdf)]) for d in topo.devices}


def iommu_groups(topo: Topology) -> Groups:
    """The IOMMU groups the kernel would form for this tree. Mirrors pci_device_group() in
    drivers/iommu/iommu.c, applied to every function (quirks ignored)."""
    opt = _partition(topo, True)
    pes = _partition(topo, False)
    seen: dict[frozenset[str], int] = {}
    groups: list[Group] = []
    index: dict[str, int] = {}
    for d in topo.devices:
        key = pes[d.bdf]
        if key not in seen:
            certain = all(opt[m] == pes[m] for m in key)
            seen[key] = len(groups)
            groups.append(Group(devices=tuple(sorted(key)), certain=certain))
        index[d.bdf] = seen[key]
    return Groups(groups=tuple(groups), index=index)


def merges(before: Groups, after: Groups) -> list[Merge]:
    """Groups of ``after`` that join functions ``before`` kept in separate groups."""
    out: list[Merge] = []
    for g in after.groups:
        parts = sorted({before.index[b] for b in g.devices if b in before.index})
        if len(parts) > 1:
            old = tuple(before.groups[i].devices for i in parts)
            certain = g.certain and all(before.groups[i].certain for i in parts)
            out.append(Merge(devices=g.devices, before=old, certain=certain))
    return out


def kernel_groups(topo: Topology) -> dict[int, tuple[str, ...]]:
    """The groups the running kernel reports (sysfs ``iommu_group`` links), by group number."""
    out: dict[int, list[str]] = {}
    for d in topo.devices:
        if d.iommu_group is not None:
            out.setdefault(d.iommu_group, []).append(d.bdf)
    return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


def compare_with_kernel(topo: Topology, computed: Groups) -> list[str]:
    """Lines naming where the computed groups differ from the kernel's (quirks, ACS set later);
    only for machines read from sysfs or a capture, whose groups the kernel made."""
    kernel = kernel_groups(topo)
    if not kernel or not topo.source.startswith(("sysfs:", "capture:")):
        return []
    lines: list[str] = []
    for number, members in kernel.items():
        idx = {computed.index[b] for b in members if b in computed.index}
        mine = {b for i in idx for b in computed.groups[i].devices if topo[b].iommu_group is not None}
        if mine != set(members) and all(computed.groups[i].certain for i in idx):
            lines.append(
                f"kernel group {number} ({', '.join(members)}) differs from the computed one"
                f" ({', '.join(sorted(mine))}): a kernel quirk or ACS changed after boot"
            )
    return lines


__all__ = [
    "REQ_ACS_FLAGS",
    "Group",
    "Groups",
    "Merge",
    "acs_enabled",
    "acs_flags_enabled",
    "acs_path_enabled",
    "compare_with_kernel",
    "iommu_groups",
    "kernel_groups",
    "merges",
]
