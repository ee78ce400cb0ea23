"""Platform support for P2P through a host bridge: CPU and the host bridge whitelist of a profile.

(hmat_path() stays for the model's page notes; no kernel decides with HMAT.)
"""

from __future__ import annotations

from p2pdma.p2p.kernels import (  # noqa: F401  (re-exported)
    NEWEST_MAINLINE,
    PCI_ANY_ID,
    PCI_VENDOR_ID_GOOGLE,
    PCI_VENDOR_ID_INTEL,
    PROFILES,
    REQ_SAME_HOST_BRIDGE,
    WhitelistEntry,
)
from p2pdma.pci.topology import Device, HmatPath, HostBridge, Topology

# The newest mainline tree's table (callers that name no profile).
WHITELIST: tuple[WhitelistEntry, ...] = PROFILES[NEWEST_MAINLINE].whitelist
Table = tuple[WhitelistEntry, ...]


def cpu_supports_p2pdma(topo: Topology, enabled: bool = True) -> bool:
    """AMD Zen (family 0x17) or newer routes P2P between root ports. Mirrors cpu_supports_p2pdma();
    ``enabled`` False for a profile whose tree has no such function (KernelProfile.cpu_amd_zen)."""
    cpu = topo.cpu
    return enabled and cpu is not None and cpu.vendor == "AuthenticAMD" and cpu.family >= 0x17


def whitelist_entry(dev: Device | None, table: Table = WHITELIST) -> WhitelistEntry | None:
    """The first row of ``table`` matching a host bridge device, or None."""
    if dev is None:
        return None
    for e in table:
        if dev.vendor != e.vendor:
            continue
        if e.device != PCI_ANY_ID and dev.device != e.device:
            continue
        return e
    return None


def host_dev(topo: Topology, hb: HostBridge, root_port: bool = True) -> Device | None:
    """pci_host_bridge_dev(): the first device on the root bus if devfn 00.0 or (``root_port``, 5.19
    on) a Root Port; trees before 5.19 take it only at devfn 00.0 (KernelProfile.host_bridge_root_port)."""
    if not hb.host_dev:
        return None
    dev = topo[hb.host_dev]
    if not root_port and not dev.bdf.endswith(":00.0"):
        return None
    return dev


def _host_bridge_ok(
    topo: Topology, hb: HostBridge, same_host_bridge: bool, table: Table, root_port: bool = True
) -> bool:
    """Mirrors __host_bridge_whitelist(): the host bridge device's row, REQ_SAME_HOST_BRIDGE honoured."""
    dev = host_dev(topo, hb, root_port)
    e = whitelist_entry(dev, table)
    if e is None:
        return False
    return not (e.flags & REQ_SAME_HOST_BRIDGE and not same_host_bridge)


def host_bridge_whitelist(
    topo: Topology, a: Device, b: Device, table: Table = WHITELIST, root_port: bool = True
) -> bool:
    """Whether the root complex(es) of ``a`` and ``b`` forward P2P. Mirrors host_bridge_whitelist()."""
    ha = topo.host_bridge(a.host_bridge)
    hb = topo.host_bridge(b.host_bridge)
    if ha.name == hb.name:
        return _host_bridge_ok(topo, ha, True, table, root_port)
    return _host_bridge_ok(topo, ha, False, table, root_port) and _host_bridge_ok(topo, hb, False, table, root_port)


def hmat_path(topo: Topology, provider: Device, client: Device) -> HmatPath | None:
    """The HMAT ordered P2P path from the client's host bridge (initiator) to the provider's
    (target), if firmware describes one. Mirrors host_bridge_hmat_p2p()."""
    for p in topo.hmat:
        if p.initiator == client.host_bridge and p.target == provider.host_bridge:
            return p
    return None


def host_bridge_reason(
    topo: Topology, a: Device, b: Device, table: Table = WHITELIST, root_port: bool = True
) -> str:
    """Why the whitelist refuses (or accepts) the pair, naming the host bridge device(s)."""
    parts = []
    names = dict.fromkeys([a.host_bridge, b.host_bridge])
    same = len(names) == 1
    for name in names:
        hb = topo.host_bridge(name)
        found = host_dev(topo, hb, root_port)
        if found is None:
            what = "devfn 00.0 or Root Port" if root_port else "devfn 00.0 device"
            parts.append(f"host bridge {name} has no {what} first on its root bus")
            continue
        dev = found
        e = whitelist_entry(dev, table)
        ident = f"{dev.vendor:04x}:{dev.device:04x} at {dev.bdf}"
        if e is None:
            parts.append(f"host bridge {name} ({ident}) is not in the P2PDMA whitelist")
        elif e.flags & REQ_SAME_HOST_BRIDGE and not same:
            parts.append(
                f"host bridge {name} ({ident}, {e.comment}) is whitelisted only within one host bridge"
            )
        else:
            parts.append(f"host bridge {name} ({ident}, {e.comment}) is whitelisted")
    return "; ".join(parts)


def whitelist_warnings(
    topo: Topology, a: Device, b: Device, table: Table = WHITELIST, root_port: bool = True
) -> list[str]:
    """The "Host bridge not in P2PDMA whitelist" lines host_bridge_whitelist() prints with warn set,
    in its order and with its short-circuit (the second host bridge is not looked at when the
    first fails)."""
    out: list[str] = []
    names = [a.host_bridge] if a.host_bridge == b.host_bridge else [a.host_bridge, b.host_bridge]
    for name in names:
        found = host_dev(topo, topo.host_bridge(name), root_port)
        if found is None:
            return out
        dev = found
        e = whitelist_entry(dev, table)
        if e is None:
            out.append(f"pci {dev.bdf}: Host bridge not in P2PDMA whitelist: {dev.vendor:04x}:{dev.device:04x}")
            return out
        if e.flags & REQ_SAME_HOST_BRIDGE and len(names) > 1:
            return out
    return out
