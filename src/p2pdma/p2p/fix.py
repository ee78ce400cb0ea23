"""The smallest ACS Control change that makes chosen pairs ``BUS_ADDR``, and how to apply it.

For every port on the paths of the requested pairs, the bits to clear are the fewest of RR, CR and
EC after which pci_acs_p2pdma_decision() (``latest``) or pci_bridge_has_acs_redir() (``classic``)
lets every request of those pairs through that port directly. The change is then applied to a copy
of the topology and every pair recomputed. Only bits are ever cleared, so no pair that was
``BUS_ADDR`` stops being so.

The change is written three ways: ``pci=config_acs=`` (parsed by __pci_config_acs() in
drivers/pci/pci.c), ``pci=disable_acs_redir=`` (the same function with RR|CR|EC fixed) and
``setpci`` commands for the running system.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from p2pdma.p2p import platform
from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES, MapType, calc_map_type_and_dist
from p2pdma.p2p.matrix import compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

REDIRECT_BITS = cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_EC
# ACS Control bits config_acs= can set or clear, most significant first: DT EC UF CR RR TB SV
CONFIG_ACS_BITS = (
    cfg.PCI_ACS_DT, cfg.PCI_ACS_EC, cfg.PCI_ACS_UF, cfg.PCI_ACS_CR,
    cfg.PCI_ACS_RR, cfg.PCI_ACS_TB, cfg.PCI_ACS_SV,
)
CONFIG_ACS_VALID = cfg.PCI_ACS_SV | cfg.PCI_ACS_TB | cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | \
    cfg.PCI_ACS_UF | cfg.PCI_ACS_EC | cfg.PCI_ACS_DT
# Bits whose loss costs isolation (pci_device_group() requires them): prefer keeping them.
_ISOLATION_BITS = cfg.PCI_ACS_SV | cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_UF

SETPCI_NOTE = (
    "setpci changes the running system only: a reboot, a hot reset, a Function Level Reset or a resume "
    "rewrites ACS Control (pci_restore_state() calls pci_enable_acs()); the kernel caches each pair's "
    "verdict in the provider's map_types, so unbind and rebind the provider's driver afterwards; and the "
    "IOMMU groups formed at boot are not recomputed, so functions in separate groups can then reach each "
    "other without the IOMMU: vfio's isolation no longer holds until you reboot"
)
CONFIG_ACS_NOTE = (
    "pci=config_acs= exists since Linux 6.11 and is read this way since 6.15 (earlier 6.11-6.14 kernels "
    "mix in firmware bits wrongly); '0' clears a bit, '1' sets it, 'x' keeps the firmware's value, the "
    "rightmost character is bit 0 (SV), the leftmost of seven bit 6 (DT): bits this change keeps are "
    "written '1' so the kernel's own SV/UF survive; entries are separated by ';' (pci= splits on ',')"
)
DISABLE_REDIR_NOTE = (
    "pci=disable_acs_redir= (Linux 4.19+) clears RR, CR and EC on each port named, which may be more "
    "than needed; since 6.15 it also puts every other ACS bit of those ports back to the firmware's "
    "value, dropping SV/UF the kernel itself enabled. Do not name a port in both parameters: "
    "config_acs is applied last and starts again from the firmware value"
)
NO_ACS_HELP = (
    "no ACS change can help: the two functions share no upstream bridge (PCIe switch), so requests "
    "must cross the root complex. What would: a host bridge in the kernel's P2PDMA whitelist "
    "(pci_p2pdma_whitelist[] in drivers/pci/p2pdma.c), an AMD Zen or newer CPU (cpu_supports_p2pdma()), "
    "firmware HMAT describing a P2P path between the host bridges (latest kernels), or moving both "
    "cards below one PCIe switch. Forcing the whitelist for a root complex that is not on it is unsafe: "
    "root complexes that do not forward peer requests correctly drop or corrupt them silently (forcing it "
    "gave silent data corruption in intel/compute-runtime issue 935)"
)

ALREADY_THRU_HOST = (
    "these pairs share no upstream bridge and already go through the host bridge: no ACS change makes "
    "them BUS_ADDR, only placing both functions below one PCIe switch would"
)


@dataclass(frozen=True, slots=True)
class PortChange:
    """New ACS Control for one port: ``before`` and ``after`` values, ``offset`` of the capability."""

    bdf: str
    port_type: str | None
    before: int
    after: int
    offset: int

    @property
    def cleared(self) -> int:
        return self.before & ~self.after


@dataclass(frozen=True, slots=True)
class PairFix:
    """One requested pair: its map type before and after the change, and why it stays if it does."""

    provider: str
    client: str
    before: MapType
    after: MapType
    certain: bool
    fixable: bool
    reason: str


@dataclass(frozen=True)
class FixPlan:
    """The change for a set of pairs, the re-verified outcome and the three ways to apply it."""

    topo: Topology
    fixed: Topology
    profile: str
    devices: tuple[str, ...]
    pairs: tuple[PairFix, ...]
    total_pairs: int
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    changes: tuple[PortChange, ...]
    unknown_ports: tuple[str, ...]
    verified: bool

    @property
    def certain(self) -> bool:
        return not self.unknown_ports

    @property
    def unfixable(self) -> tuple[PairFix, ...]:
        return tuple(p for p in self.pairs if not p.fixable)

    @property
    def config_acs(self) -> str | None:
        if not self.changes:
            return None
        return "pci=config_acs=" + ";".join(f"{config_acs_mask(c)}@{c.bdf}" for c in self.changes)

    @property
    def disable_acs_redir(self) -> str | None:
        if not self.changes:
            return None
        return "pci=disable_acs_redir=" + ";".join(c.bdf for c in self.changes)

    @property
    def setpci(self) -> tuple[str, ...]:
        return tuple(setpci_command(c) for c in self.changes)


def config_acs_mask(change: PortChange) -> str:
    """The seven-character ``config_acs`` flags for a port: '0' cleared, '1' kept set, 'x' untouched."""
    out = []
    for bit in CONFIG_ACS_BITS:
        if change.cleared & bit:
            out.append("0")
        elif change.after & bit:
            out.append("1")
        else:
            out.append("x")
    return "".join(out)


def parse_config_acs(value: str) -> list[tuple[int, int, str]]:
    """Split a ``config_acs`` value into (mask, flags, device) entries; ValueError where the kernel
    would refuse it. Mirrors the parsing of __pci_config_acs() in drivers/pci/pci.c."""
    out: list[tuple[int, int, str]] = []
    for entry in re.split(r"[;,]", value):
        flags_text, at, dev = entry.partition("@")
        if not at:
            raise ValueError(f"{entry!r}: ACS flags missing (no '@')")
        mask = flags = 0
        for shift, ch in enumerate(reversed(flags_text)):
            if ch == "0":
                mask |= 1 << shift
            elif ch == "1":
                mask |= 1 << shift
                flags |= 1 << shift
            elif ch not in "xX":
                raise ValueError(f"{entry!r}: invalid ACS flags")
        if mask & ~CONFIG_ACS_VALID:
            raise ValueError(f"{entry!r}: invalid ACS flags specified")
        out.append((mask, flags, dev))
    return out


def apply_config_acs(fw_ctrl: int, mask: int, flags: int) -> int:
    """ACS Control after one matching entry: ``(fw_ctrl & ~mask) | (flags & mask)`` as
    __pci_config_acs() computes it since Linux 6.15."""
    return (fw_ctrl & ~mask) | (flags & mask)


def setpci_command(change: PortChange) -> str:
    """A ``setpci`` command that clears exactly the change's bits (value:mask form), with the full value."""
    return (
        f"setpci -s {change.bdf} ECAP_ACS+0x6.w=0000:{change.cleared:04x}"
        f"   # ACS Control {change.before:#06x} -> {change.after:#06x} (= ECAP_ACS+0x6.w={change.after:04x})"
    )


