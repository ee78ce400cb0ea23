"""The HTML report in headless Chromium: no console errors, the tree, the cells' colours, a pair's fix.

Each page is rendered once (DOM dumped after its scripts ran, plus a screenshot under pytest's tmp
dir) with a ``#select=PROVIDER,CLIENT`` pair pinned and ``#probe=`` pairs the page answers in the DOM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from p2pdma.examples import load, names
from p2pdma.p2p.decide import MapType
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci.names import aliases
from p2pdma.pci.topology import Topology
from p2pdma.report.documents import pair_counts
from p2pdma.report.html import CELL_CLASSES, TABLE_MAX, config_acs_fix, render_html
from tests.report.browser import WINDOW, Element, Rendered, png_size, render_page

# Known pairs of the bundled machines (provider, client), read off their YAML comments.
GPU8_BUS = ("0000:03:00.0", "0000:04:00.0")  # two GPUs below one switch
GPU8_HOST = ("0000:03:00.0", "0000:83:00.0")  # GPUs on the two sockets
ACS_PAIR = ("0000:03:00.0", "0000:04:00.0")  # acs-redirect: below switch A, SV|RR|CR|UF everywhere
ACS_FIX = "pci=disable_acs_redir=0000:02:00.0;0000:02:01.0"
ACS_CONFIG = "pci=config_acs=xx100x1@0000:02:00.0;xx100x1@0000:02:01.0"  # what `p2pdma fix GPU0 GPU1` prints
ACS_TOPOLOGICAL = ("0000:03:00.0", "0000:08:00.0")  # acs-redirect: different root ports, no ACS change helps
UNLISTED_NO = ("0000:01:00.0", "0000:04:00.0")  # unlisted-hostbridge: different root ports
UNLISTED_BUS = ("0000:04:00.0", "0000:05:00.0")  # ... and two functions below one switch


@dataclass
class Page:
    """A rendered report with the topology and matrix it shows."""

    topo: Topology
    mat: Matrix
    html: Path
    shown: Rendered


def _pair(mat: Matrix, want: Callable[[int, int], bool]) -> tuple[str, str]:
    n = len(mat.bdfs)
    for i in range(n):
        for j in range(n):
            if i != j and want(i, j):
                return mat.bdfs[i], mat.bdfs[j]
    raise AssertionError("no such pair in the machine")


def big_pairs(mat: Matrix) -> dict[str, tuple[str, str]]:
    """A BUS_ADDR pair, a NOT_SUPPORTED pair and a pair with an ACS fix of the 500-endpoint machine."""
    mt = mat.map_type
    bus = _pair(mat, lambda i, j: bool(mt[i, j] == MapType.BUS_ADDR))
    no = _pair(mat, lambda i, j: bool(mt[i, j] == MapType.NOT_SUPPORTED))
    cand = np.argwhere((mt == MapType.THRU_HOST_BRIDGE) & (mat.distance < mat.distance.max()))
    for i, j in cand:
        if i != j and mat.verdict(int(i), int(j)).fix:
            return {"bus": bus, "no": no, "acs": (mat.bdfs[i], mat.bdfs[j])}
    raise AssertionError("no ACS-redirected pair in the machine")


@pytest.fixture(scope="module")
def pages(
    chromium: str, tmp_path_factory: pytest.TempPathFactory, big_topology: Topology
) -> Callable[[str], Page]:
    """Render a page on first use: ``pages(name)`` for a bundled example or ``synth-500``.

    The known pairs are pinned and probed; other examples pin their first and last endpoint.
    """
    out = tmp_path_factory.mktemp("report")
    cache: dict[str, Page] = {}
    select = {
        "gpu8-switches": (GPU8_BUS, [GPU8_HOST]),
        "acs-redirect": (ACS_PAIR, [ACS_TOPOLOGICAL]),
        "unlisted-hostbridge": (UNLISTED_NO, [UNLISTED_BUS]),
    }

    def get(name: str) -> Page:
        if name not in cache:
            topo = big_topology if name == "synth-500" else load(name)
            mat = compute_matrix(topo)
            if name == "synth-500":
                bp = big_pairs(mat)
                pinned, probes = bp["acs"], [bp["bus"], bp["no"], bp["acs"]]
            else:
                pinned, probes = select.get(name, ((mat.bdfs[0], mat.bdfs[-1]), []))
            html = out / f"{name}.html"
            html.write_text(render_html(topo, "latest", mat))
            frag = f"select={','.join(pinned)}&probe=" + ";".join(",".join(p) for p in [pinned, *probes])
            cache[name] = Page(topo, mat, html, render_page(chromium, html, out / f"{name}.png", frag))
        return cache[name]

    return get


def cell(page: Page, provider: str, client: str) -> Element:
    """The table cell of a pair, or for a canvas heat map the page's answer to the probe."""
    dom = page.shown.dom
    found = [
        e
        for e in dom.by_class("cell") + dom.by_class("probe")
        if e.attrs.get("data-provider") == provider and e.attrs.get("data-client") == client
    ]
    assert found, f"no cell or probe for {provider} -> {client}"
    return found[0]


