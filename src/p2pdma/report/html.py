"""A self-contained HTML report (inline CSS and JS, one embedded JSON blob): the PCI tree, the P2P
heat map, each pair's reason and fix. Cell classes: see CELL_CLASSES, plus cell-self, cell-uncertain."""

# The matrix travels compactly (map type, distance, certainty and a cause index per cell, base64);
# reasons and fixes are deduplicated into a cause table; the page walks paths from the parent links.

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from p2pdma import __version__
from p2pdma.p2p import platform
from p2pdma.p2p.decide import DEFAULT_PROFILE, MapType
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci import config as cfg
from p2pdma.pci import names
from p2pdma.pci.topology import Device, Topology

if TYPE_CHECKING:
    from p2pdma.pci.names import Selection

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


def _device(topo: Topology, d: Device, ep: int, hb_ids: dict[str, int], labels: dict[str, str],
            alias_map: dict[str, str], dn: dict[str, int]) -> dict[str, Any]:
    """One function for the page: parent index, role, names (alias, label, OS names), NUMA node and local
    CPUs, links, ACS, matrix index (or -1)."""
    numa = d.numa_node
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
        "alias": alias_map.get(d.bdf),
        "label": labels.get(d.bdf),
        "dn": dn.get(d.bdf, -1),
        "peer": names.is_peer_device(d),
        "os_names": list(d.os_names),
        "numa": numa if numa is None or numa >= 0 else None,
        "cpus": d.local_cpulist,
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


def config_acs_fix(topo: Topology, acs_ports: tuple[str, ...], profile: str = DEFAULT_PROFILE) -> str | None:
    """The ``pci=config_acs=`` parameter ``p2pdma fix`` recommends for a pair whose path redirects at
    ``acs_ports``: the fewest bits to clear on each (fix.minimal_clear(), which reads no egress target, so
    the ports alone decide), in the tree's order, as fix.FixPlan.config_acs writes it."""
    from p2pdma.p2p import fix as fixmod

    changes = []
    for bdf in sorted((b for b in acs_ports if b in topo), key=lambda b: topo.index[b]):
        dev = topo[bdf]
        clear = fixmod.minimal_clear(topo, dev, (None,), profile)
        if clear and dev.acs is not None:
            changes.append(fixmod.PortChange(bdf, dev.port_type_name, dev.acs.ctrl, dev.acs.ctrl & ~clear,
                                             dev.acs.offset))
    if not changes:
        return None
    return "pci=config_acs=" + ";".join(f"{fixmod.config_acs_mask(c)}@{c.bdf}" for c in changes)


def initial_pair(mat: Matrix) -> tuple[int, int] | None:
    """The pair the page opens on: the first (row order) that is not BUS_ADDR among the devices people
    peer, else their first GPU -> NIC pair, else their first pair; with fewer than two of them, the first
    pair of the matrix that is not BUS_ADDR, else its first pair."""
    topo = mat.topo
    n = len(mat.bdfs)
    if n < 2:
        return None
    peers = [k for k, b in enumerate(mat.bdfs) if names.is_peer_device(topo[b])]
    idx = np.array(peers, dtype=np.int64)
    if len(peers) >= 2:
        sub = mat.map_type[np.ix_(idx, idx)] != MapType.BUS_ADDR.value
        np.fill_diagonal(sub, False)
        hit = np.argwhere(sub)
        if hit.size:
            return int(idx[hit[0][0]]), int(idx[hit[0][1]])
        kinds = {k: names.peer_class(topo[mat.bdfs[k]]) for k in peers}
        gpus = [k for k in peers if kinds[k] == "GPU"]
        nics = [k for k in peers if kinds[k] == "NIC"]
        if gpus and nics:
            return gpus[0], nics[0]
        return peers[0], peers[1]
    off = mat.map_type != MapType.BUS_ADDR.value
    np.fill_diagonal(off, False)
    hit = np.argwhere(off)
    return (int(hit[0][0]), int(hit[0][1])) if hit.size else (0, 1)


def report_data(topo: Topology, profile: str = DEFAULT_PROFILE, mat: Matrix | None = None,
                selection: Selection | None = None) -> dict[str, Any]:
    """The JSON blob the page reads: devices with parent links, host bridges, the compact matrix."""
    from p2pdma.report.documents import pair_counts, selection_json

    if mat is None:
        mat = compute_matrix(topo, profile)
    label = names.labels(topo)
    alias_map = names.aliases(topo)
    dn = {d.bdf: k for k, d in enumerate(topo.endpoints)}
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
        "devices": [_device(topo, d, ep_of.get(d.bdf, -1), hb_ids, label, alias_map, dn) for d in topo.devices],
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
        # added in place (the schema stays p2pdma.report-data/1): the distinct ordered pairs matrix and
        # fix count, what the view left out, and the pair the page opens on
        "pair_counts": pair_counts(mat),
        # per cause (same order): the pci=config_acs= fix `p2pdma fix` recommends, beside causes' disable_acs_redir
        "cause_config_acs": [config_acs_fix(topo, c.acs_ports, mat.profile) if c.fix else None for c in causes],
        "selection": selection_json(topo, selection),
        "initial": list(start) if (start := initial_pair(mat)) is not None else None,
    }


def _palette_css() -> str:
    """The cell colour classes as CSS, lightness shifted by the cell's ``--shade`` (distance)."""
    rules = []
    for m, (h, s, light, _, text) in PALETTE.items():
        rules.append(
            f".{CELL_CLASSES[m]} {{ background-color: hsl({h} {s}% calc({light}% + var(--shade, 0) * 1%));"
            f" color: {text}; }}"
        )
        rules.append(f".swatch.{CELL_CLASSES[m]} {{ background-color: hsl({h} {s}% {light + 6}%); }}")
    return "\n".join(rules)


def _json_for_script(doc: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no ``</script>``, no ``<!--``)."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def _esc(text: str) -> str:
    """Text escaped for HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_html(topo: Topology, profile: str = DEFAULT_PROFILE, mat: Matrix | None = None,
                selection: Selection | None = None) -> str:
    """The whole report as one HTML document (inline CSS and JS, embedded JSON data)."""
    data = report_data(topo, profile, mat, selection)
    return (
        _static(_PAGE_FILE).replace("__TITLE__", _esc(f"p2pdma report: {topo.name} ({profile})"))
        .replace("__CSS__", "\n" + _static(_CSS_FILE) + "\n" + _palette_css())
        .replace("__JS__", "\n" + _static(_JS_FILE))
        .replace("__DATA__", _json_for_script(data))
    )


def _static(name: str) -> str:
    """One of the page's package files (report/static/): the HTML shell, its CSS or its JavaScript."""
    return (resources.files("p2pdma.report") / "static" / name).read_text(encoding="utf-8")


# Kept in report/static/ where editors and `node --check` see them; read when a report is written.
_PAGE_FILE, _CSS_FILE, _JS_FILE = "page.html", "report.css", "report.js"

__all__ = [
    "CELL_CLASSES", "DATA_SCHEMA", "Cause", "config_acs_fix", "edge_link", "initial_pair", "pair_causes",
    "render_html", "report_data",
]
