"""Terminal renderings: the topology tree, the compact matrix with its legend, a pair's explanation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pdma.p2p import platform
from p2pdma.p2p.decide import MapType, Verdict
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

if TYPE_CHECKING:
    from p2pdma.p2p.matrix import Matrix

MAX_TABLE_COLUMNS = 64


def device_line(d: Device) -> str:
    """One line for a function: BDF, port type, ids and names, link, ACS."""
    parts = [d.bdf]
    if d.port_type_name and (d.is_bridge or d.port_type != cfg.PCI_EXP_TYPE_ENDPOINT):
        parts.append(d.port_type_name + ("?" if d.port_type_inferred else ""))
    ident = f"[{d.vendor:04x}:{d.device:04x}]"
    name = " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x)
    parts.append(f"{name} {ident}" if name else ident)
    if d.physfn:
        parts.append(f"VF of {d.physfn}")
    if d.cur_width or d.max_width:
        speed = d.cur_speed or d.max_speed
        width = d.cur_width or d.max_width
        parts.append(f"x{width} {speed:g}GT/s" if speed else f"x{width}")
    if d.acs is not None:
        parts.append(f"ACS ctrl {d.acs.ctrl:#06x} [{cfg.acs_bits_text(d.acs.ctrl)}]")
    elif not d.acs_known:
        parts.append("ACS unknown")
    if d.driver:
        parts.append(f"driver={d.driver}")
    return "  ".join(parts)


def render_topo(topo: Topology) -> str:
    """The PCI tree under each host bridge, with the whitelist verdict on its host bridge device."""
    lines = [f"machine: {topo.name}" + (f"  kernel {topo.kernel_release}" if topo.kernel_release else "")]
    if topo.cpu:
        zen = "  (AMD Zen: P2P through the host bridge allowed)" if platform.cpu_supports_p2pdma(topo) else ""
        lines.append(f"cpu: {topo.cpu.vendor} family {topo.cpu.family:#x} {topo.cpu.model_name}{zen}")
    lines.extend(platform_lines(topo))
    children: dict[str | None, list[Device]] = {}
    for d in topo.devices:
        if d.is_vf:
            continue
        children.setdefault(d.parent, []).append(d)
    vfs: dict[str, list[Device]] = {}
    for d in topo.devices:
        if d.physfn:
            vfs.setdefault(d.physfn, []).append(d)

    def walk(d: Device, prefix: str, last: bool) -> None:
        lines.append(prefix + ("└─ " if last else "├─ ") + device_line(d))
        kids = children.get(d.bdf, []) if d.is_bridge else []
        sub = vfs.get(d.bdf, [])
        pre = prefix + ("   " if last else "│  ")
        if len(sub) > 4:
            lines.append(pre + f"└─ {len(sub)} VFs {sub[0].bdf} .. {sub[-1].bdf}")
        else:
            for i, v in enumerate(sub):
                lines.append(pre + ("└─ " if i == len(sub) - 1 and not kids else "├─ ") + device_line(v))
        for i, k in enumerate(kids):
            walk(k, pre, i == len(kids) - 1)

    for hb in topo.host_bridges:
        head = f"{hb.name}"
        if hb.host_dev:
            hd = topo[hb.host_dev]
            e = platform.whitelist_entry(hd)
            wl = (
                "not in the P2PDMA whitelist"
                if e is None
                else f"whitelisted ({e.comment}{', same host bridge only' if e.flags else ''})"
            )
            head += f"  host bridge device {hd.bdf} [{hd.vendor:04x}:{hd.device:04x}] {wl}"
        else:
            head += "  no host bridge device (first root-bus device is neither 00.0 nor a Root Port)"
        lines.append(head)
        roots = [topo[b] for b in hb.root_devices if not topo[b].is_vf]
        for i, d in enumerate(roots):
            walk(d, "", i == len(roots) - 1)
    return "\n".join(lines)


CELL = {MapType.BUS_ADDR: "B", MapType.THRU_HOST_BRIDGE: "H", MapType.NOT_SUPPORTED: "-"}


def cell(mt: int, dist: int, certain: bool, same: bool) -> str:
    """Compact cell: ``X`` self, ``B4`` BUS_ADDR at distance 4, ``H8`` through host bridge, ``--``."""
    if same:
        return "X"
    m = MapType(mt)
    text = "--" if m == MapType.NOT_SUPPORTED else f"{CELL[m]}{dist}"
    return text + ("" if certain else "?")


LEGEND = """Legend (row = provider whose memory is reached, column = client that issues the DMA):
  X    the same function
  B<n> BUS_ADDR: routed by PCI bus address below a common upstream bridge, no IOMMU; n = distance
  H<n> THRU_HOST_BRIDGE: through the root complex, mapped like host memory (IOMMU if enabled)
  --   NOT_SUPPORTED: the kernel refuses P2P between them
  ?    ACS unknown on a port of the path (config space unreadable): the verdict may change as root"""


def render_matrix(mat: Matrix) -> str:
    """A table like ``nvidia-smi topo -m``: numbered devices, cells with map type and distance."""
    topo = mat.topo
    n = len(mat.bdfs)
    lines = [f"machine: {topo.name}   kernel rules: {mat.profile}   functions: {n}"]
    for i, b in enumerate(mat.bdfs):
        lines.append(f"  d{i:<3} {device_line(topo[b])}")
    counts = mat.counts()
    if n > MAX_TABLE_COLUMNS:
        lines.append(
            f"{n} functions: too many columns for a table; use --json for every pair."
        )
    else:
        w = max(4, len(f"d{n - 1}") + 1, *(len(cell(int(mat.map_type[i, j]), int(mat.distance[i, j]),
                                                     bool(mat.certain[i, j]), i == j)) + 1
                                          for i in range(n) for j in range(n)))
        lines.append("")
        lines.append(" " * 6 + "".join(f"d{j}".rjust(w) for j in range(n)))
        for i in range(n):
            row = "".join(
                cell(int(mat.map_type[i, j]), int(mat.distance[i, j]), bool(mat.certain[i, j]), i == j).rjust(w)
                for j in range(n)
            )
            lines.append(f"d{i:<4} " + row)
        lines.append("")
        lines.append(LEGEND)
    lines.append(
        "pairs: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; uncertain {int((~mat.certain).sum())}"
    )
    return "\n".join(lines)


def render_explain(topo: Topology, v: Verdict) -> str:
    """The path, each port's ACS verdict, the outcome, the reason, the fix and the kernel's log."""
    lines = [f"provider {v.provider}  ->  client {v.client}", ""]
    lines.append("path (provider up to the common bridge, then down to the client):")
    states = {p.bdf: p for p in v.ports}
    for b in v.path:
        if b not in topo:
            lines.append(f"  {b}  host bridge")
            continue
        d = topo[b]
        pv = states.get(b)
        acs = (
            "ACS unknown (config unreadable)"
            if not d.acs_known
            else "no ACS capability"
            if d.acs is None
            else f"ACS ctrl {d.acs.ctrl:#06x} [{cfg.acs_bits_text(d.acs.ctrl)}]"
        )
        st = f" -> {pv.state.name}" if pv else ""
        tgt = f" (egress target {pv.target})" if pv and pv.target else ""
        mark = "  <- common upstream bridge" if b == v.common else ""
        lines.append(f"  {b}  {d.port_type_name or d.kind}  {acs}{st}{tgt}{mark}")
    lines.append("")
    lines.append(f"map type: {v.map_type.name}   distance: {v.distance}" + ("" if v.certain else "   (uncertain)"))
    lines.append(f"why: {v.reason}")
    if v.fix:
        lines.append(f"fix: add the kernel parameter {v.fix}")
    lines.extend(platform_lines(topo, v))
    if v.kernel_log:
        lines.append("the kernel would log:")
        lines.extend(f"  {x}" for x in v.kernel_log)
    return "\n".join(lines)


def platform_lines(topo: Topology, v: Verdict | None = None) -> list[str]:
    """IOMMU and VM facts for ``topo`` and ``explain``: a guest warning, the IOMMU state, and for a
    ``THRU_HOST_BRIDGE`` pair whether the mapping goes through the IOMMU."""
    from p2pdma.sources.iommu import guest_facts, iommu_from_topology, mapping_text

    out: list[str] = []
    state = iommu_from_topology(topo)
    if v is None and state.active is not None:
        out.append("iommu: " + ("active; " + "; ".join(state.notes) if state.active else "not active"))
    if v is not None and v.map_type == MapType.THRU_HOST_BRIDGE:
        text = mapping_text(state, topo[v.client], v.map_type.name)
        if text:
            out.append(f"iommu: {text}")
    warning = guest_facts(topo).warning()
    if warning:
        out.append(f"warning: {warning}")
    return out