def apply_acs_ctrl(topo: Topology, ctrl: dict[str, int]) -> Topology:
    """A copy of ``topo`` whose ports in ``ctrl`` have that ACS Control value (frozen devices replaced)."""
    devices = []
    for d in topo.devices:
        if d.bdf in ctrl and d.acs is not None:
            d = dataclasses.replace(d, acs=dataclasses.replace(d.acs, ctrl=ctrl[d.bdf]))
        devices.append(d)
    return Topology(
        name=topo.name,
        devices=tuple(devices),
        host_bridges=topo.host_bridges,
        cpu=topo.cpu,
        hmat=topo.hmat,
        kernel_release=topo.kernel_release,
        warnings=topo.warnings,
        source=topo.source,
    )


def path_uses(topo: Topology, selected: Iterable[str]) -> dict[str, set[str | None]]:
    """Every port on the path of any ordered pair of distinct ``selected`` functions that share an
    upstream bridge, with the egress targets calc_map_type_and_dist() checks there (always None:
    pci_bridge_has_acs_redir() reads no target)."""
    sel = list(dict.fromkeys(selected))
    # branches[x][child-of-x or None] = selected functions at or below x through that child
    branches: dict[str, dict[str | None, list[str]]] = {}
    chains = {s: [d.bdf for d in topo.chain(s)] for s in sel}
    for s, chain in chains.items():
        below: str | None = None
        for x in chain:
            branches.setdefault(x, {}).setdefault(below, []).append(s)
            below = x
    uses: dict[str, set[str | None]] = {}
    for c, br in branches.items():
        if len(br) < 2:
            continue
        uses.setdefault(c, set()).add(None)
        for child, members in br.items():
            if child is None:
                continue
            uses.setdefault(child, set()).add(None)  # no kept profile reads an egress target
            for m in members:
                for y in chains[m]:
                    if y == child:
                        break
                    uses.setdefault(y, set()).add(None)
    return uses


