// The GPU view: one chart per metric over the last hour, day or week of that GPU's data, from
// the aggregated endpoint (a week is 336 half-hour points, not 60,480 samples), with live
// samples appended as they are stored.

import { call, live, problem } from './api.js';
import { format, label, unit } from './colors.js';

const charts = document.getElementById('gpu-charts');
const title = document.getElementById('gpu-title');
const summary = document.getElementById('gpu-summary');
const buttons = [...document.querySelectorAll('#view-gpu [data-range]')];

/** Each range's span and step, in seconds: about 120 to 340 points per chart. */
export const RANGES = {
  '1h': { span: 3600, step: 30 },
  '1d': { span: 86400, step: 300 },
  '1w': { span: 604800, step: 1800 },
};
const REDRAW_MS = 500;

let plots = new Map(); // metric -> { plot, xs, ys, box }
let stop = () => {};
let current = null; // { hostname, uuid, range }
let window_ = [0, 0]; // the range shown, in Unix seconds

function chart(metric, xs, ys) {
  const box = document.createElement('div');
  box.className = 'chart';
  box.dataset.metric = metric;
  const h = document.createElement('h3');
  h.textContent = `${label(metric)}${unit(metric) ? ` (${unit(metric)})` : ''}`;
  const plotEl = document.createElement('div');
  box.append(h, plotEl);
  charts.append(box);
  const width = Math.max(280, box.clientWidth - 18);
  const [start, end] = window_;
  const plot = new window.uPlot(
    {
      width,
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      // The chosen range, not the data's extent: a GPU with one sample still shows its hour.
      scales: { x: { time: true, range: (u, min, max) => [start, Math.max(end, max)] } },
      axes: [
        { stroke: '#9aa4b2', grid: { stroke: '#2a2f3a' } },
        { stroke: '#9aa4b2', grid: { stroke: '#2a2f3a' }, size: 60 },
      ],
      series: [{}, { stroke: '#4ea1ff', width: 1.5, points: { show: xs.length < 60 }, value: (u, v) => format(metric, v) }],
    },
    [xs, ys],
    plotEl,
  );
  const entry = { plot, xs, ys, box };
  box.dataset.points = String(xs.length);
  plots.set(metric, entry);
  return entry;
}

function clear() {
  stop();
  for (const p of plots.values()) p.plot.destroy();
  plots = new Map();
  charts.innerHTML = '';
}

async function load() {
  clear();
  const { hostname, uuid, range } = current;
  buttons.forEach((b) => b.classList.toggle('on', b.dataset.range === range));
  title.textContent = `${hostname} · ${uuid}`;
  summary.textContent = 'loading…';
  let gpu;
  try {
    const gpus = await call(`/api/v1/hosts/${encodeURIComponent(hostname)}/gpus`);
    gpu = gpus.data.find((g) => g.uuid === uuid);
  } catch (e) {
    summary.textContent = `Could not load this GPU: ${e.message}`;
    return;
  }
  if (!gpu) {
    summary.textContent = `No GPU ${uuid} on ${hostname}.`;
    return;
  }
  title.textContent = `${gpu.hostname} · GPU ${gpu.gpu_id} (${gpu.device}) · ${gpu.model}`;
  // The range ends at the GPU's newest sample (now, for a GPU that reports), bucket included,
  // so a GPU that stopped reporting still shows its last hours.
  const { span, step } = RANGES[range];
  const last = Math.floor(Date.parse(gpu.last_seen) / 1000);
  const end = Math.floor(last / step) * step + step;
  const start = end - span;
  window_ = [start, end];
  const iso = (s) => new Date(s * 1000).toISOString();
  const series = new Map();
  let pending = [];
  let loaded = false;
  let timer = null;
  const redraw = () => {
    timer = null;
    for (const p of plots.values()) {
      p.plot.setData([p.xs, p.ys]);
      p.box.dataset.points = String(p.xs.length);
    }
  };
  const append = (f) => {
    if (f.uuid !== uuid || f.type === 'alert') return;
    const x = Date.parse(f.timestamp) / 1000;
    const p = plots.get(f.metric) || chart(f.metric, [], []);
    if (p.xs.length && x <= p.xs[p.xs.length - 1]) return;
    p.xs.push(x);
    p.ys.push(f.value);
    if (!timer) timer = setTimeout(redraw, REDRAW_MS);
  };
  stop = live(
    `gpu=${encodeURIComponent(uuid)}`,
    (frames) => (loaded ? frames.forEach(append) : pending.push(...frames)),
    (up) => problem('live', up ? null : 'Live updates are interrupted; reconnecting.'),
  );
  try {
    const body = await call(
      `/api/v1/gpus/${encodeURIComponent(uuid)}/telemetry?step=${step}s&agg=avg&start_time=${iso(start)}&end_time=${iso(end)}`,
    );
    for (const pt of body.data) {
      if (!series.has(pt.metric)) series.set(pt.metric, { xs: [], ys: [] });
      const s = series.get(pt.metric);
      s.xs.push(Date.parse(pt.timestamp) / 1000);
      s.ys.push(pt.value);
    }
    summary.textContent = `${body.count} points, ${step >= 60 ? `${step / 60}-minute` : `${step}-second`} averages from ${iso(start)} to ${iso(end)}; live samples are appended`;
  } catch (e) {
    summary.textContent = `Could not load the telemetry: ${e.message}`;
  }
  for (const m of [...series.keys()].sort((a, b) => label(a).localeCompare(label(b)))) {
    chart(m, series.get(m).xs, series.get(m).ys);
  }
  loaded = true;
  pending.forEach(append);
  pending = [];
}

buttons.forEach((b) =>
  b.addEventListener('click', () => {
    location.hash = `#/gpu/${encodeURIComponent(current.hostname)}/${encodeURIComponent(current.uuid)}/${b.dataset.range}`;
  }),
);

export const gpuView = {
  show(hostname, uuid, range) {
    current = { hostname, uuid, range: RANGES[range] ? range : '1h' };
    load();
  },
  hide() {
    clear();
    problem('live', null);
  },
};
