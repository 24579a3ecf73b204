// The alerts view: firing first, then pending, then the recently resolved, newest first.

import { ago, showLive, all, esc } from './api.js';
import { format } from './colors.js';

const POLL_MS = 5000;
const body = document.querySelector('#alerts tbody');
const summary = document.getElementById('alerts-summary');
const ORDER = { firing: 0, pending: 1, resolved: 2 };
let timer = null;

function row(a) {
  const gpu = `#/gpu/${encodeURIComponent(a.hostname)}/${encodeURIComponent(a.uuid)}`;
  return `<tr class="${esc(a.state)}" data-rule="${esc(a.rule)}" data-uuid="${esc(a.uuid)}">` +
    `<td><span class="pill ${esc(a.state)}">${esc(a.state)}</span></td><td>${esc(a.rule)}</td>` +
    `<td><a href="${esc(gpu)}">${esc(a.hostname)} · GPU ${esc(a.gpu_id)}</a></td>` +
    `<td>${esc(format(a.metric, a.value))}</td><td>${esc(`${a.metric} ${a.op} ${a.threshold} for ${a.for}`)}</td>` +
    `<td title="${esc(a.started_at)}">${esc(ago(a.fired_at || a.started_at))}</td>` +
    `<td title="${esc(a.resolved_at || '')}">${esc(a.resolved_at ? ago(a.resolved_at) : '')}</td></tr>`;
}

async function refresh() {
  let list;
  try {
    list = await all('/api/v1/alerts');
  } catch (e) {
    summary.textContent = `Could not load the alerts: ${e.message}`;
    return;
  }
  list.sort(
    (a, b) =>
      (ORDER[a.state] ?? 3) - (ORDER[b.state] ?? 3) ||
      String(b.resolved_at || b.started_at).localeCompare(String(a.resolved_at || a.started_at)),
  );
  const count = (s) => list.filter((a) => a.state === s).length;
  summary.textContent = `${count('firing')} firing · ${count('pending')} pending · ${count('resolved')} resolved recently`;
  body.innerHTML = list.map(row).join('') || '<tr><td colspan="7">No alerts.</td></tr>';
}

export const alerts = {
  show() {
    showLive('polling every 5 s', true);
    refresh();
    timer = setInterval(refresh, POLL_MS);
  },
  hide() {
    clearInterval(timer);
  },
};