def _direct(dev: Device, ctrl: int, target: Device | None, profile: str) -> bool:
    """pci_bridge_has_acs_redir() on a trial control value: every kept profile (kernels.py) uses it."""
    return not ctrl & REDIRECT_BITS


def minimal_clear(topo: Topology, dev: Device, targets: Iterable[str | None], profile: str) -> int:
    """The fewest of RR, CR, EC to clear so every listed request passes ``dev`` directly (ties keep
    RR/CR), as pci_bridge_has_acs_redir() decides in every kept profile."""
    if dev.acs is None:
        return 0
    tgts = [topo[t] if t is not None else None for t in targets]
    present = [b for b in (cfg.PCI_ACS_RR, cfg.PCI_ACS_CR, cfg.PCI_ACS_EC) if dev.acs.ctrl & b]
    subsets = [sum(c) for k in range(len(present) + 1) for c in combinations(present, k)]
    subsets.sort(key=lambda s: (bin(s).count("1"), bin(s & _ISOLATION_BITS).count("1"), s))
    for s in subsets:
        ctrl = dev.acs.ctrl & ~s
        if all(_direct(dev, ctrl, t, profile) for t in tgts):
            return s
    return dev.acs.ctrl & REDIRECT_BITS  # unreachable: clearing all three always routes directly


