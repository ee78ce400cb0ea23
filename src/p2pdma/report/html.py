"""A self-contained HTML report (inline CSS and JS, one embedded JSON blob): the PCI tree, the P2P
heat map, each pair's reason and fix. Cell classes: see CELL_CLASSES, plus cell-self, cell-uncertain."""

# The matrix travels compactly (map type, distance, certainty and a cause index per cell, base64);
# reasons and fixes are deduplicated into a cause table; the page walks paths from the parent links.

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pdma import __version__
from p2pdma.p2p import platform
from p2pdma.p2p.decide import DEFAULT_PROFILE, MapType
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Device, Topology

DATA_SCHEMA = "p2pdma.report-data/1"
TABLE_MAX = 64  # matrices up to this many functions are an HTML table, larger ones a canvas
COLLAPSE_ABOVE = 150  # trees with more functions start with every switch collapsed

CELL_CLASSES: dict[MapType, str] = {
    MapType.BUS_ADDR: "cell-bus-addr",
    MapType.THRU_HOST_BRIDGE: "cell-thru-host-bridge",
    MapType.NOT_SUPPORTED: "cell-not-supported",
}
# Cell colours as HSL: (hue, saturation %, lightness %, lightness added per hop past 2, text colour).
PALETTE: dict[MapType, tuple[int, int, int, int, str]] = {
    MapType.BUS_ADDR: (145, 55, 30, 3, "#ffffff"),
    MapType.THRU_HOST_BRIDGE: (38, 90, 52, 3, "#2b2100"),
    MapType.NOT_SUPPORTED: (0, 50, 82, 0, "#7a1f1f"),
}
SHADE_MAX = 24
REDIRECT_BITS = cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_EC


@dataclass(frozen=True, slots=True)
class Cause:
    """What a group of pairs shares: the kernel's reason, the fix, the ports whose ACS decided."""

    reason: str
    fix: str | None
    acs_ports: tuple[str, ...]


def pair_causes(mat: Matrix) -> tuple[npt.NDArray[np.int64], list[Cause]]:
    """A cause index per cell and the deduplicated causes, without computing a Verdict for every pair."""
    # Pairs below one root-bus device get their own verdict. Pairs below different ones share no
    # upstream bridge: their reason and fix depend only on the two host bridges, so one verdict per
    # pair of host bridges serves them all (tests/report/test_html.py checks this pair by pair).
    topo = mat.topo
    n = len(mat.bdfs)
    out = np.full((n, n), -1, dtype=np.int64)
    causes: list[Cause] = []
    index: dict[Cause, int] = {}

    def intern(i: int, j: int) -> int:
        """The index of pair (i, j)'s cause, added when new."""
        v = mat.verdict(i, j)
        c = Cause(v.reason, v.fix, v.acs_ports)
        if c not in index:
            index[c] = len(causes)
            causes.append(c)
        return index[c]

    tops = [topo.chain(b)[-1].bdf for b in mat.bdfs]
    top_ids = {t: k for k, t in enumerate(dict.fromkeys(tops))}
    top = np.array([top_ids[t] for t in tops], dtype=np.int64)
    for t in range(len(top_ids)):
        members = np.flatnonzero(top == t)
        for i in members:
            for j in members:
                out[i, j] = intern(int(i), int(j))
    hb_ids = {h.name: k for k, h in enumerate(topo.host_bridges)}
    hb = np.array([hb_ids[topo[b].host_bridge] for b in mat.bdfs], dtype=np.int64)
    for a in np.unique(hb):
        rows = np.flatnonzero(hb == a)
        for b in np.unique(hb):
            cols = np.flatnonzero(hb == b)
            apart = top[rows][:, None] != top[cols][None, :]
            if not apart.any():
                continue
            r, c = np.argwhere(apart)[0]
            k = intern(int(rows[r]), int(cols[c]))
            block = out[np.ix_(rows, cols)]
            block[apart] = k
            out[np.ix_(rows, cols)] = block
    assert (out >= 0).all(), "every pair has a cause"
    return out, causes


def _b64(arr: npt.NDArray[Any]) -> str:
    """The array's bytes as base64 text."""
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def _uint(values: npt.NDArray[np.int64]) -> tuple[str, int]:
    """Little-endian unsigned integers, 1, 2 or 4 bytes each (whatever the largest value needs)."""
    top = int(values.max()) if values.size else 0
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4
    return _b64(values.astype(f"<u{width}")), width


def _category(d: Device) -> str:
    """What the tree draws a function as: bridge, gpu, net, storage, accel or other (from its class)."""
    if d.is_bridge:
        return "bridge"
    base = d.class_code >> 16
    return {0x03: "gpu", 0x02: "net", 0x01: "storage", 0x12: "accel", 0x06: "bridge"}.get(base, "other")


def _link(d: Device) -> tuple[str | None, str | None, bool]:
    """Link label (current speed/width), a longer title, and whether it trains below capability."""
    width = d.cur_width or d.max_width
    speed = d.cur_speed or d.max_speed
    if not width and not speed:
        return None, None, False
    label = f"x{width} {speed:g}GT/s" if width and speed else f"x{width}" if width else f"{speed:g}GT/s"
    cap = f"x{d.max_width} {d.max_speed:g}GT/s" if d.max_width and d.max_speed else None
    degraded = bool(
        d.cur_width and d.max_width and d.cur_width < d.max_width
        or d.cur_speed and d.max_speed and d.cur_speed < d.max_speed
    )
    title = f"link {label}" + (f", capable of {cap}" if cap and degraded else "")
    return label, title, degraded


# Ports whose link status describes the link below them: the edge into them is inside a chip.
DOWNSTREAM_FACING = ("root-port", "switch-downstream", "rc-endpoint", "rc-event-collector")


def edge_link(topo: Topology, d: Device) -> tuple[str | None, str | None, bool]:
    """The physical link on the edge from ``d``'s parent to ``d`` (none inside a root complex or switch)."""
    if d.port_type_name in DOWNSTREAM_FACING or (d.parent is None and d.is_bridge):
        return None, None, False
    own = _link(d)
    if own[0] is None and d.parent is not None:
        return _link(topo[d.parent])
    return own


def _device(topo: Topology, d: Device, ep: int, hb_ids: dict[str, int]) -> dict[str, Any]:
    """One function for the page: parent index, role, names, links, ACS, matrix index (or -1)."""
    label, title, _ = _link(d)
    edge, edge_title, degraded = edge_link(topo, d)
    if not d.acs_known:
        acs: str | None = "?"
    elif d.acs is None:
        acs = None
    else:
        acs = cfg.acs_bits_text(d.acs.ctrl)
    return {
        "bdf": d.bdf,
        "parent": topo.index[d.parent] if d.parent is not None else -1,
        "hb": hb_ids[d.host_bridge],
        "role": d.port_type_name or d.kind,
        "bridge": d.is_bridge,
        "cat": _category(d),
        "ids": f"{d.vendor:04x}:{d.device:04x}",
        "name": " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x) or None,
        "physfn": topo.index[d.physfn] if d.physfn is not None and d.physfn in topo else -1,
        "link": label,
        "link_title": title,
        "edge_link": edge,
        "edge_title": edge_title,
        "degraded": degraded,
        "acs": acs,
        "acs_ctrl": None if d.acs is None else f"{d.acs.ctrl:#06x}",
        "acs_redir": bool(d.acs is not None and d.acs.ctrl & REDIRECT_BITS),
        "driver": d.driver,
        "ep": ep,
    }


