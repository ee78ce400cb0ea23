"""The per-pair P2P verdict: map type, distance, the ports that decided it, why, and the fix.

Mirrors calc_map_type_and_dist() of drivers/pci/p2pdma.c in two profiles:
``classic`` (kernels through 6.x: any of RR, CR, EC set on a path port redirects) and
``latest`` (per-port pci_acs_p2pdma_decision(), Egress Control only at the divergence, HMAT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from p2pdma.p2p import platform
from p2pdma.p2p.acs import AcsState, acs_state, has_acs_redir
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

KERNEL_PROFILES = ("latest", "classic")
DEFAULT_PROFILE = "latest"


class MapType(IntEnum):
    """``enum pci_p2pdma_map_type`` of include/linux/pci-p2pdma.h."""

    def __deepcopy__(self, memo: object) -> MapType:
        return self  # members are constants: copies share them

    UNKNOWN = 0
    NONE = 1
    NOT_SUPPORTED = 2
    BUS_ADDR = 3
    THRU_HOST_BRIDGE = 4


@dataclass(frozen=True, slots=True)
class PortVerdict:
    """One port on the path: what its ACS control says for this request."""

    bdf: str
    state: AcsState
    ctrl: int | None
    target: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The kernel's answer for one (provider, client) pair, with everything needed to explain it."""

    provider: str
    client: str
    map_type: MapType
    distance: int
    common: str | None
    acs_ports: tuple[str, ...]
    unknown_ports: tuple[str, ...]
    reason: str
    fix: str | None
    path: tuple[str, ...]
    ports: tuple[PortVerdict, ...] = field(default=())
    via: str | None = None
    kernel_log: tuple[str, ...] = ()

    @property
    def certain(self) -> bool:
        """False when a port whose ACS could not be read lies on a path where ACS decides."""
        return not self.unknown_ports

    def to_json(self, with_path: bool = False) -> dict[str, Any]:
        """The ``p2pdma.matrix/1`` pair object (``path`` added for ``explain``)."""
        out: dict[str, Any] = {
            "provider": self.provider,
            "client": self.client,
            "map_type": self.map_type.name,
            "distance": self.distance,
            "acs_ports": list(self.acs_ports),
            "reason": self.reason,
            "fix": self.fix,
            "certain": self.certain,
            "unknown_ports": list(self.unknown_ports),
        }
        if with_path:
            out["path"] = list(self.path)
            out["ports"] = [
                {
                    "bdf": p.bdf,
                    "acs_ctrl": None if p.ctrl is None else f"{p.ctrl:#06x}",
                    "acs_bits": None if p.ctrl is None else cfg.acs_bits_text(p.ctrl),
                    "state": p.state.name,
                    "egress_target": p.target,
                }
                for p in self.ports
            ]
            out["common_upstream"] = self.common
            out["via"] = self.via
            out["kernel_log"] = list(self.kernel_log)
        return out


def _check_port(dev: Device, target: Device | None, profile: str) -> AcsState:
    if profile == "classic":
        return AcsState.REDIRECT if has_acs_redir(dev) else AcsState.DIRECT
    return acs_state(dev, target)


def _ancestors_walk(topo: Topology, provider: Device, client: Device) -> tuple[
    Device | None, Device | None, Device | None, int, int
]:
    """The kernel's nested walk: first provider-side bridge that is also on the client's chain.

    Returns (common, a_child, b_child, dist_a, dist_b) with the kernel's values when the walk
    falls off the top (a_child/b_child are then the topmost devices of each chain).
    """
    client_chain = topo.chain(client.bdf)
    pos_in_b = {d.bdf: i for i, d in enumerate(client_chain)}
    a_child: Device | None = None
    dist_a = 0
    for a in topo.chain(provider.bdf):
        i = pos_in_b.get(a.bdf)
        if i is not None:
            b_child = client_chain[i - 1] if i > 0 else None
            return a, a_child, b_child, dist_a, i
        a_child = a
        dist_a += 1
    return None, a_child, client_chain[-1], dist_a, len(client_chain)


