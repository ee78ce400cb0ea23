"""Graphviz DOT of the PCI tree: a node per host bridge and function, an edge per parent link (with the
physical link), ACS-redirecting ports red, a dotted edge from each PF to its VFs."""

from __future__ import annotations

from p2pdma.p2p import platform
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology
from p2pdma.report.html import REDIRECT_BITS, edge_link

FILL = {
    "root-port": "#3e4c59",
    "switch-upstream": "#627d98",
    "switch-downstream": "#9fb3c8",
    "gpu": "#b2f2bb",
    "net": "#a5d8ff",
    "storage": "#eebefa",
    "accel": "#ffec99",
}


def quote(text: str) -> str:
    """A DOT double-quoted string (backslashes and quotes escaped, newlines as ``\\n``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: str) -> str:
    """A DOT attribute list, every value quoted."""
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in kw.items()) + "]"


def _node(d: Device) -> str:
    """The node statement of a function: label, shape by kind, fill by role or class, ACS mark."""
    lines = [d.bdf]
    if d.is_bridge or d.port_type_name not in (None, "endpoint"):
        lines.append(d.port_type_name or d.kind)
    name = " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x)
    lines.append(f"{name} [{d.vendor:04x}:{d.device:04x}]" if name else f"[{d.vendor:04x}:{d.device:04x}]")
    if d.physfn:
        lines.append(f"VF of {d.physfn}")
    attrs = {"label": "\n".join(lines), "shape": "box" if d.is_bridge else "ellipse", "style": "filled"}
    role = d.port_type_name or ""
    cat = {0x03: "gpu", 0x02: "net", 0x01: "storage", 0x12: "accel"}.get(d.class_code >> 16, "")
    attrs["fillcolor"] = FILL[role] if d.is_bridge and role in FILL else FILL.get(cat, "#f1f3f5")
    if role in ("root-port", "switch-upstream"):
        attrs["fontcolor"] = "white"
    if not d.acs_known:
        attrs["label"] += "\nACS ?"
        attrs["color"] = "#d9480f"
    elif d.acs is not None:
        attrs["label"] += f"\nACS {cfg.acs_bits_text(d.acs.ctrl)}"
        if d.acs.ctrl & REDIRECT_BITS:
            attrs["color"] = "#e03131"
            attrs["penwidth"] = "2.5"
    return f"  {quote(d.bdf)} {_attrs(**attrs)};"


def render_dot(topo: Topology) -> str:
    """The machine as a Graphviz ``digraph`` (render with e.g. ``dot -Tsvg``)."""
    out = [f"digraph {quote(topo.name)} {{"]
    out.append(f"  graph {_attrs(rankdir='LR', fontname='Helvetica', label=f'machine: {topo.name}', labelloc='t')};")
    out.append(f"  node {_attrs(fontname='Helvetica', fontsize='10')};")
    out.append(f"  edge {_attrs(fontname='Helvetica', fontsize='9', color='#7b8794')};")
    for h in topo.host_bridges:
        label = f"{h.name}\nhost bridge"
        if h.host_dev:
            e = platform.whitelist_entry(topo[h.host_dev])
            label += f" {h.host_dev}\n" + ("not in the P2PDMA whitelist" if e is None else f"whitelisted ({e.comment})")
        out.append(f"  {quote(h.name)} {_attrs(label=label, shape='box3d', style='filled', fillcolor='#cbd2d9')};")
    for d in topo.devices:
        out.append(_node(d))
    for d in topo.devices:
        src = d.parent if d.parent is not None else d.host_bridge
        label = edge_link(topo, d)[0] or ""
        out.append(f"  {quote(src)} -> {quote(d.bdf)}" + (f" {_attrs(label=label)}" if label else "") + ";")
    for d in topo.devices:
        if d.physfn is not None and d.physfn in topo:
            out.append(f"  {quote(d.physfn)} -> {quote(d.bdf)} {_attrs(style='dotted', arrowhead='none')};")
    out.append("}")
    return "\n".join(out) + "\n"


__all__ = ["quote", "render_dot"]
