// The fleet view: every GPU as one cell of a canvas heatmap, hosts as blocks of cells, coloured
// by one metric's latest value. A canvas draws 25,000 cells in a few milliseconds where as many
// DOM nodes would take seconds to lay out; live records only mark the grid dirty, and it is
// redrawn at most four times a second, so a busy stream costs the browser little.

import { all, live, problem } from './api.js';
import { color, DEFAULT_METRIC, domain, format, gradient, label, METRICS } from './colors.js';

const canvas = document.getElementById('fleet-grid');
const wrap = document.getElementById('fleet-wrap');
const tip = document.getElementById('fleet-tip');
const summary = document.getElementById('fleet-summary');
const legend = document.getElementById('fleet-legend');
const select = document.getElementById('fleet-metric');

const REDRAW_MS = 250;
const ALERTS_POLL_MS = 10000;

let metric = DEFAULT_METRIC;
let gpus = new Map(); // uuid -> { uuid, hostname, gpu_id, value, at (ms) }
let firing = new Map(); // uuid -> Set of rule names
let hosts = []; // [{ name, gpus: [gpu...] }], sorted
let layout = null;
// What the next draw must do: lay out again, repaint everything, or only the changed cells.
let dirty = { layout: true, full: true, timer: null, cells: new Set() };
let painted = null; // the colour range of the last full repaint
let slots = new Map(); // uuid -> [host index, slot]
const byName = new Intl.Collator(undefined, { numeric: true });
let stop = () => {};
let updates = 0;
let hovered = null; // uuid under the pointer

/** Cell geometry: as large as fits, hosts wrapped into rows of equal blocks. */
function computeLayout() {
  const width = Math.max(200, wrap.clientWidth);
  const perHost = Math.max(1, ...hosts.map((h) => h.gpus.length));
  const n = Math.max(1, hosts.length);
  let cell = 28;
  const fits = (s) => {
    const block = perHost * s + Math.max(4, s / 3);
    const perRow = Math.max(1, Math.floor(width / block));
    const rowH = s + Math.max(4, s / 3) + (s >= 14 ? 14 : 0);
    return { block, perRow, rowH, height: Math.ceil(n / perRow) * rowH };
  };
  while (cell > 3 && fits(cell).height > Math.max(300, window.innerHeight - 160)) cell -= 1;
  const g = fits(cell);
  return { cell, perHost, labels: cell >= 14, ...g, width };
}

function rebuildHosts() {
  const byHost = new Map();
  for (const g of gpus.values()) {
    if (!byHost.has(g.hostname)) byHost.set(g.hostname, []);
    byHost.get(g.hostname).push(g);
  }
  const num = (id) => (Number.isNaN(Number(id)) ? id : Number(id));
  hosts = [...byHost.entries()]
    .sort(([a], [b]) => byName.compare(a, b))
    .map(([name, list]) => ({
      name,
      gpus: list.sort((a, b) => (num(a.gpu_id) > num(b.gpu_id) ? 1 : -1)),
    }));
  slots = new Map();
  hosts.forEach((h, i) => h.gpus.forEach((g, slot) => slots.set(g.uuid, [i, slot])));
}

function cellOrigin(hostIndex, slot) {
  const L = layout;
  const x = (hostIndex % L.perRow) * L.block + slot * L.cell;
  const y = Math.floor(hostIndex / L.perRow) * L.rowH + (L.labels ? 14 : 0);
  return { x, y };
}

function paintCell(ctx, g, span) {
  const [i, slot] = slots.get(g.uuid);
  const { x, y } = cellOrigin(i, slot);
  const gap = layout.cell >= 8 ? 1 : 0;
  ctx.fillStyle = Number.isFinite(g.value) ? color(g.value, span) : '#3a3f4b';
  ctx.fillRect(x, y, layout.cell - gap, layout.cell - gap);
  if (firing.has(g.uuid)) {
    ctx.strokeStyle = '#ff2d55';
    ctx.lineWidth = 2;
    ctx.strokeRect(x + 1, y + 1, layout.cell - gap - 2, layout.cell - gap - 2);
  }
}

/** Repaints the whole grid after a layout, range or alert change, and otherwise only the
 * cells whose value changed since the last draw. */