def calc_map_type_and_dist(
    topo: Topology, provider: Device | str, client: Device | str, profile: str = DEFAULT_PROFILE
) -> Verdict:
    """Map type and distance for ``client`` reaching ``provider``'s memory.

    Mirrors calc_map_type_and_dist() / __calc_map_type_and_dist() in drivers/pci/p2pdma.c
    (``latest``), or its 6.x form with pci_bridge_has_acs_redir() (``classic``).
    """
    if profile not in KERNEL_PROFILES:
        raise ValueError(f"unknown kernel profile {profile!r}")
    p = topo[provider] if isinstance(provider, str) else provider
    c = topo[client] if isinstance(client, str) else client
    common, a_child, b_child, dist_a, dist_b = _ancestors_walk(topo, p, c)
    distance = dist_a + dist_b
    no_common = common is None

    ports: list[PortVerdict] = []
    acs_ports: list[str] = []
    unknown: list[str] = []
    blocked_at: str | None = None
    redirects = 0
    path: list[str] = []

    def visit(dev: Device, target: Device | None) -> None:
        nonlocal redirects, blocked_at
        state = _check_port(dev, target, profile)
        ports.append(
            PortVerdict(
                bdf=dev.bdf,
                state=state,
                ctrl=dev.acs.ctrl if dev.acs else None,
                target=target.bdf if target else None,
            )
        )
        if not dev.acs_known:
            unknown.append(dev.bdf)
        if state != AcsState.DIRECT:
            acs_ports.append(dev.bdf)
            if state == AcsState.REDIRECT:
                redirects += 1
            elif blocked_at is None:
                blocked_at = dev.bdf

    # Provider side, up to and including the common bridge (the whole chain when none).
    for dev in topo.chain(p.bdf):
        target = b_child if (a_child is not None and dev.bdf == a_child.bdf) else None
        if profile == "classic":
            target = None
        visit(dev, target)
        path.append(dev.bdf)
        if common is not None and dev.bdf == common.bdf:
            break
    # Client side, excluding the common bridge. Classic kernels skip it when there is none.
    client_side: list[str] = []
    if not (no_common and profile == "classic"):
        for dev in topo.chain(c.bdf):
            if common is not None and dev.bdf == common.bdf:
                break
            target = a_child if (b_child is not None and dev.bdf == b_child.bdf) else None
            if profile == "classic":
                target = None
            visit(dev, target)
            client_side.append(dev.bdf)
    else:
        client_side = [d.bdf for d in topo.chain(c.bdf)]
    if no_common:
        hbs = list(dict.fromkeys([p.host_bridge, c.host_bridge]))
        path.extend(hbs)
    path.extend(reversed(client_side))

    acs_blocks = bool(acs_ports) and not no_common
    # Unknown ACS matters only where ACS decides: a shared upstream bridge.
    unknown_ports = tuple(unknown) if not no_common else ()

    if not no_common and not acs_ports:
        if p.bdf == c.bdf:
            reason = "same function"
        else:
            reason = (
                f"direct: the paths meet at {common.bdf if common else '?'}"
                f" ({_port_name(common)}); no port on the path redirects peer requests"
            )
        reason += _unknown_text(unknown_ports)
        return Verdict(
            provider=p.bdf,
            client=c.bdf,
            map_type=MapType.BUS_ADDR,
            distance=distance,
            common=common.bdf if common else None,
            acs_ports=(),
            unknown_ports=unknown_ports,
            reason=reason,
            fix=None,
            path=tuple(path),
            ports=tuple(ports),
        )

    log: list[str] = []
    if acs_ports and (profile == "latest" or not no_common):
        if profile == "latest" and blocked_at is not None:
            log.append(f"pci {c.bdf}: ACS blocks the direct P2P path to provider {p.bdf} at {blocked_at}")
        else:
            log.append(f"pci {c.bdf}: ACS redirect is set between the client and provider ({p.bdf})")
        what = "ACS controls" if profile == "latest" else "ACS redirect"
        log.append(
            f"pci {c.bdf}: to disable {what} for this path, add the kernel parameter: "
            f"pci=disable_acs_redir={';'.join(acs_ports)}"
        )
    warn_whitelist = bool(acs_ports) and (profile == "latest" or not no_common)

    parts: list[str] = []
    fix: str | None = None
    if acs_blocks:
        detail = ", ".join(_acs_port_text(topo, x) for x in acs_ports)
        if blocked_at is not None:
            parts.append(f"ACS blocks the direct P2P path at {blocked_at} ({detail})")
        else:
            parts.append(f"ACS redirect is set between the client and provider ({detail})")
        fix = "pci=disable_acs_redir=" + ";".join(acs_ports)
    else:
        if p.host_bridge != c.host_bridge:
            parts.append(
                f"no common upstream bridge: different host bridges ({p.host_bridge}, {c.host_bridge})"
            )
        else:
            parts.append(
                "no common upstream bridge: different root ports of host bridge "
                f"{p.host_bridge}"
            )

    via: str | None = None
    if platform.cpu_supports_p2pdma(topo):
        assert topo.cpu is not None
        via = "cpu"
        why = f"the CPU is AMD Zen or newer (family {topo.cpu.family:#x})"
    elif platform.host_bridge_whitelist(topo, p, c):
        via = "whitelist"
        why = platform.host_bridge_reason(topo, p, c)
    elif profile == "latest" and platform.hmat_path(topo, p, c) is not None:
        via = "hmat"
        why = f"HMAT describes an ordered P2P path {c.host_bridge} -> {p.host_bridge}"
    else:
        why = platform.host_bridge_reason(topo, p, c)
        if profile == "latest":
            why += "; no HMAT P2P path"
    if warn_whitelist and via != "cpu":
        log.extend(platform.whitelist_warnings(topo, p, c))
    if via is not None:
        map_type = MapType.THRU_HOST_BRIDGE
        parts.append(f"allowed through the host bridge: {why}")
    else:
        map_type = MapType.NOT_SUPPORTED
        parts.append(f"not allowed through the host bridge: {why}")
        tail = ", or HMAT-described P2P path" if profile == "latest" else " or whitelisted host bridge"
        if profile == "latest":
            tail = ", whitelisted host bridge" + tail
        log.append(
            f"pci {c.bdf}: cannot be used for peer-to-peer DMA as the client and provider ({p.bdf})"
            f" do not share an upstream bridge{tail}"
        )
    reason = "; ".join(parts) + _unknown_text(unknown_ports)
    return Verdict(
        provider=p.bdf,
        client=c.bdf,
        map_type=map_type,
        distance=distance,
        common=common.bdf if common else None,
        acs_ports=tuple(acs_ports) if acs_blocks else (),
        unknown_ports=unknown_ports,
        reason=reason,
        fix=fix,
        path=tuple(path),
        ports=tuple(ports),
        via=via,
        kernel_log=tuple(log),
    )


def _port_name(dev: Device | None) -> str:
    if dev is None:
        return "?"
    if dev.port_type_name and dev.is_bridge:
        return dev.port_type_name
    return "same device" if not dev.is_bridge else "bridge"


def _acs_port_text(topo: Topology, bdf: str) -> str:
    dev = topo[bdf]
    if dev.acs is None:
        return f"{bdf} ACS unreadable"
    return f"{bdf} {_port_name(dev)} ACS ctrl {dev.acs.ctrl:#06x} [{cfg.acs_bits_text(dev.acs.ctrl)}]"


def _unknown_text(unknown: tuple[str, ...]) -> str:
    if not unknown:
        return ""
    return (
        "; ACS unknown at " + ", ".join(unknown)
        + " (config space past 64 bytes unreadable: run as root); computed as if those ports had"
        " no ACS capability"
    )
