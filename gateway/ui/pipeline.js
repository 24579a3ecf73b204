// The pipeline view: `/api/v1/cluster` every two seconds, as tiles, a member table and queue
// bars, and the kill switch (`ingestion.enabled`), which asks for a confirmation before it
// changes anything and says plainly when the token's role may not.

import { ago, showLive, call, esc } from './api.js';

const POLL_MS = 2000;
const tiles = document.getElementById('pipeline-tiles');
const members = document.querySelector('#members tbody');
const bars = document.getElementById('partitions');
const killState = document.getElementById('kill-state');
const flip = document.getElementById('kill-flip');
const confirmBtn = document.getElementById('kill-confirm');
const message = document.getElementById('kill-message');

let timer = null;
let enabled = null;

const num = (v, digits = 0) =>
  Number.isFinite(v) ? v.toLocaleString('en-US', { maximumFractionDigits: digits }) : '–';
const bytes = (v) => {
  if (!Number.isFinite(v)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const sum = (list, role, field) =>
  list.filter((m) => m.role === role).reduce((a, m) => a + (Number(m.status && m.status[field]) || 0), 0);

function tile(name, value, detail = '', level = '') {
  return `<div class="tile ${level}" data-tile="${esc(name)}"><div class="name">${esc(name)}</div><div class="value">${esc(value)}</div><div class="detail">${esc(detail)}</div></div>`;
}

function figures(m) {
  const s = m.status || {};
  switch (m.role) {
    case 'collector':
      return `${num(s.stored_per_second, 1)} stored/s · ${num(s.stored)} stored · partitions ${(s.partitions || []).length}`;
    case 'streamer':
      return `${num(s.published_per_second, 1)} published/s · ${num(s.published)} published`;
    case 'gateway':
      return `${num(s.websocket_clients)} WebSocket clients`;
    default:
      return '';
  }
}

function render(c) {
  const list = c.members;
  const storage = c.storage;
  const used = storage ? storage.db_size_in_use_bytes : NaN;
  const budget = storage ? storage.budget_bytes : NaN;
  const pct = used / budget;
  tiles.innerHTML = [
    tile('Ingest', `${num(sum(list, 'streamer', 'published_per_second'), 1)} rec/s`, 'published by streamers'),
    tile('Stored', `${num(sum(list, 'collector', 'stored_per_second'), 1)} rec/s`, 'stored by collectors'),
    tile('Queue', num(c.queue.depth), `messages in ${c.queue.partitions.length} partitions`),
    tile('Dead letters', num(c.dead_letters), 'bin/collector dlq list', c.dead_letters > 0 ? 'warn' : ''),
    tile(
      'Storage',
      storage ? `${bytes(used)} of ${bytes(budget)}` : 'no report yet',
      storage ? `${(pct * 100).toFixed(1)}% of the budget · quota ${bytes(storage.quota_bytes)}` : '',
      pct > 0.9 ? 'bad' : pct > 0.75 ? 'warn' : '',
    ),
    tile('Maintainer', c.maintainer || 'none elected', storage ? `report ${ago(storage.updated_unix_ms)}` : '', c.maintainer ? '' : 'warn'),
    tile(
      'Retention',
      storage && storage.retention_cutoff_unix_nano
        ? `kept from ${new Date(storage.retention_cutoff_unix_nano / 1e6).toISOString().replace('.000Z', 'Z')}`
        : 'nothing expires yet',
      storage
        ? `${num(storage.samples_expired_retention || 0)} samples expired by age · ${num(storage.samples_expired_budget)} by budget`
        : '',
    ),
    tile(
      'Configuration',
      `revision ${c.config.revision}`,
      c.config.applied_everywhere ? 'applied everywhere' : `not yet applied by ${c.config.behind.join(', ')}`,
      c.config.applied_everywhere ? '' : 'warn',
    ),
  ].join('');
  members.innerHTML = list
    .map(
      (m) => `<tr data-role="${esc(m.role)}" data-id="${esc(m.id)}"><td>${esc(m.role)}</td><td>${esc(m.id)}</td>` +
        `<td><span class="pill ${esc(m.health)}">${esc(m.health)}</span>${Object.entries(m.reasons || {})
          .map(([k, v]) => ` <span class="reason">${esc(k)}: ${esc(v)}</span>`)
          .join('')}</td>` +
        `<td>${esc(figures(m))}</td><td>${esc(m.version)}</td><td>${esc(m.address || '')}</td><td>${esc(ago(Date.now() - m.age_ms))}</td></tr>`,
    )
    .join('');
  const deepest = Math.max(1, ...c.queue.partitions.map((p) => p.depth));
  bars.innerHTML = c.queue.partitions
    .map(
      (p) => `<div class="bar" title="partition ${p.partition}: ${p.depth} messages, held by ${esc(p.owner || 'nobody')}">` +
        `<div class="fill" style="height:${Math.round((p.depth / deepest) * 100)}%"></div><span>${p.partition}</span><span class="depth">${p.depth}</span></div>`,
    )
    .join('');
  enabled = c.config.ingestion_enabled;
  killState.textContent = enabled ? 'on' : 'off';
  killState.className = enabled ? 'ok' : 'bad';
  flip.textContent = enabled ? 'Stop ingestion…' : 'Resume ingestion…';
  flip.disabled = false;
}

async function refresh() {
  try {
    const body = await call('/api/v1/cluster');
    render(body.data);
  } catch (e) {
    if (!tiles.innerHTML) tiles.textContent = `Could not load the cluster: ${e.message}`;
  }
}

flip.addEventListener('click', () => {
  confirmBtn.hidden = false;
  confirmBtn.textContent = enabled ? 'Yes, stop ingestion everywhere' : 'Yes, resume ingestion';
  message.textContent = enabled
    ? 'Streamers stop publishing and collectors stop claiming until it is switched back on.'
    : '';
});

confirmBtn.addEventListener('click', async () => {
  confirmBtn.hidden = true;
  const want = !enabled;
  try {
    const body = await call('/api/v1/config/ingestion.enabled', {
      method: 'PUT',
      body: JSON.stringify({ value: want }),
    });
    const rev = body.data && body.data.revision ? ` at revision ${body.data.revision}` : '';
    message.textContent = `Ingestion switched ${want ? 'on' : 'off'}${rev}.`;
  } catch (e) {
    message.textContent =
      e.status === 403
        ? 'Refused: switching ingestion needs an admin token.'
        : `Refused: ${e.message}`;
  }
  refresh();
});

export const pipeline = {
  show() {
    showLive('polling every 2 s', true);
    message.textContent = '';
    confirmBtn.hidden = true;
    refresh();
    timer = setInterval(refresh, POLL_MS);
  },
  hide() {
    clearInterval(timer);
  },
};