def cell_classes(page: Page, provider: str, client: str) -> set[str]:
    e = cell(page, provider, client)
    return e.classes if e.tag == "td" else set(e.attrs["data-class"].split())


NAMES = [*names(), "synth-500"]


@pytest.mark.parametrize("name", NAMES)
def test_page_runs_clean(pages: Callable[[str], Page], name: str) -> None:
    page = pages(name)
    shown = page.shown
    assert shown.console_lines() == []
    summary = shown.dom.by_id("summary").attrs
    assert summary["data-ready"] == "1" and summary["data-errors"] == "0"
    assert summary["data-mode"] == ("table" if len(page.mat.bdfs) <= TABLE_MAX else "canvas")
    assert "data-error" not in shown.dom.by_id("details").attrs
    assert png_size(shown.screenshot) == WINDOW and shown.screenshot.stat().st_size > 20_000


@pytest.mark.parametrize("name", NAMES)
def test_one_node_per_device(pages: Callable[[str], Page], name: str) -> None:
    page = pages(name)
    nodes = page.shown.dom.by_class("device-node")
    assert len(nodes) == len(page.topo.devices)
    assert [e.attrs["data-bdf"] for e in nodes] == [d.bdf for d in page.topo.devices]
    assert len(page.shown.dom.by_class("hostbridge-node")) == len(page.topo.host_bridges)


@pytest.mark.parametrize("name", NAMES)
def test_pinned_pair_path_and_reason(pages: Callable[[str], Page], name: str) -> None:
    page = pages(name)
    dom = page.shown.dom
    det = dom.by_id("details").attrs
    provider, client = det["data-provider"], det["data-client"]
    v = page.mat.verdict(page.mat.bdfs.index(provider), page.mat.bdfs.index(client))
    assert det["data-map-type"] == v.map_type.name and det["data-class"] == CELL_CLASSES[v.map_type]
    assert dom.by_id("detail-reason").text == v.reason
    on_path = [e.attrs.get("data-bdf") or e.attrs.get("data-name") for e in dom.by_class("on-path") if e.tag == "g"]
    assert sorted(on_path) == sorted(v.path)
    assert [e.attrs["data-bdf"] for e in dom.by_class("provider")] == [provider]
    assert [e.attrs["data-bdf"] for e in dom.by_class("client")] == [client]
    assert sorted(e.attrs["data-bdf"] for e in dom.by_class("acs-culprit")) == sorted(v.acs_ports)