def _host_bridge(topo: Topology, k: int) -> dict[str, Any]:
    """One host bridge for the page, with the P2PDMA whitelist verdict on its host bridge device."""
    h = topo.host_bridges[k]
    if h.host_dev is None:
        return {"name": h.name, "host_dev": None, "whitelist": "no host bridge device", "ok": False}
    e = platform.whitelist_entry(topo[h.host_dev])
    dev = topo[h.host_dev]
    text = (
        "not in the P2PDMA whitelist"
        if e is None
        else f"whitelisted ({e.comment}{', same host bridge only' if e.flags else ''})"
    )
    return {"name": h.name, "host_dev": h.host_dev, "ids": f"{dev.vendor:04x}:{dev.device:04x}",
            "whitelist": text, "ok": e is not None}


def report_data(topo: Topology, profile: str = DEFAULT_PROFILE, mat: Matrix | None = None) -> dict[str, Any]:
    """The JSON blob the page reads: devices with parent links, host bridges, the compact matrix."""
    if mat is None:
        mat = compute_matrix(topo, profile)
    hb_ids = {h.name: k for k, h in enumerate(topo.host_bridges)}
    ep_of = {b: i for i, b in enumerate(mat.bdfs)}
    causes_idx, causes = pair_causes(mat)
    dist, dist_w = _uint(mat.distance.astype(np.int64).clip(0))
    cause, cause_w = _uint(causes_idx)
    cpu = None
    if topo.cpu is not None:
        zen = " (AMD Zen: P2P through the host bridge allowed)" if platform.cpu_supports_p2pdma(topo) else ""
        cpu = f"{topo.cpu.vendor} family {topo.cpu.family:#x} {topo.cpu.model_name}{zen}".strip()
    return {
        "schema": DATA_SCHEMA,
        "generator": f"p2pdma {__version__}",
        "machine": topo.name,
        "kernel": profile,
        "kernel_release": topo.kernel_release,
        "source": topo.source,
        "cpu": cpu,
        "warnings": list(topo.warnings),
        "host_bridges": [_host_bridge(topo, k) for k in range(len(topo.host_bridges))],
        "devices": [_device(topo, d, ep_of.get(d.bdf, -1), hb_ids) for d in topo.devices],
        "endpoints": [topo.index[b] for b in mat.bdfs],
        "counts": mat.counts(),
        "uncertain": int((~mat.certain).sum()),
        "matrix": {
            "n": len(mat.bdfs),
            "map_type": _b64(mat.map_type.astype("<u1")),
            "distance": dist,
            "distance_bytes": dist_w,
            "certain": _b64(mat.certain.astype("<u1")),
            "cause": cause,
            "cause_bytes": cause_w,
        },
        "causes": [[c.reason, c.fix, [topo.index[b] for b in c.acs_ports if b in topo]] for c in causes],
        "palette": {
            str(int(m)): {"cls": CELL_CLASSES[m], "h": p[0], "s": p[1], "l": p[2], "step": p[3], "text": p[4]}
            for m, p in PALETTE.items()
        },
        "shade_max": SHADE_MAX,
        "table_max": TABLE_MAX,
        "collapse_above": COLLAPSE_ABOVE,
    }


def _palette_css() -> str:
    """The cell colour classes as CSS, lightness shifted by the cell's ``--shade`` (distance)."""
    rules = []
    for m, (h, s, light, _, text) in PALETTE.items():
        rules.append(
            f".{CELL_CLASSES[m]} {{ background: hsl({h} {s}% calc({light}% + var(--shade, 0) * 1%));"
            f" color: {text}; }}"
        )
        rules.append(f".swatch.{CELL_CLASSES[m]} {{ background: hsl({h} {s}% {light + 6}%); }}")
    return "\n".join(rules)


def _json_for_script(doc: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no ``</script>``, no ``<!--``)."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def _esc(text: str) -> str:
    """Text escaped for HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_html(topo: Topology, profile: str = DEFAULT_PROFILE, mat: Matrix | None = None) -> str:
    """The whole report as one HTML document (inline CSS and JS, embedded JSON data)."""
    data = report_data(topo, profile, mat)
    return (
        _PAGE.replace("__TITLE__", _esc(f"p2pdma report: {topo.name} ({profile})"))
        .replace("__CSS__", _CSS + "\n" + _palette_css())
        .replace("__JS__", _JS)
        .replace("__DATA__", _json_for_script(data))
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
__CSS__
</style>
<script>
window.p2pdmaErrors = [];
window.addEventListener('error', function (e) {
  window.p2pdmaErrors.push(String(e.message));
  var s = document.getElementById('summary');
  if (s) { s.setAttribute('data-errors', String(window.p2pdmaErrors.length)); }
});
</script>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div id="machine-line"></div>
  <div id="summary" data-ready="0" data-errors="0"></div>
  <div id="legend"></div>
</header>
<main>
  <section id="tree-panel" class="panel">
    <div class="panel-head">
      <h2>PCI tree</h2>
      <button id="expand-all" type="button">expand all</button>
      <button id="collapse-switches" type="button">collapse switches</button>
      <span id="tree-hint" class="hint">click a switch's marker to fold it; click two endpoints for a pair</span>
    </div>
    <div id="tree-scroll"><svg id="tree" xmlns="http://www.w3.org/2000/svg"></svg></div>
  </section>
  <section id="right">
    <section id="details" class="panel" data-state="none">
      <div class="panel-head"><h2>Pair</h2>
        <form id="pair-form"><input id="pair-input" placeholder="provider client (BDFs)" size="30">
        <button type="submit">show</button></form>
      </div>
      <div id="details-body"><p class="hint">Hover over or click a cell of the matrix.</p></div>
    </section>
    <section id="matrix-panel" class="panel">
      <div class="panel-head"><h2>P2P matrix</h2>
        <span class="hint">row = provider (memory reached), column = client (issues the DMA)</span>
        <span id="zoom-box" hidden><label>cell <input id="zoom" type="range" min="1" max="24" value="2">
        <span id="zoom-value"></span> px</label></span>
      </div>
      <div id="matrix-holder"></div>
    </section>
    <section id="causes-panel" class="panel">
      <div class="panel-head"><h2>Pairs that do not go direct, by cause</h2></div>
      <div id="causes"></div>
    </section>
  </section>
</main>
<div id="tooltip" hidden></div>
<div id="probes" hidden></div>
<script type="application/json" id="p2pdma-data">__DATA__</script>
<script>
__JS__
</script>
</body>
</html>
"""

_CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d232a;
  background: #eef1f4; }
