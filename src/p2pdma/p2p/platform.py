"""Platform support for P2P through a host bridge: CPU and the host bridge whitelist of a profile.

(hmat_path() stays for the model's page notes; no kernel decides with HMAT.)
"""

from __future__ import annotations

from p2pdma.p2p.kernels import (  # noqa: F401  (re-exported)
    PCI_ANY_ID,
    PCI_VENDOR_ID_GOOGLE,
    PCI_VENDOR_ID_INTEL,
    PROFILES,
    REQ_SAME_HOST_BRIDGE,
    WhitelistEntry,
)
from p2pdma.pci.topology import Device, HmatPath, HostBridge, Topology

# The newest mainline tree's table (callers that name no profile).
WHITELIST: tuple[WhitelistEntry, ...] = PROFILES["7.2"].whitelist
Table = tuple[WhitelistEntry, ...]


def cpu_supports_p2pdma(topo: Topology) -> bool:
    """AMD Zen (family 0x17) or newer routes P2P between root ports. Mirrors cpu_supports_p2pdma()."""
    cpu = topo.cpu
    return cpu is not None and cpu.vendor == "AuthenticAMD" and cpu.family >= 0x17


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


def _host_bridge_ok(topo: Topology, hb: HostBridge, same_host_bridge: bool, table: Table) -> bool:
    """Mirrors __host_bridge_whitelist(): the host bridge device's row, REQ_SAME_HOST_BRIDGE honoured."""
    dev = topo[hb.host_dev] if hb.host_dev else None
    e = whitelist_entry(dev, table)
    if e is None:
        return False
    return not (e.flags & REQ_SAME_HOST_BRIDGE and not same_host_bridge)


def host_bridge_whitelist(topo: Topology, a: Device, b: Device, table: Table = WHITELIST) -> bool:
    """Whether the root complex(es) of ``a`` and ``b`` forward P2P. Mirrors host_bridge_whitelist()."""
    ha = topo.host_bridge(a.host_bridge)
    hb = topo.host_bridge(b.host_bridge)
    if ha.name == hb.name:
        return _host_bridge_ok(topo, ha, True, table)
    return _host_bridge_ok(topo, ha, False, table) and _host_bridge_ok(topo, hb, False, table)


def hmat_path(topo: Topology, provider: Device, client: Device) -> HmatPath | None:
    """The HMAT ordered P2P path from the client's host bridge (initiator) to the provider's
    (target), if firmware describes one. Mirrors host_bridge_hmat_p2p()."""
    for p in topo.hmat:
        if p.initiator == client.host_bridge and p.target == provider.host_bridge:
            return p
    return None


def host_bridge_reason(topo: Topology, a: Device, b: Device, table: Table = WHITELIST) -> str:
    """Why the whitelist refuses (or accepts) the pair, naming the host bridge device(s)."""
    parts = []
    names = dict.fromkeys([a.host_bridge, b.host_bridge])
    same = len(names) == 1
    for name in names:
        hb = topo.host_bridge(name)
        if hb.host_dev is None:
            parts.append(f"host bridge {name} has no devfn 00.0 or Root Port first on its root bus")
            continue
        dev = topo[hb.host_dev]
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


def whitelist_warnings(topo: Topology, a: Device, b: Device, table: Table = WHITELIST) -> list[str]:
    """The "Host bridge not in P2PDMA whitelist" lines host_bridge_whitelist() prints with warn set,
    in its order and with its short-circuit (the second host bridge is not looked at when the
    first fails)."""
    out: list[str] = []
    names = [a.host_bridge] if a.host_bridge == b.host_bridge else [a.host_bridge, b.host_bridge]
    for name in names:
        hb = topo.host_bridge(name)
        if hb.host_dev is None:
            return out
        dev = topo[hb.host_dev]
        e = whitelist_entry(dev, table)
        if e is None:
            out.append(f"pci {dev.bdf}: Host bridge not in P2PDMA whitelist: {dev.vendor:04x}:{dev.device:04x}")
            return out
        if e.flags & REQ_SAME_HOST_BRIDGE and len(names) > 1:
            return out
    return out