def test_gpu8_cells(pages: Callable[[str], Page]) -> None:
    page = pages("gpu8-switches")
    assert "cell-bus-addr" in cell_classes(page, *GPU8_BUS)
    assert cell(page, *GPU8_BUS).text == "4"
    assert "cell-thru-host-bridge" in cell_classes(page, *GPU8_HOST)
    assert "cell-fixable" not in cell_classes(page, *GPU8_HOST)  # topological: different root ports
    assert len(page.shown.dom.by_class("cell")) == len(page.mat.bdfs) ** 2
    # labels: the alias and the short BDF on both axes, the name and NUMA node on the rows, nothing clipped
    heads = {e.attrs["data-provider"]: e.text for e in page.shown.dom.by_class("row-head")}
    assert heads["0000:03:00.0"].startswith("GPU0 03:00.0") and "NUMA\u00a00" in heads["0000:03:00.0"]
    cols = {e.attrs["data-client"]: e.text for e in page.shown.dom.by_class("col-head")}
    assert cols["0000:05:00.0"] == "NIC0 05:00.0"
    # the header counts distinct ordered pairs: 24 direct ones, as `p2pdma matrix` says
    counts = pair_counts(page.mat)
    assert page.shown.dom.by_id("count-bus-addr").text == f"{counts['BUS_ADDR']} BUS_ADDR"
    assert page.shown.dom.by_id("count-pairs").text == f"{counts['pairs']} pairs:"


def test_acs_pair_shows_its_fix(pages: Callable[[str], Page]) -> None:
    page = pages("acs-redirect")
    dom = page.shown.dom
    # config_acs first, as `p2pdma fix` recommends it, then disable_acs_redir
    assert dom.by_id("detail-fix").text == ACS_CONFIG
    assert dom.by_id("detail-fix-redir").text == ACS_FIX
    assert dom.by_id("detail-fix-cmd").text == "p2pdma fix GPU0 GPU1 --kernel latest"
    assert cell(page, *ACS_PAIR).attrs["data-map-type"] == "THRU_HOST_BRIDGE"
    # ACS-caused cells are drawn apart from topological ones of the same map type
    assert {"cell-thru-host-bridge", "cell-fixable"} <= cell_classes(page, *ACS_PAIR)
    assert "cell-thru-host-bridge" in cell_classes(page, *ACS_TOPOLOGICAL)
    assert "cell-fixable" not in cell_classes(page, *ACS_TOPOLOGICAL)
    assert dom.by_id("detail-fixable").text == "ACS: fixable"
    assert "ACS-caused" in dom.by_id("legend").text
    # the ACS-marked ports in the tree
    redir = sorted(e.attrs["data-bdf"] for e in dom.by_class("acs-redir-port"))
    assert {"0000:02:00.0", "0000:02:01.0", "0000:02:02.0"} <= set(redir)


def test_unlisted_cells(pages: Callable[[str], Page]) -> None:
    page = pages("unlisted-hostbridge")
    assert "cell-not-supported" in cell_classes(page, *UNLISTED_NO)
    assert "cell-bus-addr" in cell_classes(page, *UNLISTED_BUS)


def test_500_endpoints_canvas(pages: Callable[[str], Page]) -> None:
    page = pages("synth-500")
    dom = page.shown.dom
    assert page.html.stat().st_size < 10 * 1024 * 1024
    assert len(dom.by_class("cell")) == 0 and len(dom.by_class("probe")) == 4
    bp = big_pairs(page.mat)
    assert "cell-bus-addr" in cell_classes(page, *bp["bus"])
    assert "cell-not-supported" in cell_classes(page, *bp["no"])
    v = page.mat.verdict(page.mat.bdfs.index(bp["acs"][0]), page.mat.bdfs.index(bp["acs"][1]))
    assert cell(page, *bp["acs"]).attrs["data-fix"] == v.fix
    assert dom.by_id("detail-fix").text == config_acs_fix(page.topo, v.acs_ports)
    assert dom.by_id("detail-fix-redir").text == v.fix
    assert int(dom.by_id("heatmap").attrs["data-gutter"]) > 16  # axis labels and host-bridge bands
    assert int(dom.by_id("heatmap").attrs["data-bands"]) >= len({page.topo[b].host_bridge for b in page.mat.bdfs})
    assert int(dom.by_id("summary").attrs["data-render-ms"]) < 10_000