header { padding: 10px 16px 8px; background: #1f2933; color: #f5f7fa; }
header h1 { margin: 0 0 2px; font-size: 18px; font-weight: 600; }
#machine-line { color: #cbd2d9; }
#summary { margin-top: 4px; }
#summary .count { margin-right: 14px; }
#legend { margin-top: 6px; display: flex; flex-wrap: wrap; gap: 14px; color: #cbd2d9; }
#legend .item { display: inline-flex; align-items: center; gap: 5px; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; border: 1px solid #0003; }
.swatch.cell-self { background: #52606d; }
main { display: flex; gap: 12px; padding: 12px; align-items: flex-start; flex-wrap: wrap; }
.panel { background: #fff; border: 1px solid #d3d9de; border-radius: 6px; }
.panel-head { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; padding: 6px 10px;
  border-bottom: 1px solid #e4e7eb; }
.panel-head h2 { margin: 0; font-size: 14px; font-weight: 600; }
.hint { color: #7b8794; font-size: 12px; }
button { font: inherit; font-size: 12px; padding: 1px 8px; border: 1px solid #bcccdc; border-radius: 4px;
  background: #f5f7fa; cursor: pointer; }
button:hover { background: #e4e7eb; }
#tree-panel { flex: 1 1 520px; min-width: 380px; }
#tree-scroll { overflow: auto; max-height: calc(100vh - 150px); min-height: 200px; }
#right { flex: 1.25 1 600px; min-width: 420px; display: flex; flex-direction: column; gap: 12px; }
#details-body { padding: 8px 10px; min-height: 150px; }
#details-body .row { margin: 3px 0; }
#details-body .key { display: inline-block; min-width: 54px; color: #52606d; font-weight: 600; }
#details-body code, #causes code { font: 12px ui-monospace, 'DejaVu Sans Mono', monospace; background: #f0f4f8;
  padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-weight: 600; font-size: 12px; }
.mono { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
#matrix-holder { padding: 8px; overflow: auto; max-height: calc(100vh - 150px); }
table.matrix { border-collapse: separate; border-spacing: 2px; font-size: 11px; }
table.matrix th { font-weight: 500; color: #3e4c59; white-space: nowrap; }
table.matrix thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 2px 0;
  font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
table.matrix tbody th { text-align: left; padding-right: 6px; max-width: 230px; overflow: hidden;
  text-overflow: ellipsis; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
table.matrix th.hl { background: #fff3bf; }
td.cell { width: 27px; min-width: 27px; height: 22px; text-align: center; font-weight: 600; border-radius: 3px;
  cursor: pointer; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
td.cell.cell-self, .cell-self { background: #52606d; color: #cbd2d9; }
td.cell:hover { outline: 2px solid #1f2933; }
td.cell.selected { outline: 3px solid #1c7ed6; outline-offset: 0; }
.cell-uncertain { background-image: repeating-linear-gradient(45deg, #ffffff66 0 2px, transparent 2px 6px); }
#heat-scroll { position: relative; overflow: auto; height: min(75vh, 900px); border: 1px solid #e4e7eb; }
#heatmap { position: sticky; top: 0; left: 0; display: block; cursor: crosshair; }
#tooltip { position: fixed; z-index: 10; pointer-events: none; background: #1f2933; color: #f5f7fa;
  padding: 4px 8px; border-radius: 4px; font-size: 12px; max-width: 520px; }
#causes { padding: 6px 10px 10px; max-height: 340px; overflow: auto; }
#causes table { border-collapse: collapse; width: 100%; font-size: 12px; }
#causes td, #causes th { border-bottom: 1px solid #e4e7eb; padding: 3px 6px; text-align: left;
  vertical-align: top; }
#causes tr.cause { cursor: pointer; }
#causes tr.cause:hover { background: #f0f4f8; }
svg#tree { display: block; font: 12px ui-monospace, 'DejaVu Sans Mono', monospace; }
svg#tree .edge { fill: none; stroke: #9aa5b1; stroke-width: 1.3; }
svg#tree .edge.on-path { stroke: #e8590c; stroke-width: 3.2; }
svg#tree .link-label { font: 10px system-ui, sans-serif; fill: #7b8794; }
svg#tree .link-label.degraded { fill: #d9480f; font-weight: 600; }
svg#tree .link-label.on-path { fill: #c2410c; }
svg#tree .node-bg { fill: transparent; stroke: none; }
svg#tree g.device-node:hover .node-bg, svg#tree g.hostbridge-node:hover .node-bg { fill: #f0f4f8; }
svg#tree .on-path .node-bg { fill: #fff3bf; }
svg#tree .provider .node-bg { fill: #d0ebff; stroke: #1c7ed6; }
svg#tree .client .node-bg { fill: #d3f9d8; stroke: #2b8a3e; }
svg#tree .pending .node-bg { fill: #d0ebff; stroke: #1c7ed6; stroke-dasharray: 3 2; }
svg#tree .acs-culprit .node-bg { fill: #ffe3e3; stroke: #e03131; stroke-width: 1.5; }
svg#tree .glyph { stroke: #1f2933; stroke-width: 1; }
svg#tree .g-hb { fill: #1f2933; }
svg#tree .g-root-port { fill: #3e4c59; }
svg#tree .g-switch-upstream { fill: #627d98; }
svg#tree .g-switch-downstream { fill: #9fb3c8; }
svg#tree .g-bridge { fill: #bcccdc; }
svg#tree .g-gpu { fill: #37b24d; }
svg#tree .g-net { fill: #1c7ed6; }
svg#tree .g-storage { fill: #ae3ec9; }
svg#tree .g-accel { fill: #f59f00; }
svg#tree .g-other { fill: #adb5bd; }
svg#tree .has-kids .glyph { cursor: pointer; }
svg#tree .collapsed .glyph { stroke: #e8590c; stroke-width: 2; }
svg#tree .acs-redir-port .glyph { stroke: #e03131; stroke-width: 2.2; }
svg#tree .bdf { font-weight: 700; fill: #1f2933; }
svg#tree .ptype { fill: #52606d; }
svg#tree .dname { fill: #3e4c59; font-family: system-ui, sans-serif; }
svg#tree .acs { font-family: system-ui, sans-serif; font-size: 11px; font-weight: 600; }
svg#tree .acs-redir { fill: #e03131; }
svg#tree .acs-clear { fill: #7b8794; }
svg#tree .acs-unknown { fill: #d9480f; }
svg#tree .hb-ok { fill: #2b8a3e; font-family: system-ui, sans-serif; }
svg#tree .hb-no { fill: #c92a2a; font-family: system-ui, sans-serif; }
svg#tree .more { fill: #e8590c; font-family: system-ui, sans-serif; font-weight: 600; cursor: pointer; }
svg#tree g { cursor: default; }
svg#tree g.endpoint-node { cursor: pointer; }
"""

_JS = r"""
'use strict';
(function () {
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById('p2pdma-data').textContent);
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const MT_NAME = {2: 'NOT_SUPPORTED', 3: 'BUS_ADDR', 4: 'THRU_HOST_BRIDGE'};
  const PAL = D.palette;
  const devs = D.devices, hbs = D.host_bridges, eps = D.endpoints;
  const N = D.matrix.n;

  function bytesOf(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function intsOf(s, width) {
    const b = bytesOf(s);
    if (width === 1) return b;
    const n = b.length / width;
    const out = width === 2 ? new Uint16Array(n) : new Uint32Array(n);
    for (let i = 0, k = 0; i < n; i++, k += width) {
      let v = 0;
      for (let w = width - 1; w >= 0; w--) v = v * 256 + b[k + w];
      out[i] = v;
    }
    return out;
  }
  const MT = intsOf(D.matrix.map_type, 1);
  const DIST = intsOf(D.matrix.distance, D.matrix.distance_bytes);
  const CERT = intsOf(D.matrix.certain, 1);
  const CAUSE = intsOf(D.matrix.cause, D.matrix.cause_bytes);
  const byBdf = new Map();
  devs.forEach((d, k) => byBdf.set(d.bdf, k));

  function el(tag, attrs, parent, svg) {
    const e = svg ? document.createElementNS(SVGNS, tag) : document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function sel(tag, attrs, parent) { return el(tag, attrs, parent, true); }
  function text(parent, s, cls) {
    const t = sel('tspan', cls ? {class: cls} : null, parent);
    t.textContent = s;
    return t;
  }
  function shortBdf(b) { return b.startsWith('0000:') ? b.slice(5) : b; }
  function devName(k) { const d = devs[k]; return d.name || d.ids; }

  // ---- cells ----
  function shade(mt, dist) {
    const p = PAL[mt];
    return p ? Math.min(D.shade_max, Math.max(0, dist - 2) * p.step) : 0;
  }
  function cell(i, j) {
    const k = i * N + j, mt = MT[k], c = D.causes[CAUSE[k]];
    return {
      i: i, j: j, provider: devs[eps[i]].bdf, client: devs[eps[j]].bdf, mapType: MT_NAME[mt] || String(mt),
      cls: PAL[mt] ? PAL[mt].cls : 'cell-unknown', distance: DIST[k], certain: CERT[k] === 1, self: i === j,
      reason: c[0], fix: c[1], acsPorts: c[2],
    };
  }
  function cellText(c) {
    if (c.self) return 'X';
    const t = c.mapType === 'NOT_SUPPORTED' ? '\u2013' : String(c.distance);
    return c.certain ? t : t + '?';
  }
  function classesOf(c) {
    return 'cell ' + c.cls + (c.self ? ' cell-self' : '') + (c.certain ? '' : ' cell-uncertain');
  }

  // ---- the path, as calc_map_type_and_dist() walks it ----
  function chainOf(k) { const out = []; for (let c = k; c >= 0; c = devs[c].parent) out.push(c); return out; }
  function pairPath(pk, ck) {
    const cp = chainOf(pk), cc = chainOf(ck);
    const posC = new Map(cc.map((x, i) => [x, i]));
    const up = [];
    let common = -1;
    for (const x of cp) { up.push(x); if (posC.has(x)) { common = x; break; } }
    const down = common >= 0 ? cc.slice(0, posC.get(common)) : cc.slice();
    const hbOn = common >= 0 ? [] : Array.from(new Set([devs[pk].hb, devs[ck].hb]));
    return {up: up, down: down.reverse(), hbs: hbOn, common: common};
  }

  // ---- header ----
  $('title').textContent = 'p2pdma: ' + D.machine;
  document.title = 'p2pdma report: ' + D.machine + ' (' + D.kernel + ')';
  const ml = [];
  ml.push('kernel rules: ' + D.kernel);
  if (D.kernel_release) ml.push('kernel ' + D.kernel_release);
  if (D.cpu) ml.push('cpu: ' + D.cpu);
  if (D.source) ml.push('source: ' + D.source);
  ml.push(D.generator);
  $('machine-line').textContent = ml.join('   \u00b7   ');
  const summary = $('summary');
  const counts = [
    [devs.length + ' functions'], [hbs.length + ' host bridges'], [N + ' endpoints in the matrix'],
    [D.counts.BUS_ADDR + ' BUS_ADDR'], [D.counts.THRU_HOST_BRIDGE + ' THRU_HOST_BRIDGE'],
    [D.counts.NOT_SUPPORTED + ' NOT_SUPPORTED'], [D.uncertain + ' uncertain'],
  ];
  for (const c of counts) { const s = el('span', {class: 'count'}, summary); s.textContent = c[0]; }
  if (D.warnings.length) {
    const s = el('span', {class: 'count', title: D.warnings.join('\n')}, summary);
    s.textContent = '\u26a0 ' + D.warnings.length + ' warnings (hover)';
  }
  const legend = $('legend');
  const legendItems = [
    ['cell-bus-addr', 'BUS_ADDR: direct below a common switch, by bus address (number = distance)'],
    ['cell-thru-host-bridge', 'THRU_HOST_BRIDGE: through the root complex'],
    ['cell-not-supported', 'NOT_SUPPORTED: refused'],
    ['cell-self', 'the same function'],
  ];
  for (const it of legendItems) {
    const s = el('span', {class: 'item'}, legend);
    el('span', {class: 'swatch ' + it[0]}, s);
    el('span', null, s).textContent = it[1];
  }
  el('span', {class: 'item'}, legend).textContent = '? = ACS unknown on the path; ports with ACS redirect ringed red';

  // ---- the tree ----
  const ROW = 22, IND = 84, PAD = 14;
  const svg = $('tree');
  const edgeLayer = sel('g', {class: 'edges'}, svg);
  const nodeLayer = sel('g', {class: 'nodes'}, svg);
  const nodes = [];  // host bridges first, then devices in device order
  const HB0 = 0, DEV0 = hbs.length;
  hbs.forEach((h, k) => nodes.push({hb: k, dev: -1, parent: -1, kids: [], collapsed: false}));
  devs.forEach((d, k) => nodes.push({hb: -1, dev: k, parent: d.parent >= 0 ? DEV0 + d.parent : HB0 + d.hb,
    kids: [], collapsed: false}));
  for (let id = DEV0; id < nodes.length; id++) nodes[nodes[id].parent].kids.push(id);
  const ROLE_LABEL = {
    'root-port': 'root port', 'switch-upstream': 'switch \u2191', 'switch-downstream': 'switch \u2193',
    'rc-endpoint': 'RCiEP', 'pcie-to-pci': 'PCIe-PCI bridge', 'pci-to-pcie': 'PCI-PCIe bridge',
    'rc-event-collector': 'RC event collector', 'legacy-endpoint': 'legacy endpoint', 'bridge': 'bridge'};

  function glyph(g, cls, role) {
    if (role === 'hb') return sel('rect', {class: 'glyph ' + cls, x: -7, y: -7, width: 14, height: 14, rx: 2}, g);
    if (role === 'root-port') return sel('polygon', {class: 'glyph ' + cls, points: '0,-8 8,0 0,8 -8,0'}, g);
    if (role === 'switch-upstream') return sel('rect', {class: 'glyph ' + cls, x: -7, y: -6, width: 14, height: 12}, g);
    if (role === 'switch-downstream' || role === 'bridge' || role.indexOf('pci') === 0) {
      return sel('rect', {class: 'glyph ' + cls, x: -5, y: -5, width: 10, height: 10}, g);
    }
    return sel('circle', {class: 'glyph ' + cls, r: 6}, g);
  }

  nodes.forEach((nd, id) => {
    const g = sel('g', null, nodeLayer);
    nd.g = g;
    nd.bg = sel('rect', {class: 'node-bg', x: -10, y: -ROW / 2 + 1, height: ROW - 2, rx: 4}, g);
    const t = sel('text', {x: 13, y: 4}, g);
    if (nd.hb >= 0) {
      const h = hbs[nd.hb];
      g.setAttribute('class', 'hostbridge-node');
      g.setAttribute('data-name', h.name);
      nd.glyph = glyph(g, 'g-hb', 'hb');
      text(t, h.name, 'bdf');
      text(t, '  host bridge' + (h.host_dev ? ' ' + h.ids + ' at ' + shortBdf(h.host_dev) : ''), 'ptype');
      text(t, '  ' + h.whitelist, h.ok ? 'hb-ok' : 'hb-no');
    } else {
      const d = devs[nd.dev];
      const cls = ['device-node', 'role-' + d.role];
      if (!d.bridge) cls.push('endpoint-node');
      if (d.acs_redir) cls.push('acs-redir-port');
      g.setAttribute('class', cls.join(' '));
      g.setAttribute('data-bdf', d.bdf);
      g.setAttribute('data-role', d.role);
      if (d.ep >= 0) g.setAttribute('data-endpoint', String(d.ep));
      if (d.acs !== null) g.setAttribute('data-acs', d.acs);
      nd.glyph = glyph(g, d.bridge ? 'g-' + (ROLE_LABEL[d.role] ? d.role : 'bridge') : 'g-' + d.cat, d.role);
      text(t, shortBdf(d.bdf), 'bdf');
      const rl = ROLE_LABEL[d.role];
      if (rl) text(t, ' ' + rl, 'ptype');
      if (d.physfn >= 0) text(t, ' VF of ' + shortBdf(devs[d.physfn].bdf), 'ptype');
      if (!d.bridge || !rl) text(t, ' ' + devName(nd.dev), 'dname');
      if (d.acs !== null) {
        const kind = d.acs === '?' ? 'acs-unknown' : d.acs_redir ? 'acs-redir' : 'acs-clear';
        const label = d.acs === '?' ? '  ACS ?' : '  ACS ' + d.acs;
        const a = text(t, label, 'acs ' + kind);
        a.appendChild(sel('title', null)).textContent = d.acs === '?' ? 'ACS unknown: config space unreadable'
          : 'ACS control ' + d.acs_ctrl + ' [' + d.acs + ']';
      }
      const tip = [d.bdf + '  ' + d.ids + (d.name ? '  ' + d.name : ''), 'type: ' + d.role];
      if (d.link_title) tip.push(d.link_title);
      if (d.driver) tip.push('driver: ' + d.driver);
      sel('title', null, g).textContent = tip.join('\n');
    }
    nd.text = t;
    if (nd.kids.length) {
      g.classList.add('has-kids');
      nd.more = sel('text', {class: 'more', y: 4}, g);
      nd.glyph.addEventListener('click', (e) => { e.stopPropagation(); toggle(id); });
      nd.more.addEventListener('click', (e) => { e.stopPropagation(); toggle(id); });
    }
    if (nd.parent >= 0) {
      nd.edge = sel('path', {class: 'edge'}, edgeLayer);
      const d = nd.dev >= 0 ? devs[nd.dev] : null;
      if (d && d.edge_link) {
        nd.label = sel('text', {class: 'link-label' + (d.degraded ? ' degraded' : '')}, edgeLayer);
        nd.label.textContent = d.edge_link;
        sel('title', null, nd.label).textContent = d.edge_title;
      }
    }
  });
  // measure every label once (all visible), then lay out
  const widths = nodes.map((nd) => nd.text.getComputedTextLength());
  nodes.forEach((nd, id) => {
    nd.w = widths[id] + 13;
    nd.bg.setAttribute('width', String(nd.w + 16));
    if (nd.more) nd.more.setAttribute('x', String(nd.w + 10));
  });

  function countBelow(id) { let c = 0; for (const k of nodes[id].kids) c += 1 + countBelow(k); return c; }
  function layout() {
    let row = 0, maxX = 0;
    const stack = [];
    for (let id = hbs.length - 1; id >= 0; id--) stack.push([id, 0, true]);
    const shown = new Uint8Array(nodes.length);
    while (stack.length) {
      const [id, depth, vis] = stack.pop();
      const nd = nodes[id];
      if (vis) {
        nd.x = PAD + 8 + depth * IND;
        nd.y = PAD + row * ROW + ROW / 2;
        row++;
        shown[id] = 1;
        nd.g.setAttribute('transform', 'translate(' + nd.x + ',' + nd.y + ')');
        maxX = Math.max(maxX, nd.x + nd.w + (nd.collapsed ? 70 : 24));
        if (nd.more) nd.more.textContent = nd.collapsed ? '\u25b8 +' + countBelow(id) : '';
        nd.g.classList.toggle('collapsed', nd.collapsed);
      }
      for (let i = nd.kids.length - 1; i >= 0; i--) stack.push([nd.kids[i], depth + 1, vis && !nd.collapsed]);
    }
    nodes.forEach((nd, id) => {
      const on = shown[id] === 1;
      nd.g.style.display = on ? '' : 'none';
      if (nd.edge) {
        nd.edge.style.display = on ? '' : 'none';
        if (on) {
          const p = nodes[nd.parent];
          nd.edge.setAttribute('d', 'M' + p.x + ',' + (p.y + 7) + 'V' + nd.y + 'H' + (nd.x - 8));
        }
      }
      if (nd.label) {
        nd.label.style.display = on ? '' : 'none';
        if (on) {
          nd.label.setAttribute('x', String(nodes[nd.parent].x + 11));
          nd.label.setAttribute('y', String(nd.y - 4));
        }
      }
    });
    svg.setAttribute('width', String(Math.ceil(maxX + PAD)));
    svg.setAttribute('height', String(PAD * 2 + row * ROW));
  }
  function toggle(id) { nodes[id].collapsed = !nodes[id].collapsed; layout(); }
  function collapseSwitches() {
    nodes.forEach((nd) => {
      nd.collapsed = nd.dev >= 0 && devs[nd.dev].role === 'switch-upstream' && nd.kids.length > 0;
    });
    layout();
  }
  $('expand-all').addEventListener('click', () => { nodes.forEach((nd) => { nd.collapsed = false; }); layout(); });
  $('collapse-switches').addEventListener('click', collapseSwitches);
  function reveal(id) {
    let changed = false;
    for (let p = nodes[id].parent; p >= 0; p = nodes[p].parent) {
      if (nodes[p].collapsed) { nodes[p].collapsed = false; changed = true; }
    }
    return changed;
  }

  // ---- highlighting a pair ----
  let marked = [];
  function mark(e, cls) { e.classList.add(cls); marked.push([e, cls]); }
  function clearMarks() { for (const [e, cls] of marked) e.classList.remove(cls); marked = []; }
  let pinned = null, shownKey = '';

  function showPair(i, j, pin) {
    const c = cell(i, j);
    if (pin) pinned = [i, j];
    const key = i + ',' + j + (pin ? 'p' : '');
    if (key === shownKey) return c;
    shownKey = key;
    const pk = eps[i], ck = eps[j];
    const path = pairPath(pk, ck);
    clearMarks();
    const onPath = new Set();
    for (const k of path.up.concat(path.down)) onPath.add(DEV0 + k);
    for (const h of path.hbs) onPath.add(HB0 + h);
    if (pin) {
      let changed = false;
      for (const id of onPath) changed = reveal(id) || changed;
      if (changed) layout();
    }
    for (const id of onPath) {
      const nd = nodes[id];
      mark(nd.g, 'on-path');
      if (nd.edge && onPath.has(nd.parent)) {
        mark(nd.edge, 'on-path');
        edgeLayer.appendChild(nd.edge);  // above the grey edges of its siblings
        if (nd.label) mark(nd.label, 'on-path');
      }
    }
    for (const k of c.acsPorts) mark(nodes[DEV0 + k].g, 'acs-culprit');
    mark(nodes[DEV0 + pk].g, 'provider');
    mark(nodes[DEV0 + ck].g, 'client');
    fillDetails(c, path);
    markMatrix(c, pin);
    if (pin) {
      const nd = nodes[DEV0 + pk], box = $('tree-scroll');
      box.scrollTop = Math.max(0, nd.y - box.clientHeight / 3);
    }
    return c;
  }
  function restorePinned() {
    if (pinned) showPair(pinned[0], pinned[1], false);
  }

  function fillDetails(c, path) {
    const box = $('details-body');
    const det = $('details');
    det.setAttribute('data-state', 'pair');
    det.setAttribute('data-provider', c.provider);
    det.setAttribute('data-client', c.client);
    det.setAttribute('data-map-type', c.mapType);
    det.setAttribute('data-class', c.cls);
    det.setAttribute('data-distance', String(c.distance));
    box.textContent = '';
    const head = el('div', {class: 'row'}, box);
    const pb = el('b', {class: 'mono'}, head); pb.textContent = c.provider;
    el('span', null, head).textContent = ' ' + devName(eps[c.i]) + '  \u2192  ';
    const cb = el('b', {class: 'mono'}, head); cb.textContent = c.client;
    el('span', null, head).textContent = ' ' + devName(eps[c.j]) + '  ';
    const badge = el('span', {class: 'badge ' + c.cls, id: 'detail-type'}, head);
    badge.textContent = c.self ? 'same function' : c.mapType;
    const meta = el('div', {class: 'row'}, box);
    meta.textContent = 'distance ' + c.distance + (c.certain ? '' : '   (uncertain: ACS unreadable on the path)');
    const why = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, why).textContent = 'why';
    el('span', {id: 'detail-reason'}, why).textContent = c.reason;
    const fix = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, fix).textContent = 'fix';
    if (c.fix) {
      el('span', null, fix).textContent = 'add the kernel parameter ';
      el('code', {id: 'detail-fix'}, fix).textContent = c.fix;
      const btn = el('button', {type: 'button'}, fix);
      btn.textContent = 'copy';
      btn.addEventListener('click', () => copyText(c.fix));
    } else {
      el('span', {id: 'detail-fix', class: 'hint'}, fix).textContent = c.mapType === 'BUS_ADDR'
        ? 'none needed' : 'none from ACS: the host bridge / CPU rules decide this pair';
    }
    const pr = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, pr).textContent = 'path';
    const parts = path.up.map((k) => shortBdf(devs[k].bdf))
      .concat(path.hbs.map((h) => hbs[h].name))
      .concat(path.down.map((k) => shortBdf(devs[k].bdf)));
    el('span', {class: 'mono', id: 'detail-path'}, pr).textContent = parts.join(' \u2192 ');
    const cmd = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, cmd).textContent = 'more';
    el('code', null, cmd).textContent = 'p2pdma explain ' + c.provider + ' ' + c.client + ' --kernel ' + D.kernel;
  }
  function copyText(s) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(s).catch(() => { window.prompt('copy:', s); });
      } else {
        window.prompt('copy:', s);
      }
    } catch (e) { /* nothing to copy to */ }
  }

  // ---- the matrix ----
  const holder = $('matrix-holder');
  const tableMode = N <= D.table_max;
  let markMatrix = () => {};
  let cellsByPair = null;
  if (tableMode) {
    const table = el('table', {class: 'matrix', id: 'matrix-table'}, holder);
    const hr = el('tr', null, el('thead', null, table));
    el('th', null, hr).textContent = '';
    const colHeads = [];
    for (let j = 0; j < N; j++) {
      const th = el('th', {title: devs[eps[j]].bdf + ' ' + devName(eps[j]), 'data-client': devs[eps[j]].bdf}, hr);
      th.textContent = 'd' + j + ' ' + shortBdf(devs[eps[j]].bdf);
      colHeads.push(th);
    }
    const tb = el('tbody', null, table);
    const rowHeads = [];
    cellsByPair = [];
    for (let i = 0; i < N; i++) {
      const tr = el('tr', null, tb);
      const th = el('th', {title: devs[eps[i]].bdf + ' ' + devName(eps[i]), 'data-provider': devs[eps[i]].bdf}, tr);
      th.textContent = 'd' + i + ' ' + shortBdf(devs[eps[i]].bdf) + ' ' + devName(eps[i]);
      rowHeads.push(th);
      for (let j = 0; j < N; j++) {
        const c = cell(i, j);
        const td = el('td', {class: classesOf(c), 'data-provider': c.provider, 'data-client': c.client,
          'data-i': String(i), 'data-j': String(j), 'data-map-type': c.mapType}, tr);
        td.style.setProperty('--shade', String(shade(MT[i * N + j], c.distance)));
        td.textContent = cellText(c);
        cellsByPair.push(td);
      }
    }
    table.addEventListener('mouseover', (e) => {
      const td = e.target.closest('td.cell');
      if (td) showPair(+td.dataset.i, +td.dataset.j, false);
    });
    table.addEventListener('mouseleave', restorePinned);
    table.addEventListener('click', (e) => {
      const td = e.target.closest('td.cell');
      if (td) { shownKey = ''; showPair(+td.dataset.i, +td.dataset.j, true); }
    });
    let lastHl = [];
    markMatrix = (c, pin) => {
      for (const e of lastHl) e.classList.remove('hl');
      lastHl = [rowHeads[c.i], colHeads[c.j]];
      for (const e of lastHl) e.classList.add('hl');
      if (pin) {
        for (const td of holder.querySelectorAll('td.selected')) td.classList.remove('selected');
        cellsByPair[c.i * N + c.j].classList.add('selected');
      }
    };
  } else {
    $('zoom-box').hidden = false;
    const scroll = el('div', {id: 'heat-scroll'}, holder);
    const canvas = el('canvas', {id: 'heatmap'}, scroll);
    const spacer = el('div', {id: 'heat-spacer'}, scroll);
    const ctx = canvas.getContext('2d');
    // every cell as one pixel, scaled up on draw
    const img = document.createElement('canvas');
    img.width = N; img.height = N;
    const ictx = img.getContext('2d');
    const data = ictx.createImageData(N, N);
    const rgbCache = new Map();
    function hsl2rgb(h, s, l) {
      s /= 100; l /= 100;
      const k = (n) => (n + h / 30) % 12, a = s * Math.min(l, 1 - l);
      const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
      return [Math.round(255 * f(0)), Math.round(255 * f(8)), Math.round(255 * f(4))];
    }
    function rgbOf(mt, dist, self) {
      const key = self ? -1 : mt * 1000 + dist;
      let v = rgbCache.get(key);
      if (!v) {
        const p = PAL[mt];
        v = self ? [82, 96, 109] : p ? hsl2rgb(p.h, p.s, p.l + shade(mt, dist)) : [200, 200, 200];
        rgbCache.set(key, v);
      }
      return v;
    }
    for (let k = 0, o = 0; k < N * N; k++, o += 4) {
      const i = Math.floor(k / N);
      const v = rgbOf(MT[k], DIST[k], i === k - i * N);
      const dim = CERT[k] === 1 ? 0 : 40;
      data.data[o] = Math.min(255, v[0] + dim); data.data[o + 1] = Math.min(255, v[1] + dim);
      data.data[o + 2] = Math.min(255, v[2] + dim); data.data[o + 3] = 255;
    }
    ictx.putImageData(data, 0, 0);
    const hbBreaks = [];
    for (let i = 1; i < N; i++) if (devs[eps[i]].hb !== devs[eps[i - 1]].hb) hbBreaks.push(i);
    const zoom = $('zoom');
    let s = Math.max(2, Math.min(24, Math.floor((holder.clientWidth - 30) / N)));
    zoom.value = String(s);
    let hover = null;
    let G = 0;  // width of the BDF label gutters (left and top), shown when zoomed in
    function size() {
      G = s >= 14 ? 96 : 0;
      const w = Math.max(100, scroll.clientWidth), h = Math.max(100, scroll.clientHeight);
      const dpr = window.devicePixelRatio || 1;
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = w + 'px'; canvas.style.height = h + 'px';
      spacer.style.width = (G + N * s) + 'px'; spacer.style.height = (G + N * s) + 'px';
      spacer.style.marginTop = (-h) + 'px';
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      $('zoom-value').textContent = String(s);
    }
    function draw() {
      const w = canvas.clientWidth, h = canvas.clientHeight;
      const sx = scroll.scrollLeft, sy = scroll.scrollTop;
      const ox = G - sx, oy = G - sy;  // canvas position of cell (0, 0)
      ctx.fillStyle = '#ffffff';
      ctx.fillRect(0, 0, w, h);
      ctx.imageSmoothingEnabled = false;
      const j0 = Math.max(0, Math.floor((sx - G) / s)), i0 = Math.max(0, Math.floor((sy - G) / s));
      const cols = Math.min(N - j0, Math.ceil(w / s) + 1), rows = Math.min(N - i0, Math.ceil(h / s) + 1);
      if (cols > 0 && rows > 0) {
        ctx.drawImage(img, j0, i0, cols, rows, ox + j0 * s, oy + i0 * s, cols * s, rows * s);
      }
      if (s >= 6) {
        ctx.strokeStyle = '#ffffff'; ctx.lineWidth = 1;
        ctx.beginPath();
        for (let j = j0; j <= j0 + cols; j++) { const x = ox + j * s + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, h); }
        for (let i = i0; i <= i0 + rows; i++) { const y = oy + i * s + 0.5; ctx.moveTo(0, y); ctx.lineTo(w, y); }
        ctx.stroke();
      }
      if (s >= 16) {
        ctx.font = '600 ' + Math.min(12, Math.floor(s / 2)) + 'px monospace';
        ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
        for (let i = i0; i < i0 + rows; i++) {
          for (let j = j0; j < j0 + cols; j++) {
            const k = i * N + j, p = PAL[MT[k]];
            ctx.fillStyle = i === j ? '#cbd2d9' : p ? p.text : '#000';
            ctx.fillText(cellText(cell(i, j)), ox + j * s + s / 2, oy + i * s + s / 2 + 1);
          }
        }
      }
      ctx.strokeStyle = '#1f2933'; ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (const b of hbBreaks) {
        const x = ox + b * s, y = oy + b * s;
        ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.moveTo(0, y); ctx.lineTo(w, y);
      }
      ctx.stroke();
      if (hover) {
        ctx.fillStyle = 'rgba(28,126,214,0.12)';
        ctx.fillRect(0, oy + hover[0] * s, w, s);
        ctx.fillRect(ox + hover[1] * s, 0, s, h);
      }
      if (pinned) {
        ctx.strokeStyle = '#1c7ed6'; ctx.lineWidth = 2;
        const pad = Math.max(2, s);
        ctx.strokeRect(ox + pinned[1] * s - pad, oy + pinned[0] * s - pad, s + 2 * pad, s + 2 * pad);
      }
      if (G) {
        ctx.fillStyle = '#f5f7fa';
        ctx.fillRect(0, 0, G, h); ctx.fillRect(0, 0, w, G);
        ctx.font = Math.min(11, s - 3) + 'px monospace';
        ctx.fillStyle = '#3e4c59'; ctx.textBaseline = 'middle'; ctx.textAlign = 'right';
        for (let i = i0; i < i0 + rows; i++) {
          const y = oy + i * s + s / 2;
          if (y > G) ctx.fillText(shortBdf(devs[eps[i]].bdf), G - 4, y);
        }
        ctx.save();
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = 'left';
        for (let j = j0; j < j0 + cols; j++) {
          const x = ox + j * s + s / 2;
          if (x > G) ctx.fillText(shortBdf(devs[eps[j]].bdf), -G + 4, x);
        }
        ctx.restore();
        ctx.fillStyle = '#e4e7eb';
        ctx.fillRect(0, 0, G, G);
        ctx.fillStyle = '#52606d'; ctx.textAlign = 'center';
        ctx.fillText('provider \u2193', G / 2, G / 2 - 8); ctx.fillText('client \u2192', G / 2, G / 2 + 8);
      }
    }
    let raf = 0;
    function redraw() { if (!raf) raf = requestAnimationFrame(() => { raf = 0; draw(); }); }
    size(); draw();
    scroll.addEventListener('scroll', redraw);
    window.addEventListener('resize', () => { size(); draw(); });
    zoom.addEventListener('input', () => {
      const cx = (scroll.scrollLeft - G + scroll.clientWidth / 2) / s;
      const cy = (scroll.scrollTop - G + scroll.clientHeight / 2) / s;
      s = +zoom.value;
      size();
      scroll.scrollLeft = G + cx * s - scroll.clientWidth / 2;
      scroll.scrollTop = G + cy * s - scroll.clientHeight / 2;
      draw();
    });
    const tip = $('tooltip');
    function at(e) {
      const r = canvas.getBoundingClientRect();
      const y = e.clientY - r.top, x = e.clientX - r.left;
      if (x < G || y < G) return null;
      const i = Math.floor((y + scroll.scrollTop - G) / s), j = Math.floor((x + scroll.scrollLeft - G) / s);
      return i >= 0 && j >= 0 && i < N && j < N ? [i, j] : null;
    }
    canvas.addEventListener('mousemove', (e) => {
      const p = at(e);
      if (!p) { tip.hidden = true; return; }
      const c = cell(p[0], p[1]);
      tip.hidden = false;
      tip.textContent = c.provider + ' \u2192 ' + c.client + ':  ' + (c.self ? 'same function' : c.mapType) +
        '  distance ' + c.distance + (c.certain ? '' : ' (uncertain)');
      tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 540) + 'px';
      tip.style.top = (e.clientY + 16) + 'px';
      if (!hover || hover[0] !== p[0] || hover[1] !== p[1]) { hover = p; showPair(p[0], p[1], false); redraw(); }
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; hover = null; restorePinned(); redraw(); });
    canvas.addEventListener('click', (e) => { const p = at(e); if (p) { shownKey = ''; showPair(p[0], p[1], true); } });
    markMatrix = (c, pin) => {
      if (pin) {
        const x = G + c.j * s, y = G + c.i * s;
        if (x < scroll.scrollLeft + G || x > scroll.scrollLeft + scroll.clientWidth - s) {
          scroll.scrollLeft = x - scroll.clientWidth / 2;
        }
        if (y < scroll.scrollTop + G || y > scroll.scrollTop + scroll.clientHeight - s) {
          scroll.scrollTop = y - scroll.clientHeight / 2;
        }
      }
      redraw();
    };
  }

  // ---- pairs that do not go direct, grouped by cause ----
  (function causes() {
    const per = new Map();
    for (let k = 0; k < N * N; k++) {
      if (MT[k] === 3) continue;
      const c = CAUSE[k];
      const e = per.get(c);
      if (e) e.n++; else per.set(c, {n: 1, k: k, mt: MT[k]});
    }
    const box = $('causes');
    if (!per.size) { box.textContent = N ? 'Every pair goes direct (BUS_ADDR).' : 'No endpoints.'; return; }
    const rows = Array.from(per.entries()).sort((a, b) => b[1].n - a[1].n);
    const limit = 60;
    const table = el('table', null, box);
    const hr = el('tr', null, el('thead', null, table));
    for (const h of ['pairs', 'map type', 'reason', 'fix']) el('th', null, hr).textContent = h;
    const tb = el('tbody', null, table);
    for (const [ci, info] of rows.slice(0, limit)) {
      const cz = D.causes[ci];
      const tr = el('tr', {class: 'cause', title: 'click to show an example pair'}, tb);
      el('td', null, tr).textContent = String(info.n);
      el('span', {class: 'badge ' + PAL[info.mt].cls}, el('td', null, tr)).textContent = MT_NAME[info.mt];
      el('td', null, tr).textContent = cz[0];
      const fx = el('td', null, tr);
      if (cz[1]) el('code', null, fx).textContent = cz[1];
      tr.addEventListener('click', () => { shownKey = ''; showPair(Math.floor(info.k / N), info.k % N, true); });
    }
    if (rows.length > limit) {
      el('p', {class: 'hint'}, box).textContent = (rows.length - limit) + ' more causes not listed';
    }
  })();

  // ---- tree clicks: two endpoints make a pair ----
  let pending = -1;
  nodes.forEach((nd) => {
    if (nd.dev < 0 || devs[nd.dev].ep < 0) return;
    nd.g.addEventListener('click', () => {
      const ep = devs[nd.dev].ep;
      if (pending < 0) {
        pending = ep;
        nd.g.classList.add('pending');
        $('tree-hint').textContent = 'provider ' + devs[nd.dev].bdf + ': now click the client';
      } else {
        for (const g of svg.querySelectorAll('.pending')) g.classList.remove('pending');
        const i = pending;
        pending = -1;
        $('tree-hint').textContent = 'click two endpoints for a pair';
        shownKey = '';
        showPair(i, ep, true);
      }
    });
  });

  // ---- the API the tests (and curious users) call; the #select= and #probe= hashes ----
  function epIndex(b) {
    const k = byBdf.get(b);
    if (k === undefined || devs[k].ep < 0) throw new Error('not an endpoint in the matrix: ' + b);
    return devs[k].ep;
  }
  function select(p, c) { shownKey = ''; return showPair(epIndex(p), epIndex(c), true); }
  function probe(p, c) { return cell(epIndex(p), epIndex(c)); }
  window.p2pdma = {cell: probe, select: select, data: D};
  $('pair-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const parts = $('pair-input').value.trim().split(/[\s,]+/);
    try { select(parts[0], parts[1]); } catch (err) { $('details-body').textContent = String(err.message); }
  });

  if (devs.length > D.collapse_above) collapseSwitches(); else layout();
  const hash = new URLSearchParams(location.hash.slice(1));
  const probes = $('probes');
  for (const spec of (hash.get('probe') || '').split(';').filter(Boolean)) {
    const [p, c] = spec.split(',');
    const div = el('div', {class: 'probe', 'data-provider': p, 'data-client': c}, probes);
    try {
      const r = probe(p, c);
      div.setAttribute('data-class', r.cls + (r.self ? ' cell-self' : ''));
      div.setAttribute('data-map-type', r.mapType);
      div.setAttribute('data-distance', String(r.distance));
      div.setAttribute('data-certain', String(r.certain));
      div.setAttribute('data-fix', r.fix || '');
      div.textContent = r.reason;
    } catch (err) {
      div.setAttribute('data-error', String(err.message));
    }
  }
  if (hash.get('select')) {
    const [p, c] = hash.get('select').split(',');
    try {
      select(p, c);
    } catch (err) {
      $('details').setAttribute('data-error', String(err.message));
      $('details-body').textContent = String(err.message);
    }
  } else if (N > 1) {
    showPair(0, 1, false);
  }
  summary.setAttribute('data-devices', String(devs.length));
  summary.setAttribute('data-device-nodes', String(svg.querySelectorAll('.device-node').length));
  summary.setAttribute('data-endpoints', String(N));
  summary.setAttribute('data-mode', tableMode ? 'table' : 'canvas');
  summary.setAttribute('data-render-ms', String(Math.round(performance.now() - t0)));
  summary.setAttribute('data-errors', String(window.p2pdmaErrors.length));
  summary.setAttribute('data-ready', '1');
})();
"""

__all__ = ["CELL_CLASSES", "DATA_SCHEMA", "Cause", "edge_link", "pair_causes", "render_html", "report_data"]