function draw() {
  const t0 = performance.now();
  dirty.timer = null;
  if (dirty.layout) {
    rebuildHosts();
    layout = computeLayout();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(layout.width * dpr);
    canvas.height = Math.round(Math.max(layout.height, 40) * dpr);
    canvas.style.width = `${layout.width}px`;
    canvas.style.height = `${Math.max(layout.height, 40)}px`;
    canvas.getContext('2d').setTransform(dpr, 0, 0, dpr, 0, 0);
    dirty.layout = false;
    dirty.full = true;
  }
  const ctx = canvas.getContext('2d');
  const values = [];
  for (const g of gpus.values()) if (Number.isFinite(g.value)) values.push(g.value);
  const span = domain(metric, values);
  const full = dirty.full || !painted || painted[0] !== span[0] || painted[1] !== span[1];
  if (full) {
    ctx.clearRect(0, 0, layout.width, layout.height + 40);
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    ctx.fillStyle = '#9aa4b2';
    if (layout.labels) {
      hosts.forEach((h, i) => {
        const { x, y } = cellOrigin(i, 0);
        ctx.fillText(h.name, x, y - 13, layout.perHost * layout.cell);
      });
    }
    for (const g of gpus.values()) paintCell(ctx, g, span);
    painted = span;
  } else {
    for (const uuid of dirty.cells) {
      const g = gpus.get(uuid);
      if (g && slots.has(uuid)) paintCell(ctx, g, span);
    }
  }
  dirty.full = false;
  dirty.cells.clear();
  // The first draw with data is the user's "first load"; the benchmark reads this mark.
  if (gpus.size && !performance.getEntriesByName('fleet-drawn').length) performance.mark('fleet-drawn');
  canvas.dataset.gpus = String(gpus.size);
  canvas.dataset.hosts = String(hosts.length);
  canvas.dataset.updates = String(updates);
  writeSummary(values, span);
  writeTip();
  const ms = (performance.now() - t0).toFixed(1);
  if (full) canvas.dataset.fullDrawMs = ms;
  else canvas.dataset.drawMs = ms;
}

function writeSummary(values, [lo, hi]) {
  const n = values.length;
  let [min, max, total] = [Infinity, -Infinity, 0];
  for (const v of values) {
    min = Math.min(min, v);
    max = Math.max(max, v);
    total += v;
  }
  const mean = n ? total / n : NaN;
  const alerting = firing.size ? ` · ${firing.size} GPUs with firing alerts` : '';
  summary.textContent = `${gpus.size} GPUs on ${hosts.length} hosts · ${label(metric)} min ${format(metric, min)}, mean ${format(metric, mean)}, max ${format(metric, max)}${alerting}`;
  if (legend.dataset.range === `${metric}:${lo}:${hi}`) return;
  legend.dataset.range = `${metric}:${lo}:${hi}`;
  legend.innerHTML = '';
  const bar = document.createElement('span');
  bar.className = 'ramp';
  bar.style.background = gradient();
  legend.append(format(metric, lo), bar, format(metric, hi));
}

function schedule(relayout = false, full = false) {
  dirty.layout = dirty.layout || relayout;
  dirty.full = dirty.full || full;
  if (!dirty.timer) dirty.timer = setTimeout(draw, REDRAW_MS);
}

/** Applies a live record if it is newer than what the cell shows. */
function apply(frame) {
  if (frame.type === 'alert') {
    const rules = firing.get(frame.uuid) || new Set();
    if (frame.state === 'firing') rules.add(frame.rule);
    else rules.delete(frame.rule);
    if (rules.size) firing.set(frame.uuid, rules);
    else firing.delete(frame.uuid);
    dirty.full = true;
    return false;
  }
  if (frame.metric !== metric || !frame.uuid) return false;
  const at = Date.parse(frame.timestamp);
  const known = gpus.get(frame.uuid);
  if (known && known.at > at) return false;
  updates += 1;
  if (known) {
    // In place: the layout holds these objects.
    known.value = frame.value;
    known.at = at;
    dirty.cells.add(frame.uuid);
    return false;
  }
  gpus.set(frame.uuid, { uuid: frame.uuid, hostname: frame.hostname, gpu_id: frame.gpu_id, value: frame.value, at });
  return true;
}

async function loadAlerts() {
  const list = await all('/api/v1/alerts?state=firing').catch(() => null);
  if (!list) return;
  firing = new Map();
  for (const a of list) {
    if (!firing.has(a.uuid)) firing.set(a.uuid, new Set());
    firing.get(a.uuid).add(a.rule);
  }
  schedule(false, true);
}