# Appended to a copy of a report: drives the mouse handlers with synthetic events, writes what it saw.
DRIVER = """<script>
(function () {
  const res = {};
  const det = () => document.getElementById('details').dataset;
  const fire = (e, type, x, y) => e.dispatchEvent(new MouseEvent(type, {bubbles: true, clientX: x, clientY: y}));
  try {
    const canvas = document.getElementById('heatmap');
    if (canvas) {
      const s = +document.getElementById('zoom').value, r = canvas.getBoundingClientRect();
      const g = +canvas.dataset.gutter;
      fire(canvas, 'mousemove', r.left + g + 3 * s + 1, r.top + g + 2 * s + 1);
      res.hover = [det().provider, det().client];
      res.tooltip = !document.getElementById('tooltip').hidden;
      fire(canvas, 'click', r.left + g + 3 * s + 1, r.top + g + 2 * s + 1);
      fire(canvas, 'mouseleave', 0, 0);
      res.pinned = [det().provider, det().client];
      const zoom = document.getElementById('zoom');
      zoom.value = '16';
      zoom.dispatchEvent(new Event('input'));
    } else {
      const td = document.querySelector('td.cell[data-i="2"][data-j="3"]');
      fire(td, 'mouseover', 0, 0);
      res.hover = [det().provider, det().client];
      fire(td, 'click', 0, 0);
      fire(document.getElementById('matrix-table'), 'mouseleave', 0, 0);
      res.pinned = [det().provider, det().client];
      res.selected = td.classList.contains('selected');
    }
    const eps = document.querySelectorAll('g.endpoint-node');
    fire(eps[2], 'click', 0, 0);
    fire(eps[1], 'click', 0, 0);
    res.tree = [det().provider, det().client];
    const usp = document.querySelector('g.role-switch-upstream.has-kids');
    const before = usp.classList.contains('collapsed');
    fire(usp.querySelector('.glyph'), 'click', 0, 0);
    res.toggled = usp.classList.contains('collapsed') !== before;
    document.getElementById('pair-input').value = eps[0].dataset.bdf + ' ' + eps[2].dataset.bdf;
    document.getElementById('pair-form').requestSubmit();
    res.form = [det().provider, det().client];
    // every name the commands take: alias, dN, short BDF, full BDF; a miss says "did you mean"
    const ask = (text) => {
      document.getElementById('pair-input').value = text;
      document.getElementById('pair-form').requestSubmit();
      return det().error ? 'error: ' + det().error : det().provider + ' ' + det().client;
    };
    res.names = [ask(eps[2].dataset.bdf.slice(5).replace(/^0+(?=[0-9a-f]:)/, '') + ' ' + eps[1].dataset.bdf)];
    res.names.push(ask('GPU1 gpu0'));
    res.names.push(ask('d1 d2'));
    res.names.push(ask('GPU1 GPUX'));
    const cause = document.querySelector('#causes tr.cause');
    if (cause) { fire(cause, 'click', 0, 0); res.cause = det().mapType; }
  } catch (e) {
    res.error = String(e && e.stack || e);
  }
  const out = document.createElement('div');
  out.id = 'driver';
  out.setAttribute('data-result', JSON.stringify(res));
  document.body.appendChild(out);
})();
</script>
"""