def plan_fix(
    topo: Topology,
    devices: Sequence[str],
    profile: str = DEFAULT_PROFILE,
) -> FixPlan:
    """The smallest ACS Control change making every ordered pair of ``devices`` ``BUS_ADDR`` where a
    shared upstream bridge allows it, applied to a copy and re-verified by recomputing the matrix."""
    if profile not in KERNEL_PROFILES:
        raise ValueError(f"unknown kernel profile {profile!r}")
    sel = tuple(dict.fromkeys(devices))
    uses = path_uses(topo, sel)
    new_ctrl: dict[str, int] = {}
    changes: list[PortChange] = []
    unknown: list[str] = []
    for bdf in sorted(uses, key=lambda b: topo.index[b]):
        dev = topo[bdf]
        if not dev.acs_known:
            unknown.append(bdf)
        clear = minimal_clear(topo, dev, uses[bdf], profile)
        if clear and dev.acs is not None:
            new_ctrl[bdf] = dev.acs.ctrl & ~clear
            changes.append(PortChange(bdf, dev.port_type_name, dev.acs.ctrl, new_ctrl[bdf], dev.acs.offset))
    fixed = apply_acs_ctrl(topo, new_ctrl) if new_ctrl else topo
    before = compute_matrix(topo, profile, select=sel)
    after = compute_matrix(fixed, profile, select=sel)
    tops = [topo.chain(b)[-1].bdf for b in sel]
    reasons: dict[tuple[str, str, MapType], str] = {}
    pairs: list[PairFix] = []
    verified = True
    total = 0
    for i, p in enumerate(sel):
        for j, c in enumerate(sel):
            if i == j:
                continue
            total += 1
            fixable = tops[i] == tops[j]
            mb, ma = MapType(int(before.map_type[i, j])), MapType(int(after.map_type[i, j]))
            if fixable and ma != MapType.BUS_ADDR:
                verified = False
            if mb == MapType.BUS_ADDR and ma == MapType.BUS_ADDR:
                continue
            if fixable:
                reason = "ACS on the path redirects or blocks it"
            else:
                key = (topo[p].host_bridge, topo[c].host_bridge, mb)
                if key not in reasons:
                    reasons[key] = _no_common_reason(topo, p, c, profile, mb)
                reason = reasons[key]
            pairs.append(PairFix(p, c, mb, ma, bool(after.certain[i, j]), fixable, reason))
    n = len(sel)
    off = ~np.eye(n, dtype=bool) if n else None
    return FixPlan(
        topo=topo,
        fixed=fixed,
        profile=profile,
        devices=sel,
        pairs=tuple(pairs),
        total_pairs=total,
        counts_before=_counts(before.map_type, off),
        counts_after=_counts(after.map_type, off),
        changes=tuple(changes),
        unknown_ports=tuple(unknown),
        verified=verified,
    )


def _counts(mt: npt.NDArray[np.int8], off: npt.NDArray[np.bool_] | None) -> dict[str, int]:
    out = {}
    for m in (MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED):
        out[m.name] = 0 if off is None else int(((mt == m.value) & off).sum())
    return out


def _no_common_reason(topo: Topology, p: str, c: str, profile: str, mt: MapType) -> str:
    pd, cd = topo[p], topo[c]
    where = (
        f"different host bridges ({pd.host_bridge}, {cd.host_bridge})"
        if pd.host_bridge != cd.host_bridge
        else f"different root ports of host bridge {pd.host_bridge}"
    )
    if mt == MapType.THRU_HOST_BRIDGE:
        v = calc_map_type_and_dist(topo, p, c, profile)
        return f"no common upstream bridge ({where}); already allowed through the host bridge ({v.via})"
    why = platform.host_bridge_reason(topo, pd, cd)
    return f"no common upstream bridge ({where}); {why}"


__all__ = [
    "CONFIG_ACS_NOTE",
    "DISABLE_REDIR_NOTE",
    "ALREADY_THRU_HOST",
    "NO_ACS_HELP",
    "SETPCI_NOTE",
    "FixPlan",
    "PairFix",
    "PortChange",
    "apply_acs_ctrl",
    "apply_config_acs",
    "config_acs_mask",
    "minimal_clear",
    "parse_config_acs",
    "path_uses",
    "plan_fix",
    "setpci_command",
]
