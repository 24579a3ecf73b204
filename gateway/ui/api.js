// Talking to the gateway: JSON calls with the token, cursor pages, and a WebSocket that
// reconnects. Connection trouble is shown in one banner instead of a blank page.

const TOKEN_KEY = 'telemetry.token';
const banner = document.getElementById('banner');
const indicator = document.getElementById('live');
const problems = new Map(); // source -> message; the banner shows the first

/** An API answer other than success, in the contract's error shape. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) || '';
}

/** Shows (or clears, with `null`) a connection problem from one source. */
export function problem(source, message) {
  if (message) problems.set(source, message);
  else problems.delete(source);
  const first = problems.values().next();
  banner.hidden = first.done;
  banner.textContent = first.done ? '' : first.value;
  document.body.classList.toggle('stale', !first.done);
}

let askToken = () => {};
/** Set by the app: what to do when the gateway answers 401. */
export function onUnauthorized(handler) {
  askToken = handler;
}

/** One JSON call. Resolves to the whole success body; rejects with an ApiError. */
export async function call(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (e) {
    problem('gateway', `Cannot reach the gateway at ${location.host}; retrying.`);
    throw new ApiError(0, 'UNREACHABLE', 'the gateway is unreachable');
  }
  problem('gateway', null);
  const body = await resp.json().catch(() => null);
  if (resp.ok) {
    problem('etcd', null);
    return body;
  }
  const message = body && body.error ? body.error : `${resp.status} ${resp.statusText}`;
  if (resp.status === 401) askToken(message);
  if (resp.status === 503) problem('etcd', `The gateway cannot serve data: ${message}`);
  throw new ApiError(resp.status, body && body.code, message);
}

/** Every page of a list, following `next_cursor`. */
export async function all(path) {
  const sep = path.includes('?') ? '&' : '?';
  let body = await call(path);
  const data = body.data.slice();
  while (body.next_cursor) {
    body = await call(`${path}${sep}cursor=${encodeURIComponent(body.next_cursor)}`);
    data.push(...body.data);
  }
  return data;
}

/**
 * A live WebSocket on `/api/v1/ws/telemetry?query`, reconnecting with backoff. `onFrames` gets
 * arrays of parsed frames; `onState` gets true (open) or false (lost). Returns a closer.
 */
export function live(query, onFrames, onState = () => {}) {
  let socket = null;
  let closed = false;
  let delay = 500;
  const open = () => {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/v1/ws/telemetry${query ? `?${query}` : ''}`;
    const protocols = token() ? ['telemetry.v1', `bearer.${token()}`] : ['telemetry.v1'];
    socket = new WebSocket(url, protocols);
    socket.onopen = () => {
      delay = 500;
      showLive('live', true);
      onState(true);
    };
    socket.onmessage = (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      onFrames(Array.isArray(frame) ? frame : [frame]);
    };
    socket.onclose = () => {
      if (closed) return;
      showLive('reconnecting…', false);
      onState(false);
      setTimeout(() => !closed && open(), delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
  return () => {
    closed = true;
    showLive('polling', true);
    if (socket) socket.close();
  };
}

/** The header's indicator: live over a WebSocket, reconnecting, or polling. */
export function showLive(text, up) {
  indicator.textContent = text;
  indicator.classList.toggle('off', !up);
}

export function saveToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Text with HTML's special characters escaped, for the few tables built as HTML. */
export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** "3 s ago", "5 min ago", from an RFC 3339 time or Unix milliseconds. */
export function ago(when) {
  const ms = Date.now() - (typeof when === 'number' ? when : Date.parse(when));
  if (!Number.isFinite(ms)) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