/** Loads the grid for `metric` and follows it live. Frames that arrive during the read are
 * held and applied after it, newest timestamp winning, so nothing between the two is missed. */
async function load() {
  stop();
  let held = [];
  let loaded = false;
  const closeLive = live(
    `metric=${encodeURIComponent(metric)}&include=alerts`,
    (frames) => {
      if (!loaded) {
        held.push(...frames);
        return;
      }
      let relayout = false;
      for (const f of frames) relayout = apply(f) || relayout;
      schedule(relayout);
    },
    (up) => problem('live', up ? null : 'Live updates are interrupted; reconnecting.'),
  );
  const poll = setInterval(loadAlerts, ALERTS_POLL_MS);
  stop = () => {
    closeLive();
    clearInterval(poll);
    problem('live', null);
  };
  summary.textContent = 'loading…';
  try {
    const latest = await all(`/api/v1/fleet/latest?metric=${encodeURIComponent(metric)}`);
    gpus = new Map(latest.map((v) => [v.uuid, { ...v, at: Date.parse(v.timestamp) }]));
  } catch (e) {
    summary.textContent = `Could not load the fleet: ${e.message}`;
  }
  loaded = true;
  held.forEach(apply);
  held = [];
  dirty.layout = true;
  clearTimeout(dirty.timer);
  draw();
  await loadAlerts();
}

function gpuAt(event) {
  if (!layout) return null;
  const r = canvas.getBoundingClientRect();
  const x = event.clientX - r.left;
  const y = event.clientY - r.top;
  const col = Math.floor(x / layout.block);
  const row = Math.floor(y / layout.rowH);
  if (col >= layout.perRow) return null;
  const host = hosts[row * layout.perRow + col];
  const yIn = y - row * layout.rowH - (layout.labels ? 14 : 0);
  if (!host || yIn < 0 || yIn >= layout.cell) return null;
  return host.gpus[Math.floor((x - col * layout.block) / layout.cell)] || null;
}

/** The tooltip follows the GPU under the pointer, and live values while it rests there. */
function writeTip() {
  const g = hovered && gpus.get(hovered);
  tip.hidden = !g;
  if (!g) return;
  const rules = firing.get(g.uuid);
  tip.textContent = `${g.hostname} · GPU ${g.gpu_id} · ${format(metric, g.value)} · ${new Date(g.at).toISOString()}${rules ? ` · firing: ${[...rules].join(', ')}` : ''}`;
}

canvas.addEventListener('mousemove', (event) => {
  const g = gpuAt(event);
  canvas.style.cursor = g ? 'pointer' : 'default';
  hovered = g ? g.uuid : null;
  writeTip();
  tip.style.left = `${event.pageX + 12}px`;
  tip.style.top = `${event.pageY + 12}px`;
});
canvas.addEventListener('mouseleave', () => {
  hovered = null;
  writeTip();
});
canvas.addEventListener('click', (event) => {
  const g = gpuAt(event);
  if (g) location.hash = `#/gpu/${encodeURIComponent(g.hostname)}/${encodeURIComponent(g.uuid)}`;
});
window.addEventListener('resize', () => schedule(true));

for (const m of Object.keys(METRICS)) select.add(new Option(label(m), m));
select.addEventListener('change', () => {
  metric = select.value;
  load();
});

/** The fleet view's entry points, for the router and for tests that aim the mouse. */
export const fleet = {
  show() {
    select.value = metric;
    load();
  },
  hide() {
    stop();
    hovered = null;
    tip.hidden = true;
  },
  /** Where a GPU's cell is, in CSS pixels from the canvas's top left (for a pointer). */
  cellCenter(uuid) {
    const i = hosts.findIndex((h) => h.gpus.some((g) => g.uuid === uuid));
    if (i < 0 || !layout) return null;
    const slot = hosts[i].gpus.findIndex((g) => g.uuid === uuid);
    const { x, y } = cellOrigin(i, slot);
    return { x: Math.round(x + layout.cell / 2), y: Math.round(y + layout.cell / 2) };
  },
  /** GPU metadata already loaded, so the GPU view need not ask again. */
  gpu(uuid) {
    return gpus.get(uuid) || null;
  },
};
