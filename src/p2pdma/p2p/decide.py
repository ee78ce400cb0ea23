"""The per-pair P2P verdict: map type, distance, the ports that decided it, why, and the fix.

Mirrors calc_map_type_and_dist() of drivers/pci/p2pdma.c under a kernel profile (p2p/kernels.py):
every kept tree (6.1, 7.2, pci-next) decides ACS with pci_bridge_has_acs_redir(); profiles differ
in the host-bridge whitelist and the log lines. ``classic``/``latest`` are aliases of the newest mainline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from p2pdma.p2p import platform
from p2pdma.p2p.acs import AcsState, has_acs_redir
from p2pdma.p2p.kernels import ALIASES, NEWEST_MAINLINE, PROFILES, KernelProfile, get_profile
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

KERNEL_PROFILES: tuple[str, ...] = (*PROFILES, *ALIASES)
DEFAULT_PROFILE = NEWEST_MAINLINE
HB_UNKNOWN = "host bridge device not in this input"


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
    unknown: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()

    @property
    def certain(self) -> bool:
        """False when a fact the verdict used is missing: a port's ACS where ACS decides, or the
        host bridge device where the whitelist decides."""
        return not self.unknown_ports and not self.unknown

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
            "unknown": list(self.unknown),
        }
        if self.hints:
            out["hints"] = list(self.hints)
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
    """Map type and distance for ``client`` reaching ``provider``'s memory under ``profile``.

    Mirrors calc_map_type_and_dist() in drivers/pci/p2pdma.c (6.1, 7.2; pci-next's whitelist and
    warnings): pci_bridge_has_acs_redir() on every port of both chains up to the common bridge.
    """
    if profile not in KERNEL_PROFILES:
        raise ValueError(f"unknown kernel profile {profile!r}")
    prof = get_profile(profile)
    table = prof.whitelist
    p = topo[provider] if isinstance(provider, str) else provider
    c = topo[client] if isinstance(client, str) else client
    common, a_child, b_child, dist_a, dist_b = _ancestors_walk(topo, p, c)
    distance = dist_a + dist_b
    no_common = common is None

    ports: list[PortVerdict] = []
    acs_ports: list[str] = []
    unknown: list[str] = []
    path: list[str] = []

    def visit(dev: Device) -> None:
        state = AcsState.REDIRECT if has_acs_redir(dev) else AcsState.DIRECT
        ports.append(PortVerdict(bdf=dev.bdf, state=state, ctrl=dev.acs.ctrl if dev.acs else None, target=None))
        if not dev.acs_known:
            unknown.append(dev.bdf)
        if state != AcsState.DIRECT:
            acs_ports.append(dev.bdf)

    # Provider side up to and including the common bridge; the kernel skips the rest when none.
    for dev in topo.chain(p.bdf):
        if not no_common:
            visit(dev)
        path.append(dev.bdf)
        if common is not None and dev.bdf == common.bdf:
            break
    client_side: list[str] = []
    for dev in topo.chain(c.bdf):
        if common is not None and dev.bdf == common.bdf:
            break
        if not no_common:
            visit(dev)
        client_side.append(dev.bdf)
    if no_common:
        path.extend(dict.fromkeys([p.host_bridge, c.host_bridge]))
    path.extend(reversed(client_side))
    unknown_ports = tuple(unknown)

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
            provider=p.bdf, client=c.bdf, map_type=MapType.BUS_ADDR, distance=distance,
            common=common.bdf if common else None, acs_ports=(), unknown_ports=unknown_ports,
            reason=reason, fix=None, path=tuple(path), ports=tuple(ports),
        )

    log: list[str] = []
    parts: list[str] = []
    fix: str | None = None
    if acs_ports:
        log.append(prof.log_acs.format(client=c.bdf, provider=p.bdf))
        log.append(prof.log_acs_param.format(client=c.bdf, list=prof.acs_list(acs_ports)))
        detail = ", ".join(_acs_port_text(topo, x) for x in acs_ports)
        parts.append(f"ACS redirect is set between the client and provider ({detail})")
        fix = "pci=disable_acs_redir=" + ";".join(acs_ports)
    elif p.host_bridge != c.host_bridge:
        parts.append(f"no common upstream bridge: different host bridges ({p.host_bridge}, {c.host_bridge})")
    else:
        parts.append(f"no common upstream bridge: different root ports of host bridge {p.host_bridge}")

    via: str | None = None
    missing: list[str] = []
    hints: list[str] = []
    rp = prof.host_bridge_root_port
    if platform.cpu_supports_p2pdma(topo, prof.cpu_amd_zen):
        assert topo.cpu is not None
        via = "cpu"
        why = f"the CPU is AMD Zen or newer (family {topo.cpu.family:#x})"
    else:
        if platform.host_bridge_whitelist(topo, p, c, table, rp):
            via = "whitelist"
        why = platform.host_bridge_reason(topo, p, c, table, rp)
        if any(not topo.host_bridge(n).host_bridge_dev_known for n in {p.host_bridge, c.host_bridge}):
            missing.append(HB_UNKNOWN)
            hints.append(host_bridge_hint(topo, prof))
        if prof.whitelist_warn and (bool(acs_ports) or prof.warn_whitelist_always):
            log.extend(platform.whitelist_warnings(topo, p, c, table, rp))
    if via is not None:
        map_type = MapType.THRU_HOST_BRIDGE
        parts.append(f"allowed through the host bridge: {why}")
    else:
        map_type = MapType.NOT_SUPPORTED
        parts.append(f"not allowed through the host bridge: {why}")
        log.append(prof.log_no_path.format(client=c.bdf, provider=p.bdf))
    reason = "; ".join(parts) + _unknown_text(unknown_ports)
    if missing:
        reason += f"; {HB_UNKNOWN}: the whitelist check is a guess ({hints[0]})"
    return Verdict(
        provider=p.bdf, client=c.bdf, map_type=map_type, distance=distance,
        common=common.bdf if common else None, acs_ports=tuple(acs_ports), unknown_ports=unknown_ports,
        reason=reason, fix=fix, path=tuple(path), ports=tuple(ports), via=via,
        kernel_log=tuple(_driver_prefix(topo, line) for line in log), unknown=tuple(missing), hints=tuple(hints),
    )


def _driver_prefix(topo: Topology, line: str) -> str:
    """A log line as dev_printk() prints it: prefixed by dev_driver_string(), the bound driver's name
    (``nvme 0000:01:00.1: ...``), or the bus name ``pci`` for a device without one (or unknown)."""
    if line.startswith("pci "):
        bdf = line[4:].split(": ", 1)[0]
        if bdf in topo and topo[bdf].driver:
            return f"{topo[bdf].driver} {line[4:]}"
    return line


# Intel family 6 server models -> (name, the host bridge 00:00.0 they are known to carry).
_INTEL_MODELS: dict[int, tuple[str, int]] = {
    0x2D: ("Sandy Bridge-EP", 0x3C00),
    0x3F: ("Haswell-EP", 0x2F00),
    0x55: ("Skylake-SP/Cascade Lake", 0x2020),
    0x6A: ("Ice Lake-SP", 0x09A2),
    0x6C: ("Ice Lake-D", 0x09A2),
    0x8F: ("Sapphire Rapids", 0x09A2),
}


def host_bridge_hint(topo: Topology, prof: KernelProfile) -> str:
    """An informed note on a host bridge the input does not show, from the CPU the input names."""
    cpu = topo.cpu
    tail = "as root, capture the machine to be sure"
    if cpu is None:
        return f"the input names no CPU either; {tail}"
    if cpu.vendor == "GenuineIntel" and cpu.family == 6 and cpu.model in _INTEL_MODELS:
        name, dev = _INTEL_MODELS[cpu.model]
        listed = any(e.vendor == 0x8086 and e.device == dev for e in prof.whitelist)
        state = "is whitelisted" if listed else "is not whitelisted"
        return f"Intel {name}: its host bridge 8086:{dev:04x} {state} in kernel profile {prof.name}; {tail}"
    label = cpu.model_name or f"{cpu.vendor} family {cpu.family:#x} model {cpu.model:#x}"
    return f"{label}: its host bridge device is not known here; {tail}"


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
