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
  // what the matrix and the commands call a function: its alias (GPU0), else dN / bN (pci.names.labels())
  function devLabel(k) { const d = devs[k]; return d.label || d.alias || shortBdf(d.bdf); }
  function epLabel(i) { return devLabel(eps[i]); }
  function osText(k) { const d = devs[k]; return d.os_names && d.os_names.length ? d.os_names.join(' ') : ''; }
  function numaText(k) { const d = devs[k]; return d.numa === null || d.numa === undefined ? '' : 'NUMA\u00a0' + d.numa; }
  // a kernel parameter as code that wraps only after a ';' between entries, never inside one
  function paramCode(parent, s, attrs) {
    const code = el('code', Object.assign({class: 'param'}, attrs || {}), parent);
    s.split(';').forEach((part, k, all) => {
      const seg = el('span', {class: 'seg'}, code);
      seg.textContent = part + (k < all.length - 1 ? ';' : '');
      if (k < all.length - 1) el('wbr', null, code);
    });
    return code;
  }

  // ---- cells ----
  function shade(mt, dist) {
    const p = PAL[mt];
    return p ? Math.min(D.shade_max, Math.max(0, dist - 2) * p.step) : 0;
  }
  // a pair is fixable when ACS redirect on its path decides it: clearing those bits makes it BUS_ADDR
  const FIXABLE = new Uint8Array(D.causes.length);
  const CFG_ACS = D.cause_config_acs || [];
  D.causes.forEach((c, k) => { FIXABLE[k] = c[2].length > 0 && c[1] ? 1 : 0; });
  function cell(i, j) {
    const k = i * N + j, mt = MT[k], c = D.causes[CAUSE[k]];
    return {
      i: i, j: j, provider: devs[eps[i]].bdf, client: devs[eps[j]].bdf, mapType: MT_NAME[mt] || String(mt),
      cls: PAL[mt] ? PAL[mt].cls : 'cell-unknown', distance: DIST[k], certain: CERT[k] === 1, self: i === j,
      reason: c[0], fix: c[1], acsPorts: c[2], configAcs: CFG_ACS[CAUSE[k]] || null,
      fixable: i !== j && mt !== 3 && FIXABLE[CAUSE[k]] === 1,
    };
  }
  function cellText(c) {
    if (c.self) return 'X';
    const t = c.mapType === 'NOT_SUPPORTED' ? '\u2013' : String(c.distance);
    return c.certain ? t : t + '?';
  }
  function classesOf(c) {
    return 'cell ' + c.cls + (c.self ? ' cell-self' : '') + (c.certain ? '' : ' cell-uncertain') +
      (c.fixable ? ' cell-fixable' : '');
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
  // distinct ordered pairs (provider != client), as `p2pdma matrix` and `p2pdma fix` count them
  const PC = D.pair_counts || {BUS_ADDR: D.counts.BUS_ADDR - N, THRU_HOST_BRIDGE: D.counts.THRU_HOST_BRIDGE,
    NOT_SUPPORTED: D.counts.NOT_SUPPORTED, pairs: N * (N - 1), uncertain: D.uncertain};
  let fixablePairs = 0;
  for (let k = 0; k < N * N; k++) if (MT[k] !== 3 && FIXABLE[CAUSE[k]] && k % (N + 1) !== 0) fixablePairs++;
  const counts = [
    [devs.length + ' functions', 'count-functions'], [hbs.length + ' host bridges', 'count-hbs'],
    [N + ' devices in the matrix', 'count-devices'], [PC.pairs + ' pairs:', 'count-pairs'],
    [PC.BUS_ADDR + ' BUS_ADDR', 'count-bus-addr'], [PC.THRU_HOST_BRIDGE + ' THRU_HOST_BRIDGE', 'count-thru'],
    [PC.NOT_SUPPORTED + ' NOT_SUPPORTED', 'count-not'], [PC.uncertain + ' uncertain', 'count-uncertain'],
    [fixablePairs + ' fixable by ACS', 'count-fixable'],
  ];
  for (const c of counts) { const s = el('span', {class: 'count', id: c[1]}, summary); s.textContent = c[0]; }
  if (D.selection && D.selection.summary) {
    el('div', {id: 'view-line'}, $('machine-line').parentNode).textContent = 'matrix: ' + D.selection.summary +
      ' (the tree shows every function)';
  }
  if (D.warnings.length) {
    const s = el('span', {class: 'count', title: D.warnings.join('\n')}, summary);
    s.textContent = '\u26a0 ' + D.warnings.length + ' warnings (hover)';
  }
  const legend = $('legend');
  const legendItems = [
    ['cell-bus-addr', 'BUS_ADDR: direct below a common switch, by bus address (number = distance)'],
    ['cell-thru-host-bridge', 'THRU_HOST_BRIDGE: through the root complex'],
    ['cell-not-supported', 'NOT_SUPPORTED: refused'],
    ['cell-thru-host-bridge cell-fixable', 'hatched, framed: ACS-caused (redirect on the path), the fix makes it ' +
      'BUS_ADDR; plain: topological (no common switch), no ACS change helps'],
    ['cell-self', 'the same function'],
  ];
  for (const it of legendItems) {
    const s = el('span', {class: 'item'}, legend);
    el('span', {class: 'swatch ' + it[0]}, s);
    el('span', null, s).textContent = it[1];
  }
  el('span', {class: 'item'}, legend).textContent = '? = ACS unknown on the path; ports with ACS redirect ringed red';

  // ---- the tree ----
  const ROW = 22, IND = 72, PAD = 14;
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
      if (d.alias) text(t, d.alias + ' ', 'alias');
      text(t, shortBdf(d.bdf), 'bdf');
      const rl = ROLE_LABEL[d.role];
      if (rl) text(t, ' ' + rl, 'ptype');
      if (d.physfn >= 0) text(t, ' VF of ' + shortBdf(devs[d.physfn].bdf), 'ptype');
      if (!d.bridge || !rl) text(t, ' ' + devName(nd.dev), 'dname');
      if (osText(nd.dev)) text(t, '  ' + osText(nd.dev), 'osn');
      if (numaText(nd.dev) && (d.ep >= 0 || d.peer)) text(t, '  ' + numaText(nd.dev), 'numa');
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
      if (d.label) tip.push('name: ' + d.label + (osText(nd.dev) ? ', OS: ' + osText(nd.dev) : ''));
      if (numaText(nd.dev)) tip.push(numaText(nd.dev) + (d.cpus ? ', local CPUs ' + d.cpus : ''));
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
    const head = el('div', {class: 'row pair-head'}, box);
    function who(k, role) {
      const w = el('span', {class: 'who', id: 'detail-' + role}, head);
      el('b', {class: 'mono'}, w).textContent = devLabel(k) + ' ' + shortBdf(devs[k].bdf);
      const extra = [devName(k), osText(k), numaText(k)].filter(Boolean).join(' \u00b7 ');
      el('span', {class: 'who-name'}, w).textContent = ' ' + extra;
    }
    who(eps[c.i], 'provider');
    el('span', {class: 'arrow'}, head).textContent = ' \u2192 ';
    who(eps[c.j], 'client');
    el('span', null, head).textContent = '  ';
    const badge = el('span', {class: 'badge ' + c.cls, id: 'detail-type'}, head);
    badge.textContent = c.self ? 'same function' : c.mapType;
    if (c.fixable) el('span', {class: 'badge cell-thru-host-bridge cell-fixable', id: 'detail-fixable'}, head)
      .textContent = 'ACS: fixable';
    const meta = el('div', {class: 'row'}, box);
    meta.textContent = 'distance ' + c.distance + (c.certain ? '' : '   (uncertain: ACS unreadable on the path)');
    const why = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, why).textContent = 'why';
    el('span', {id: 'detail-reason'}, why).textContent = c.reason;
    const fix = el('div', {class: 'row'}, box);
    el('span', {class: 'key'}, fix).textContent = 'fix';
    if (c.fix) {
      const main = c.configAcs || c.fix;
      el('span', null, fix).textContent = 'add the kernel parameter ';
      paramCode(fix, main, {id: 'detail-fix'});
      const btn = el('button', {type: 'button'}, fix);
      btn.textContent = 'copy';
      btn.addEventListener('click', () => copyText(main));
      if (c.configAcs) {
        const alt = el('div', {class: 'row sub'}, box);
        el('span', {class: 'key'}, alt).textContent = '';
        el('span', null, alt).textContent = 'or (Linux 4.19+, clears RR, CR and EC, more than needed where it differs) ';
        paramCode(alt, c.fix, {id: 'detail-fix-redir'});
      }
      const how = el('div', {class: 'row sub'}, box);
      el('span', {class: 'key'}, how).textContent = '';
      el('code', {id: 'detail-fix-cmd'}, how).textContent = 'p2pdma fix ' + epLabel(c.i) + ' ' + epLabel(c.j) +
        ' --kernel ' + D.kernel;
      el('span', {class: 'hint'}, how).textContent = '  the change port by port, setpci, and what it costs in IOMMU groups';
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
    el('code', {id: 'detail-explain'}, cmd).textContent = 'p2pdma explain ' + epLabel(c.i) + ' ' + epLabel(c.j) +
      ' --kernel ' + D.kernel;
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
      const th = el('th', {title: devs[eps[j]].bdf + ' ' + devName(eps[j]), 'data-client': devs[eps[j]].bdf,
        class: 'col-head'}, hr);
      el('b', null, th).textContent = epLabel(j);
      el('span', null, th).textContent = ' ' + shortBdf(devs[eps[j]].bdf);
      colHeads.push(th);
    }
    const tb = el('tbody', null, table);
    const rowHeads = [];
    cellsByPair = [];
    for (let i = 0; i < N; i++) {
      const tr = el('tr', null, tb);
      const th = el('th', {title: devs[eps[i]].bdf + ' ' + devName(eps[i]), 'data-provider': devs[eps[i]].bdf,
        class: 'row-head'}, tr);
      el('b', null, th).textContent = epLabel(i);
      el('span', {class: 'mono'}, th).textContent = ' ' + shortBdf(devs[eps[i]].bdf);
      const extra = [osText(eps[i]), numaText(eps[i])].filter(Boolean).join(' \u00b7 ');
      el('span', {class: 'row-name'}, th).textContent = devName(eps[i]) + (extra ? ' \u00b7 ' + extra : '');
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
    // fixable (ACS-caused) cells: the same hue, darker, and hatched once cells are large enough
    function rgbOf(mt, dist, self, fixable) {
      const key = self ? -1 : (fixable ? 100000 : 0) + mt * 1000 + dist;
      let v = rgbCache.get(key);
      if (!v) {
        const p = PAL[mt];
        v = self ? [82, 96, 109] : p ? hsl2rgb(p.h, p.s, p.l + shade(mt, dist) - (fixable ? 16 : 0)) : [200, 200, 200];
        rgbCache.set(key, v);
      }
      return v;
    }
    const FIXK = new Uint8Array(N * N);
    for (let k = 0, o = 0; k < N * N; k++, o += 4) {
      const i = Math.floor(k / N);
      const self = i === k - i * N;
      FIXK[k] = !self && MT[k] !== 3 && FIXABLE[CAUSE[k]] ? 1 : 0;
      const v = rgbOf(MT[k], DIST[k], self, FIXK[k] === 1);
      const dim = CERT[k] === 1 ? 0 : 40;
      data.data[o] = Math.min(255, v[0] + dim); data.data[o + 1] = Math.min(255, v[1] + dim);
      data.data[o + 2] = Math.min(255, v[2] + dim); data.data[o + 3] = 255;
    }
    ictx.putImageData(data, 0, 0);
    const hbBreaks = [];
    for (let i = 1; i < N; i++) if (devs[eps[i]].hb !== devs[eps[i - 1]].hb) hbBreaks.push(i);
    // runs of consecutive matrix rows below one host bridge: the bands along both axes
    const bands = [];
    for (let i = 0; i < N; i++) {
      const h = devs[eps[i]].hb;
      if (bands.length && bands[bands.length - 1].hb === h) bands[bands.length - 1].end = i + 1;
      else bands.push({hb: h, start: i, end: i + 1});
    }
    const BAND = 16, LABEL_FONT = 11;
    // the gutters hold the labels (alias and short BDF) and the host-bridge band: wide enough for the longest
    ctx.font = LABEL_FONT + 'px monospace';
    let labelW = 0;
    for (let i = 0; i < N; i++) labelW = Math.max(labelW, ctx.measureText(epLabel(i) + ' ' + shortBdf(devs[eps[i]].bdf)).width);
    const GUTTER = Math.ceil(Math.min(220, labelW + 10)) + BAND;
    canvas.setAttribute('data-bands', String(bands.length));
    const zoom = $('zoom');
    let s = Math.max(2, Math.min(24, Math.floor((holder.clientWidth - 30 - GUTTER) / N)));
    zoom.value = String(s);
    let hover = null;
    let G = 0;  // width of the BDF label gutters (left and top), shown when zoomed in
    function size() {
      G = GUTTER;
      canvas.setAttribute('data-gutter', String(G));
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
        ctx.save();
        ctx.beginPath(); ctx.rect(G, G, w - G, h - G); ctx.clip();
        ctx.strokeStyle = 'rgba(255,255,255,0.55)'; ctx.lineWidth = 1;
        ctx.beginPath();
        for (let i = i0; i < i0 + rows; i++) {
          for (let j = j0; j < j0 + cols; j++) {
            if (!FIXK[i * N + j]) continue;
            const x = ox + j * s, y = oy + i * s;
            for (let d = 3; d < 2 * s; d += 4) {
              ctx.moveTo(x + Math.max(0, d - s), y + Math.min(s, d)); ctx.lineTo(x + Math.min(s, d), y + Math.max(0, d - s));
            }
          }
        }
        ctx.stroke();
        ctx.restore();
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
        // host-bridge bands next to the cells, alternating shades, named where they are long enough
        ctx.save();
        ctx.font = '600 10px system-ui, sans-serif'; ctx.textBaseline = 'middle'; ctx.textAlign = 'center';
        bands.forEach((b, k) => {
          const a = oy + b.start * s, z = oy + b.end * s, ax = ox + b.start * s, zx = ox + b.end * s;
          ctx.fillStyle = k % 2 ? '#9fb3c8' : '#627d98';
          if (z > G && a < h) ctx.fillRect(G - BAND, Math.max(G, a), BAND - 2, Math.min(h, z) - Math.max(G, a));
          if (zx > G && ax < w) ctx.fillRect(Math.max(G, ax), G - BAND, Math.min(w, zx) - Math.max(G, ax), BAND - 2);
          const name = hbs[b.hb].name;
          ctx.fillStyle = '#ffffff';
          const lx0 = Math.max(G, ax), lx1 = Math.min(w, zx);
          if (lx1 - lx0 > ctx.measureText(name).width + 6) ctx.fillText(name, (lx0 + lx1) / 2, G - BAND / 2 - 1);
          const ly0 = Math.max(G, a), ly1 = Math.min(h, z);
          if (ly1 - ly0 > ctx.measureText(name).width + 6) {
            ctx.save(); ctx.translate(G - BAND / 2 - 1, (ly0 + ly1) / 2); ctx.rotate(-Math.PI / 2);
            ctx.fillText(name, 0, 0); ctx.restore();
          }
        });
        ctx.restore();
        // labels: every row's when they fit, else every k-th with a tick (hover shows each one)
        const every = Math.max(1, Math.ceil((LABEL_FONT + 2) / s));
        ctx.font = LABEL_FONT + 'px monospace';
        ctx.fillStyle = '#3e4c59'; ctx.strokeStyle = '#7b8794'; ctx.lineWidth = 1;
        ctx.textBaseline = 'middle'; ctx.textAlign = 'right';
        const lab = (i) => epLabel(i) + ' ' + shortBdf(devs[eps[i]].bdf);
        // rows far enough apart to read: the devices people peer first, then every k-th other row where
        // it does not crowd a labelled one
        function labelled(a, n) {
          const gap = Math.ceil((LABEL_FONT + 1) / s), taken = new Uint8Array(n), out = [];
          let last = -Infinity;
          for (let i = a; i < a + n; i++) {
            if (devs[eps[i]].peer && i - last >= gap) { taken[i - a] = 1; last = i; }
          }
          for (let i = Math.ceil(a / every) * every; i < a + n; i += every) {
            let free = true;
            for (let q = Math.max(a, i - gap + 1); q < Math.min(a + n, i + gap); q++) if (taken[q - a]) { free = false; break; }
            if (free) taken[i - a] = 2;
          }
          for (let i = 0; i < n; i++) if (taken[i]) out.push(a + i);
          return out;
        }
        ctx.beginPath();
        for (const i of labelled(i0, rows)) {
          const y = oy + i * s + s / 2;
          if (y > G + 4) { ctx.fillText(lab(i), G - BAND - 6, y); ctx.moveTo(G - BAND - 4, y + 0.5); ctx.lineTo(G - BAND, y + 0.5); }
        }
        ctx.stroke();
        ctx.save();
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = 'left';
        ctx.beginPath();
        for (const j of labelled(j0, cols)) {
          const x = ox + j * s + s / 2;
          if (x > G + 4) { ctx.fillText(lab(j), -(G - BAND - 6), x); ctx.moveTo(-(G - BAND - 4), x + 0.5); ctx.lineTo(-(G - BAND), x + 0.5); }
        }
        ctx.stroke();
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
      tip.textContent = epLabel(c.i) + ' ' + shortBdf(c.provider) + ' \u2192 ' + epLabel(c.j) + ' ' +
        shortBdf(c.client) + ':  ' + (c.self ? 'same function' : c.mapType) + '  distance ' + c.distance +
        (c.certain ? '' : ' (uncertain)') + (c.fixable ? '  (ACS-caused: fixable)' : '');
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
      if (MT[k] === 3 || k % (N + 1) === 0) continue;
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
    for (const h of ['pairs', 'map type', 'reason', 'fix (as p2pdma fix recommends it)']) el('th', null, hr).textContent = h;
    const tb = el('tbody', null, table);
    for (const [ci, info] of rows.slice(0, limit)) {
      const cz = D.causes[ci];
      const tr = el('tr', {class: 'cause', title: 'click to show an example pair'}, tb);
      el('td', null, tr).textContent = String(info.n);
      const fixable = FIXABLE[ci] === 1;
      el('span', {class: 'badge ' + PAL[info.mt].cls + (fixable ? ' cell-fixable' : '')}, el('td', null, tr))
        .textContent = MT_NAME[info.mt];
      el('td', null, tr).textContent = cz[0];
      const fx = el('td', {class: 'fix-cell'}, tr);
      if (CFG_ACS[ci]) { paramCode(fx, CFG_ACS[ci]); el('div', {class: 'hint'}, fx).textContent = 'or'; }
      if (cz[1]) paramCode(fx, cz[1]);
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
  // every name pci.names.lookup() takes: alias (GPU0, any case), dN / bN, short or full BDF, OS name
  const byName = new Map();
  const allNames = [];
  function addName(n, k) {
    const key = n.toLowerCase();
    if (!byName.has(key)) { byName.set(key, k); allNames.push(n); } else if (byName.get(key) !== k) byName.set(key, -1);
  }
  devs.forEach((d, k) => {
    addName(d.bdf, k);
    if (d.alias) addName(d.alias, k);
    if (d.label) addName(d.label, k);
    if (d.dn >= 0) addName('d' + d.dn, k);
    for (const o of d.os_names || []) addName(o, k);
  });
  const SHORT_BDF = /^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i;
  const NVME_NS = /^(nvme\d+)(?:c\d+)?n\d+(?:p\d+)?$/;
  function similar(a, b) {  // difflib-like ratio from the edit distance
    const m = a.length, n = b.length, row = Array.from({length: n + 1}, (_, j) => j);
    for (let i = 1; i <= m; i++) {
      let prev = row[0]; row[0] = i;
      for (let j = 1; j <= n; j++) {
        const t = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = t;
      }
    }
    return 1 - row[n] / Math.max(1, m, n);
  }
  function didYouMean(text) {
    const t = text.toLowerCase();
    const near = allNames.map((n) => [similar(t, n.toLowerCase()), n]).filter((x) => x[0] >= 0.6)
      .sort((a, b) => b[0] - a[0]).slice(0, 3).map((x) => x[1]);
    if (near.length) return '; did you mean ' + near.join(', ') + '?';
    const known = devs.filter((d) => d.alias).map((d) => d.alias).slice(0, 8);
    return known.length ? '; known names include ' + known.join(', ') : '';
  }
  function findDevice(name) {
    const text = name.trim();
    let k = byName.get(text.toLowerCase());
    if (k === undefined) {
      const m = SHORT_BDF.exec(text);
      if (m) {
        const dom = m[1] === undefined ? null : parseInt(m[1], 16);
        const bus = parseInt(m[2], 16), slot = parseInt(m[3], 16), fn = parseInt(m[4], 10);
        let hits = [];
        devs.forEach((d, i) => {
          const p = /^([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)\.([0-7])$/i.exec(d.bdf);
          if (p && parseInt(p[2], 16) === bus && parseInt(p[3], 16) === slot && parseInt(p[4], 10) === fn &&
              (dom === null || parseInt(p[1], 16) === dom)) hits.push([i, parseInt(p[1], 16)]);
        });
        if (hits.length > 1 && dom === null) { const z = hits.filter((h) => h[1] === 0); if (z.length === 1) hits = z; }
        if (hits.length === 1) k = hits[0][0];
      }
    }
    if (k === undefined) {
      const ns = NVME_NS.exec(text);
      if (ns) k = byName.get(ns[1].toLowerCase());
    }
    if (k === undefined || k < 0) {
      throw new Error((k === undefined ? 'unknown device ' : 'more than one device is called ') + JSON.stringify(text) +
        ' in machine ' + D.machine + (k === undefined ? didYouMean(text) : ''));
    }
    return k;
  }
  function epIndex(b) {
    const k = findDevice(b);
    if (devs[k].ep < 0) {
      throw new Error(devLabel(k) + ' (' + devs[k].bdf + ') is not in this report\'s matrix' +
        (devs[k].bridge ? ': it is a bridge' : ': the view left it out (p2pdma report --all-functions shows it)'));
    }
    return devs[k].ep;
  }
  function select(p, c) { shownKey = ''; return showPair(epIndex(p), epIndex(c), true); }
  function probe(p, c) { return cell(epIndex(p), epIndex(c)); }
  window.p2pdma = {cell: probe, select: select, data: D};
  $('pair-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const parts = $('pair-input').value.trim().split(/[\s,]+/).filter(Boolean);
    try {
      if (parts.length !== 2) throw new Error('give two devices: provider then client (GPU0 NIC0, d3 d5, 3:0.0 mlx5_0)');
      select(parts[0], parts[1]);
      $('details').removeAttribute('data-error');
    } catch (err) {
      $('details').setAttribute('data-error', String(err.message));
      $('details-body').textContent = String(err.message);
    }
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
  } else if (D.initial) {
    shownKey = '';
    showPair(D.initial[0], D.initial[1], true);
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