@pytest.mark.parametrize("name", ["gpu8-switches", "synth-500"])
def test_mouse_and_forms(pages: Callable[[str], Page], name: str, chromium: str) -> None:
    import json

    page = pages(name)
    driven = page.html.with_name(f"{name}-driven.html")
    driven.write_text(page.html.read_text().replace("</body>", DRIVER + "</body>"))
    shown = render_page(chromium, driven, driven.with_suffix(".png"))
    assert shown.console_lines() == []
    res = json.loads(shown.dom.by_id("driver").attrs["data-result"])
    assert "error" not in res, res["error"]
    b = page.mat.bdfs
    ep_nodes = [d.bdf for d in page.topo.devices if not d.is_bridge]
    if name == "synth-500":
        assert res["hover"] == [b[2], b[3]] and res["tooltip"]
    else:
        assert res["hover"] == [b[2], b[3]] and res["selected"]
    assert res["pinned"] == [b[2], b[3]]
    assert res["tree"] == [ep_nodes[2], ep_nodes[1]]
    assert res["toggled"]
    assert res["form"] == [ep_nodes[0], ep_nodes[2]]
    assert res["cause"] in ("THRU_HOST_BRIDGE", "NOT_SUPPORTED")
    alias = {a: b for b, a in aliases(page.topo).items()}
    endpoints = [d.bdf for d in page.topo.endpoints]
    assert res["names"][:3] == [f"{ep_nodes[2]} {ep_nodes[1]}", f"{alias['GPU1']} {alias['GPU0']}",
                                f"{endpoints[1]} {endpoints[2]}"]
    assert res["names"][3].startswith("error: unknown device \"GPUX\"") and "did you mean" in res["names"][3]


# Narrows the pair panel until the config_acs fix must wrap, then reports where each part of it sits.
WRAP_DRIVER = """<script>
(function () {
  const res = {};
  try {
    document.getElementById('right').style.flex = '0 0 430px';
    document.getElementById('tree-panel').style.flex = '1 1 1000px';
    const fix = document.getElementById('detail-fix');
    res.text = fix.textContent;
    res.segs = Array.from(fix.querySelectorAll('.seg')).map((s) => [s.textContent, s.getClientRects().length,
      Math.round(s.getBoundingClientRect().top)]);
    res.codeWidth = fix.getBoundingClientRect().width;
    res.panelWidth = document.getElementById('details-body').getBoundingClientRect().width;
    res.causeSegs = Array.from(document.querySelectorAll('#causes code.param .seg'))
      .map((s) => s.getClientRects().length);
  } catch (e) { res.error = String(e && e.stack || e); }
  const out = document.createElement('div');
  out.id = 'driver';
  out.setAttribute('data-result', JSON.stringify(res));
  document.body.appendChild(out);
})();
</script>
"""


def test_fix_wraps_only_between_entries(pages: Callable[[str], Page], chromium: str) -> None:
    import json

    page = pages("acs-redirect")
    driven = page.html.with_name("acs-wrap.html")
    driven.write_text(page.html.read_text().replace("</body>", WRAP_DRIVER + "</body>"))
    shown = render_page(chromium, driven, driven.with_suffix(".png"), f"select={','.join(ACS_PAIR)}")
    res = json.loads(shown.dom.by_id("driver").attrs["data-result"])
    assert "error" not in res, res["error"]
    assert res["text"] == ACS_CONFIG
    segs = res["segs"]
    assert [s[0] for s in segs] == ["pci=config_acs=xx100x1@0000:02:00.0;", "xx100x1@0000:02:01.0"]
    assert all(s[1] == 1 for s in segs)  # no entry is broken across lines
    assert segs[1][2] > segs[0][2]  # too narrow for one line: it wrapped, at the ';'
    assert res["codeWidth"] <= res["panelWidth"]
    assert res["causeSegs"] and all(n == 1 for n in res["causeSegs"])


@pytest.mark.parametrize("name", ["gpu8-switches", "acs-redirect"])
def test_opens_on_the_initial_pair(pages: Callable[[str], Page], chromium: str, name: str) -> None:
    from p2pdma.report.html import initial_pair

    page = pages(name)
    shown = render_page(chromium, page.html, page.html.with_name(f"{name}-open.png"))
    det = shown.dom.by_id("details").attrs
    i, j = initial_pair(page.mat) or (0, 1)
    assert (det["data-provider"], det["data-client"]) == (page.mat.bdfs[i], page.mat.bdfs[j])
    assert det["data-map-type"] != "BUS_ADDR"
    alias = aliases(page.topo)
    assert page.mat.bdfs[i] in alias and page.mat.bdfs[j] in alias  # devices people peer, not the RCiEPs
