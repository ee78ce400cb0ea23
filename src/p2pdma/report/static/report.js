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
