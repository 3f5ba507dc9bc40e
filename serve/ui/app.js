// The dashboard of `vmstash serve` (spec/SERVE.md §6). Plain ES2020, no dependencies.
// Every piece of data from the API goes into the page through textContent or attributes,
// never through innerHTML.
'use strict';

const TOKEN_KEY = 'vmstash.token';
const FINAL = new Set(['succeeded', 'failed', 'canceled']);
const ACTIVE = new Set(['queued', 'running']);
const CALENDAR_WEEKS = 8;

const S = {
  token: null,
  me: null,            // whoami
  jobs: new Map(),     // job id -> row record (see jobRow)
  jobEventSeq: 0,      // counts `job` events, to keep them over an older GET /v1/jobs
  fetchingJobs: new Set(), // ids of unknown jobs being fetched after a progress event
  events: null,        // AbortController of the event stream
  lastEventId: null,   // the last SSE id seen, for Last-Event-ID
  repo: null,          // the selected repository's name
  repos: [],
  repoSeq: 0,          // discards answers for a repository no longer selected
  refreshTimer: null,
};

// ---------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

// Creates an element: attrs are attributes (a value of null/false skips it, true is an
// empty attribute), except `on*` functions (listeners); children are nodes or strings.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

const canOperate = () => !!S.me && (S.me.role === 'operator' || S.me.role === 'admin');

function humanBytes(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

function humanDuration(s) {
  if (typeof s !== 'number' || !isFinite(s) || s < 0) return '—';
  s = Math.round(s);
  const d = Math.floor(s / 86400), hh = Math.floor(s / 3600) % 24;
  const m = Math.floor(s / 60) % 60, sec = s % 60;
  const p2 = (x) => String(x).padStart(2, '0');
  if (d > 0) return `${d}d ${hh}h`;
  if (hh > 0) return `${hh}h ${p2(m)}m`;
  if (m > 0) return `${m}m ${p2(sec)}s`;
  return `${sec}s`;
}

function localTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

// A <time> element showing `iso` in local time.
function timeEl(iso) {
  return h('time', { datetime: iso || null, title: iso || null }, localTime(iso));
}

// A local calendar day as YYYY-MM-DD.
function dayKey(d) {
  const p2 = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}`;
}

function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// ---------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Calls the API; resolves to the JSON body (null when empty), or the text with
// {text: true}. Rejects with an ApiError carrying the body's `error`. A 401 ends the
// session (back to the login form) unless {login: true}.
async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${opts.token || S.token}`, ...(opts.headers || {}) };
  const init = { method: opts.method || 'GET', headers, cache: 'no-store' };
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach the server (${e.message})`);
  }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`.trim();
    try {
      const body = await res.json();
      if (body && typeof body.error === 'string') msg = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    if (res.status === 401 && !opts.login) sessionEnded(msg);
    throw new ApiError(res.status, msg);
  }
  const text = await res.text();
  if (opts.text) return text;
  if (opts.response) return { res, body: text ? JSON.parse(text) : null };
  return text ? JSON.parse(text) : null;
}

// Shows an error in the banner (a 401 already went back to the login form).
function showError(e) {
  if (e instanceof ApiError && e.status === 401) return;
  $('error-text').textContent = e && e.message ? e.message : String(e);
  $('error').hidden = false;
}

// Runs an async function, showing its failure in the banner.
function guard(fn) {
  return (...args) => Promise.resolve().then(() => fn(...args)).catch(showError);
}

// ---------------------------------------------------------------------------------------
// Login and session

async function login(token, fromForm) {
  const err = $('login-error');
  err.hidden = true;
  try {
    const me = await api('/v1/whoami', { token, login: true });
    S.token = token;
    S.me = me;
    sessionStorage.setItem(TOKEN_KEY, token);
    startApp();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
    if (fromForm || e.status !== 401) {
      err.textContent = e.status === 401 ? `This token is not valid: ${e.message}` : e.message;
      err.hidden = false;
    }
  }
}

function showLogin() {
  $('app').hidden = true;
  $('who').hidden = true;
  $('login').hidden = false;
  $('token-input').value = '';
  $('token-input').focus();
}

// Stops everything that belongs to a session and empties the page.
function stopSession() {
  if (S.events) S.events.abort();
  S.events = null;
  S.lastEventId = null;
  S.token = null;
  S.me = null;
  S.jobs.clear();
  S.repo = null;
  S.repoSeq++;
  clearTimeout(S.refreshTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ['jobs', 'schedules', 'snapshots', 'stats', 'repo-select']) $(id).replaceChildren();
  $('error').hidden = true;
}

function logout() {
  stopSession();
  showLogin();
}

// A 401 during the session: the token was revoked or expired.
function sessionEnded(msg) {
  if (!S.token) return;
  stopSession();
  showLogin();
  const err = $('login-error');
  err.textContent = `Your session ended, log in again (${msg}).`;
  err.hidden = false;
}

function startApp() {
  const me = S.me;
  $('login').hidden = true;
  $('login-error').hidden = true;
  $('who-name').textContent = me.name || me.id || '';
  $('who-name').title = me.id ? `token ${me.id}` : '';
  $('who-role').textContent = me.role;
  $('who-tenant').textContent = me.tenant ? `tenant ${me.tenant}` : 'all tenants';
  $('who').hidden = false;
  $('app').hidden = false;
  setLive(false);
  startEvents();
  guard(loadJobs)();
  guard(loadSchedules)();
  guard(loadRepositories)();
}

// ---------------------------------------------------------------------------------------
// Jobs

function jobTitle(j) {
  if (j.job) return j.job;
  if (Array.isArray(j.vms) && j.vms.length) return j.vms.join(', ');
  return j.repository || j.id;
}

function jobWhere(j) {
  const parts = [];
  if (j.job && Array.isArray(j.vms) && j.vms.length) parts.push(j.vms.join(', '));
  if (j.repository) parts.push(`repository ${j.repository}`);
  if (j.hypervisor) parts.push(`on ${j.hypervisor}`);
  if (j.trigger) parts.push(`by ${j.trigger}`);
  return parts.join(' · ');
}

function percent(done, total) {
  if (!(total > 0)) return 0;
  return Math.min(100, Math.max(0, Math.round((done / total) * 1000) / 10));
}

// A progress bar: a <progress> with aria-valuenow, the percent of done/total.
function setBar(bar, done, total) {
  if (total > 0) {
    const p = percent(done, total);
    bar.max = 100;
    bar.value = p;
    bar.setAttribute('aria-valuenow', String(p));
    bar.title = `${p}%`;
  } else {
    bar.removeAttribute('value'); // indeterminate
    bar.removeAttribute('aria-valuenow');
    bar.title = '';
  }
}

// Builds a job's row once; updateJobRow fills it in.
function jobRow(id) {
  const r = { id, job: null, seq: -1, logOpen: false, logLoading: null };
  r.kind = h('span', { class: 'kind' });
  r.title = h('span', { class: 'job-title', 'data-testid': 'job-title' });
  r.state = h('span', { class: 'state', 'data-testid': 'job-state' });
  r.where = h('div', { class: 'where' });
  r.times = h('div', { class: 'times' });
  r.cancel = h('button', { type: 'button', class: 'danger', 'data-testid': 'cancel', onclick: () => cancelJob(r) }, 'cancel');
  r.logBtn = h('button', { type: 'button', 'data-testid': 'show-log', 'aria-expanded': 'false', onclick: () => toggleLog(r) }, 'log');
  r.actions = h('div', { class: 'actions' }, r.logBtn);
  r.bar = h('progress', { 'data-testid': 'progress', max: '100', 'aria-valuemin': '0', 'aria-valuemax': '100' });
  r.barText = h('span', { class: 'bar-text', 'data-testid': 'progress-text' });
  r.disks = h('div', { class: 'disks' });
  r.progress = h('div', { class: 'progress' }, h('div', { class: 'bar-line' }, r.bar, r.barText), r.disks);
  r.error = h('p', { class: 'job-error', 'data-testid': 'job-error', hidden: true });
  r.snaps = h('p', { class: 'job-snaps', hidden: true });
  r.log = h('pre', { class: 'log', 'data-testid': 'job-log', hidden: true });
  r.el = h('article', { class: 'job', 'data-testid': 'job-row', 'data-job-id': id },
    h('div', { class: 'job-head' }, r.kind, r.title, r.state, r.actions),
    r.where, r.times, r.progress, r.error, r.snaps, r.log);
  return r;
}

function updateJobRow(r, j) {
  r.job = j;
  r.el.dataset.state = j.state;
  r.el.className = `job state-${j.state}`;
  r.kind.textContent = j.kind;
  r.title.textContent = jobTitle(j);
  r.state.textContent = j.state;
  r.state.className = `state state-${j.state}`;
  r.where.textContent = jobWhere(j);
  r.times.replaceChildren(...[
    h('span', {}, 'created ', timeEl(j.created)),
    j.started ? h('span', {}, 'started ', timeEl(j.started)) : null,
    j.finished ? h('span', {}, 'finished ', timeEl(j.finished)) : null,
  ].filter(Boolean));
  // Cancel: only while queued or running, only for operators; absent otherwise.
  const showCancel = canOperate() && ACTIVE.has(j.state);
  if (showCancel && !r.cancel.isConnected) { r.cancel.disabled = false; r.actions.prepend(r.cancel); }
  if (!showCancel && r.cancel.isConnected) r.cancel.remove();
  r.error.hidden = !j.error;
  r.error.textContent = j.error ? `error: ${j.error}` : '';
  const snaps = Array.isArray(j.snapshots) ? j.snapshots : [];
  r.snaps.hidden = snaps.length === 0;
  r.snaps.textContent = snaps.length ? `snapshots: ${snaps.map((s) => String(s).slice(0, 8)).join(', ')}` : '';
  updateProgress(r, j.progress);
}

function updateProgress(r, p) {
  if (r.job) r.job.progress = p;
  const j = r.job || {};
  const total = p && p.bytes_total > 0;
  // Shown while running, and afterwards when there was something to count.
  r.progress.hidden = !(j.state === 'running' || (p && total));
  if (r.progress.hidden) return;
  p = p || {};
  setBar(r.bar, p.bytes_scanned || 0, p.bytes_total || 0);
  const parts = [];
  if (total) parts.push(`${percent(p.bytes_scanned || 0, p.bytes_total)}% · ${humanBytes(p.bytes_scanned || 0)} of ${humanBytes(p.bytes_total)}`);
  if (j.state === 'running') {
    if (typeof p.rate === 'number') parts.push(`${humanBytes(p.rate)}/s`);
    if (typeof p.eta_seconds === 'number') parts.push(`ETA ${humanDuration(p.eta_seconds)}`);
  }
  if (p.bytes_stored) parts.push(`${humanBytes(p.bytes_stored)} stored`);
  r.barText.textContent = parts.join(' · ');
  const disks = Array.isArray(p.disks) ? p.disks : [];
  // Per-disk bars, rebuilt only when the set of disks changes.
  const sig = disks.map((d) => `${d.vm}/${d.disk}`).join('\n');
  if (r.disks.dataset.sig !== sig) {
    r.disks.dataset.sig = sig;
    r.disks.replaceChildren(...disks.map((d) => h('div', { class: 'disk' },
      h('span', { class: 'disk-name' }, `${d.vm}/${d.disk}`),
      h('progress', { 'data-testid': 'disk-progress', max: '100', 'aria-valuemin': '0', 'aria-valuemax': '100' }),
      h('span', { class: 'disk-text' }))));
  }
  disks.forEach((d, i) => {
    const row = r.disks.children[i];
    setBar(row.children[1], d.bytes_scanned || 0, d.bytes_total || 0);
    row.children[2].textContent = d.bytes_total > 0
      ? `${humanBytes(d.bytes_scanned || 0)} of ${humanBytes(d.bytes_total)}` : '';
  });
}

// Inserts or updates a job; rows stay newest first (ids sort by creation).
function upsertJob(j, fromEvent) {
  if (!j || typeof j.id !== 'string') return;
  let r = S.jobs.get(j.id);
  const prev = r && r.job ? r.job.state : null;
  if (!r) {
    r = jobRow(j.id);
    S.jobs.set(j.id, r);
    const list = $('jobs');
    let before = null;
    for (const el of list.children) {
      if (el.dataset.jobId < j.id) { before = el; break; }
    }
    list.insertBefore(r.el, before);
    $('jobs-empty').hidden = true;
  }
  if (fromEvent) r.seq = ++S.jobEventSeq;
  updateJobRow(r, j);
  // A job that just finished may have made snapshots and moved the schedules.
  if (fromEvent && prev !== j.state && FINAL.has(j.state)) refreshSoon();
}

async function loadJobs() {
  const seq = S.jobEventSeq;
  const jobs = await api('/v1/jobs?limit=100');
  if (!S.token) return;
  const seen = new Set();
  for (const j of jobs) {
    seen.add(j.id);
    const r = S.jobs.get(j.id);
    // A `job` event that came while the list was on its way is at least as new.
    if (r && r.seq > seq) continue;
    upsertJob(j, false);
  }
  for (const [id, r] of S.jobs) {
    if (!seen.has(id) && r.seq <= seq) { r.el.remove(); S.jobs.delete(id); }
  }
  $('jobs-empty').hidden = S.jobs.size > 0;
}

// A progress or log event for a job not shown yet (e.g. older than the list): fetch it.
async function fetchJob(id) {
  if (S.fetchingJobs.has(id)) return;
  S.fetchingJobs.add(id);
  try {
    const j = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    if (S.token && !S.jobs.has(id)) upsertJob(j, false);
  } finally {
    S.fetchingJobs.delete(id);
  }
}

async function cancelJob(r) {
  r.cancel.disabled = true;
  try {
    await api(`/v1/jobs/${encodeURIComponent(r.id)}/cancel`, { method: 'POST' });
  } catch (e) {
    r.cancel.disabled = false;
    throw e;
  }
}

function logLine(ev) {
  return `${ev.time || ''} ${String(ev.level || '').toUpperCase()} ${ev.message || ''}`;
}

function appendLog(r, text) {
  const pre = r.log;
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(text.endsWith('\n') ? text : `${text}\n`);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

async function toggleLog(r) {
  if (r.logOpen) {
    r.logOpen = false;
    r.log.hidden = true;
    r.logBtn.textContent = 'log';
    r.logBtn.setAttribute('aria-expanded', 'false');
    return;
  }
  r.logOpen = true;
  r.logBtn.textContent = 'hide log';
  r.logBtn.setAttribute('aria-expanded', 'true');
  r.log.textContent = 'loading…';
  r.log.hidden = false;
  // Log events that come while the log is on its way are kept, and added after it
  // unless it already holds them.
  const pending = [];
  r.logLoading = pending;
  try {
    const text = await api(`/v1/jobs/${encodeURIComponent(r.id)}/log`, { text: true });
    if (r.logLoading !== pending) return;
    r.log.textContent = '';
    if (text) appendLog(r, text);
    const have = new Set(text.split('\n').map((l) => l.trim().toLowerCase()));
    for (const line of pending) if (!have.has(line.trim().toLowerCase())) appendLog(r, line);
    if (!text && !pending.length) r.log.textContent = '(empty log)\n';
  } catch (e) {
    r.log.textContent = `(cannot load the log: ${e.message})\n`;
    throw e;
  } finally {
    if (r.logLoading === pending) r.logLoading = null;
  }
}

function onLogEvent(ev) {
  const r = S.jobs.get(ev.id);
  if (!r || !r.logOpen) return;
  const line = logLine(ev);
  if (r.logLoading) { r.logLoading.push(line); return; }
  if (r.log.textContent === '(empty log)\n') r.log.textContent = '';
  appendLog(r, line);
}

// ---------------------------------------------------------------------------------------
// Live updates: Server-Sent Events over fetch()
//
// EventSource cannot send an Authorization header, so the stream is read with fetch() and
// parsed here as the HTML standard's "event stream interpretation" says, for the fields
// this API uses: id, event, data; a comment (":" …) is ignored; `retry` is ignored (we
// reconnect after 1–2 s).

function setLive(on) {
  const el = $('live-status');
  el.textContent = on ? 'live' : 'reconnecting';
  el.classList.toggle('on', on);
}

// An incremental parser: feed() it decoded text in any pieces; it calls
// onEvent({id, event, data}) at each blank line that ends an event with data.
class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';        // text not yet split into whole lines
    this.event = '';      // the event name buffer
    this.data = [];       // the data lines of the event being read
    this.id = null;       // the last event id buffer: it persists across events
    this.lastWasCR = false;
  }

  feed(text) {
    // A "\r\n" split across two chunks: the "\r" already ended a line, skip its "\n".
    if (this.lastWasCR && text.startsWith('\n')) text = text.slice(1);
    this.lastWasCR = false;
    this.buf += text;
    // Lines end with "\r\n", "\n" or "\r".
    let start = 0;
    const re = /\r\n|\n|\r/g;
    let m;
    while ((m = re.exec(this.buf)) !== null) {
      // A "\r" at the very end may be the first half of "\r\n": note it and go on.
      if (m[0] === '\r' && m.index === this.buf.length - 1) this.lastWasCR = true;
      this.line(this.buf.slice(start, m.index));
      start = re.lastIndex;
    }
    this.buf = this.buf.slice(start);
  }

  line(line) {
    if (line === '') { this.dispatch(); return; }   // a blank line ends the event
    if (line.startsWith(':')) return;                // a comment, e.g. ": keep-alive"
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1); // one space after the colon is dropped
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') { if (!value.includes('\0')) this.id = value; }
    // Any other field (retry, unknown) is ignored.
  }

  dispatch() {
    const data = this.data.join('\n');
    const hadData = this.data.length > 0;
    const ev = { id: this.id, event: this.event || 'message', data };
    this.event = '';
    this.data = [];
    if (hadData) this.onEvent(ev);   // an event without data is not dispatched
  }
}

function startEvents() {
  if (S.events) S.events.abort();
  const ctl = new AbortController();
  S.events = ctl;
  runEvents(ctl.signal).catch(() => {});
}

// Connects, reads, and reconnects after 1–2 s with Last-Event-ID, until aborted.
async function runEvents(signal) {
  let reported = false; // a failing stream is reported once, not at every retry
  while (!signal.aborted) {
    // Each connection has its own controller: a watchdog aborts a stream silent for
    // longer than three keep-alives (a half-open connection).
    const conn = new AbortController();
    const stop = () => conn.abort();
    signal.addEventListener('abort', stop, { once: true });
    let watchdog = null;
    const kick = () => { clearTimeout(watchdog); watchdog = setTimeout(stop, 50000); };
    try {
      const headers = { Authorization: `Bearer ${S.token}`, Accept: 'text/event-stream' };
      if (S.lastEventId !== null) headers['Last-Event-ID'] = S.lastEventId;
      kick();
      const res = await fetch('/v1/events', { headers, signal: conn.signal, cache: 'no-store' });
      if (res.status === 401) { clearTimeout(watchdog); sessionEnded('401 on the event stream'); return; }
      if (!res.ok || !res.body) {
        let msg = `event stream: ${res.status} ${res.statusText}`;
        try { const b = await res.json(); if (b && b.error) msg = `event stream: ${b.error}`; } catch (_) { /* no JSON */ }
        throw new ApiError(res.status, msg);
      }
      setLive(true);
      reported = false;
      const parser = new SSEParser((ev) => {
        if (ev.id !== null) S.lastEventId = ev.id;
        if (!signal.aborted) onEvent(ev);
      });
      const reader = res.body.getReader();
      const decoder = new TextDecoder('utf-8');
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        kick();
        parser.feed(decoder.decode(value, { stream: true }));
      }
      parser.feed(decoder.decode()); // flush; an event without its blank line is dropped
    } catch (e) {
      if (!signal.aborted && !reported && e instanceof ApiError && e.status !== 0) {
        reported = true;
        showError(e);
      }
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener('abort', stop);
    }
    if (signal.aborted) return;
    setLive(false);
    await sleep(1000 + Math.random() * 1000, signal);
  }
}

function onEvent(ev) {
  let data;
  try { data = JSON.parse(ev.data); } catch (_) { return; }
  switch (ev.event) {
    case 'job':
      upsertJob(data, true);
      break;
    case 'progress': {
      const r = S.jobs.get(data.id);
      if (r) updateProgress(r, data.progress);
      else guard(fetchJob)(data.id);
      break;
    }
    case 'log':
      onLogEvent(data);
      break;
    case 'reset':
      guard(loadJobs)();
      break;
    default:
      break; // a newer event type: ignored (§ version rules)
  }
}

// ---------------------------------------------------------------------------------------
// Configured jobs: "back up now"

async function loadSchedules() {
  const list = await api('/v1/schedules');
  if (!S.token) return;
  const body = $('schedules');
  body.replaceChildren(...list.map(scheduleRow));
  $('schedules-empty').hidden = list.length > 0;
  $('schedules-table').hidden = list.length === 0;
}

function scheduleRow(s) {
  const vms = s.all ? 'all VMs' : (s.vms || []).join(', ');
  const cell = h('td', { class: 'actions' });
  if (canOperate() && (s.kind ?? 'backup') === 'backup') {
    const btn = h('button', { type: 'button', 'data-testid': 'backup-now', 'data-job': s.name }, 'back up now');
    btn.addEventListener('click', guard(() => backupNow(btn, s.name)));
    cell.append(btn);
  }
  return h('tr', { 'data-testid': 'schedule-row', 'data-job': s.name },
    h('td', {}, h('strong', {}, s.name)),
    h('td', {}, vms, s.hypervisor ? h('span', { class: 'muted' }, ` on ${s.hypervisor}`) : null),
    h('td', {}, s.repository || ''),
    h('td', {}, h('code', {}, s.schedule || '—'), s.time_zone ? h('span', { class: 'muted' }, ` ${s.time_zone}`) : null),
    h('td', {}, s.next_run ? timeEl(s.next_run) : '—'),
    cell);
}

// Starts a job; shows it at once from the answer (or its Location), before its event.
async function startJob(body) {
  const { res, body: job } = await api('/v1/jobs', {
    method: 'POST', body, headers: { 'Idempotency-Key': randomKey() }, response: true,
  });
  if (job && typeof job.id === 'string' && job.state) {
    if (!S.jobs.has(job.id)) upsertJob(job, false);
    return job;
  }
  const loc = res.headers.get('Location');
  if (loc) {
    const j = await api(new URL(loc, location.href).pathname);
    if (j && !S.jobs.has(j.id)) upsertJob(j, false);
    return j;
  }
  return null;
}

async function backupNow(btn, name) {
  btn.disabled = true;
  try {
    await startJob({ kind: 'backup', job: name });
    btn.textContent = 'started';
    setTimeout(() => { btn.textContent = 'back up now'; btn.disabled = false; }, 2000);
  } catch (e) {
    btn.disabled = false;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------
// Repositories, snapshots, calendar, stats

async function loadRepositories() {
  const repos = await api('/v1/repositories');
  if (!S.token) return;
  S.repos = repos;
  const sel = $('repo-select');
  sel.replaceChildren(...repos.map((r) => h('option', { value: r.name }, r.tenant ? `${r.name} (${r.tenant})` : r.name)));
  if (!repos.length) {
    $('snapshots-empty').hidden = false;
    $('snapshots-empty').textContent = 'No repositories are configured.';
    return;
  }
  const keep = repos.find((r) => r.name === S.repo);
  selectRepo(keep ? keep.name : repos[0].name);
}

function selectRepo(name) {
  S.repo = name;
  const sel = $('repo-select');
  if (sel.value !== name) sel.value = name;
  const repo = S.repos.find((r) => r.name === name);
  $('repo-location').textContent = repo ? repo.location : '';
  $('stats').replaceChildren();
  $('snapshots').replaceChildren();
  $('snapshots-empty').hidden = true;
  loadRepo();
}

// Loads the selected repository's snapshots and stats; answers for a repository that is
// no longer selected are dropped.
function loadRepo() {
  const seq = ++S.repoSeq;
  const name = S.repo;
  if (!name) return;
  const base = `/v1/repositories/${encodeURIComponent(name)}`;
  // On failure the part is emptied, so it never shows another repository's data.
  guard(async () => {
    const snaps = await api(`${base}/snapshots`).catch((e) => { if (seq === S.repoSeq) $('snapshots').replaceChildren(); throw e; });
    if (seq === S.repoSeq) renderSnapshots(name, snaps);
  })();
  guard(async () => {
    const stats = await api(`${base}/stats`).catch((e) => { if (seq === S.repoSeq) $('stats').replaceChildren(); throw e; });
    if (seq === S.repoSeq) renderStats(stats);
  })();
}

// After a job finished: the snapshots, stats and next runs may have changed.
function refreshSoon() {
  clearTimeout(S.refreshTimer);
  S.refreshTimer = setTimeout(() => {
    if (!S.token) return;
    loadRepo();
    guard(loadSchedules)();
  }, 1000);
}

const snapVm = (s) => s.vm ?? s.name ?? '(unknown VM)';
const snapHost = (s) => s.host ?? s.hostname ?? '';
function snapSize(s) {
  if (Array.isArray(s.disks) && s.disks.length) return s.disks.reduce((a, d) => a + (d.size || 0), 0);
  return s.summary ? s.summary.disk_bytes : undefined;
}

function renderSnapshots(repo, snaps) {
  const groups = new Map();
  for (const s of snaps) {
    const vm = snapVm(s);
    if (!groups.has(vm)) groups.set(vm, []);
    groups.get(vm).push(s);
  }
  const names = [...groups.keys()].sort((a, b) => a.localeCompare(b));
  $('snapshots-empty').textContent = 'No snapshots in this repository.';
  $('snapshots-empty').hidden = snaps.length > 0;
  $('snapshots').replaceChildren(...names.map((vm) => vmGroup(repo, vm, groups.get(vm))));
}

function vmGroup(repo, vm, snaps) {
  const latest = snaps.reduce((a, s) => (!a || s.time > a.time ? s : a), null);
  const tbody = h('tbody', {});
  for (const s of snaps) tbody.append(...snapshotRows(repo, s));
  return h('section', { class: 'vm', 'data-testid': 'vm-group', 'data-vm': vm },
    h('div', { class: 'vm-head' },
      h('h3', {}, vm),
      h('span', { class: 'muted' }, `${snaps.length} snapshot${snaps.length === 1 ? '' : 's'}`,
        latest ? ` · latest ${localTime(latest.time)}` : '')),
    calendar(snaps),
    h('table', { class: 'list snapshots' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'Snapshot'), h('th', {}, 'Time'), h('th', {}, 'Host'), h('th', {}, 'Tags'),
        h('th', { class: 'num' }, 'Disks'), h('th', { class: 'num' }, 'Added'), h('th', {}))),
      tbody));
}

function snapshotRows(repo, s) {
  const sum = s.summary || {};
  const disks = Array.isArray(s.disks) ? s.disks : [];
  const diskTitle = disks.map((d) => `${d.name}: ${humanBytes(d.size)}`).join('\n');
  const actions = h('td', { class: 'actions' });
  const row = h('tr', { 'data-testid': 'snapshot-row', 'data-snapshot-id': s.id },
    h('td', {}, h('code', { title: s.id }, s.short_id || String(s.id).slice(0, 8))),
    h('td', {}, timeEl(s.time)),
    h('td', {}, snapHost(s)),
    h('td', {}, ...(s.tags || []).map((t) => h('span', { class: 'tag' }, t))),
    h('td', { class: 'num', title: diskTitle }, humanBytes(snapSize(s))),
    h('td', { class: 'num' }, humanBytes(sum.bytes_added)),
    actions);
  if (!canOperate()) return [row];
  const formRow = h('tr', { class: 'restore-row', hidden: true },
    h('td', { colspan: '7' }, restoreForm(repo, s, () => { formRow.hidden = true; })));
  actions.append(h('button', {
    type: 'button', 'data-testid': 'restore',
    onclick: () => {
      formRow.hidden = !formRow.hidden;
      if (!formRow.hidden) formRow.querySelector('input').focus();
    },
  }, 'restore'));
  return [row, formRow];
}

function restoreForm(repo, s, close) {
  const vm = snapVm(s);
  // Where: a configured hypervisor's host (over SFTP), or the daemon's own host (only below
  // its restore_dirs; a tenant's token must choose a hypervisor).
  const where = h('select', { 'data-testid': 'restore-hypervisor' },
    h('option', { value: '' }, "the daemon's host"));
  api('/v1/hypervisors').then((list) => {
    where.append(...list.map((hv) => h('option', { value: hv.name }, hv.name)));
    if (list.length) where.value = list[0].name;
  }).catch(showError);
  const target = h('input', { type: 'text', required: true, 'data-testid': 'restore-target', placeholder: `/var/lib/libvirt/images/${vm}-restored`, spellcheck: 'false' });
  const define = h('input', { type: 'checkbox', 'data-testid': 'restore-define' });
  const name = h('input', { type: 'text', 'data-testid': 'restore-name', placeholder: `${vm}-restored`, spellcheck: 'false' });
  const submit = h('button', { type: 'submit', 'data-testid': 'restore-submit' }, 'restore');
  const form = h('form', { class: 'restore-form', 'data-testid': 'restore-form' },
    h('span', { class: 'muted' }, `Restore ${s.short_id || s.id} of ${vm}`),
    h('label', {}, 'onto ', where),
    h('label', {}, 'target directory ', target),
    h('label', {}, define, ' define the VM'),
    h('label', {}, 'as ', name),
    submit,
    h('button', { type: 'button', onclick: close }, 'close'));
  form.addEventListener('submit', guard(async (e) => {
    e.preventDefault();
    const body = { kind: 'restore', repository: repo, snapshot: s.id, target: target.value.trim(), define: define.checked };
    if (where.value) body.hypervisor = where.value;
    if (define.checked && name.value.trim()) body.name = name.value.trim();
    if (!body.target) { target.focus(); return; }
    submit.disabled = true;
    try {
      await startJob(body);
      close();
      form.reset();
    } finally {
      submit.disabled = false;
    }
  }));
  return form;
}

// A GitHub-style grid: one column per week (Monday first), one cell per day, for the last
// CALENDAR_WEEKS weeks up to today; a day with snapshots is marked, its title the count.
function calendar(snaps) {
  const counts = new Map();
  for (const s of snaps) {
    const d = new Date(s.time);
    if (isNaN(d)) continue;
    const k = dayKey(d);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  const today = new Date();
  today.setHours(12, 0, 0, 0); // noon: adding days stays on the right date across DST
  const start = new Date(today);
  start.setDate(start.getDate() - ((today.getDay() + 6) % 7) - 7 * (CALENDAR_WEEKS - 1));
  const grid = h('div', { class: 'cal-grid', role: 'img' });
  let marked = 0;
  for (let d = new Date(start), i = 0; i < CALENDAR_WEEKS * 7; i++, d.setDate(d.getDate() + 1)) {
    const k = dayKey(d);
    if (d > today) { grid.append(h('span', { class: 'day future' })); continue; }
    const n = counts.get(k) || 0;
    if (n) marked++;
    const label = `${d.toLocaleDateString(undefined, { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric' })}: ${n ? `${n} backup${n === 1 ? '' : 's'}` : 'no backup'}`;
    grid.append(h('span', {
      class: `day level-${Math.min(n, 3)}`, 'data-testid': 'calendar-day', 'data-date': k,
      'data-count': String(n), title: label,
    }));
  }
  grid.setAttribute('aria-label', `backups on ${marked} of the last ${CALENDAR_WEEKS * 7} days`);
  const days = ['Mon', '', 'Wed', '', 'Fri', '', 'Sun'].map((t) => h('span', {}, t));
  return h('div', { class: 'calendar', 'data-testid': 'calendar' },
    h('div', { class: 'cal-days' }, ...days), grid,
    h('div', { class: 'cal-legend muted' },
      `last ${CALENDAR_WEEKS} weeks · `,
      h('span', { class: 'day level-0' }), ' none ',
      h('span', { class: 'day level-1' }), ' 1 ',
      h('span', { class: 'day level-3' }), ' 3+'));
}

function ratio(x) {
  return typeof x === 'number' && isFinite(x) ? `${x.toFixed(2)}×` : '—';
}

function renderStats(st) {
  const logical = st.logical_bytes || 0;
  const stored = st.stored_bytes || 0;
  const saved = logical > 0 ? Math.max(0, 100 - (stored / logical) * 100) : null;
  const dl = h('dl', { class: 'stat-numbers' },
    h('div', {}, h('dt', {}, 'snapshots'), h('dd', { 'data-testid': 'stat-snapshots' }, String(st.snapshots ?? '—'))),
    h('div', {}, h('dt', {}, 'logical'), h('dd', { 'data-testid': 'stat-logical', title: `${logical} bytes` }, humanBytes(logical))),
    h('div', {}, h('dt', {}, 'stored'), h('dd', { 'data-testid': 'stat-stored', title: `${stored} bytes` }, humanBytes(stored))),
    h('div', {}, h('dt', {}, 'dedup'), h('dd', { 'data-testid': 'stat-dedup' }, ratio(st.dedup_ratio))),
    h('div', {}, h('dt', {}, 'compression'), h('dd', { 'data-testid': 'stat-compression' }, ratio(st.compression_ratio))),
    saved === null ? null : h('div', {}, h('dt', {}, 'saved'), h('dd', {}, `${saved.toFixed(1)}%`)));
  // Two horizontal bars on one scale: logical and stored.
  const W = 420, BAR = 22, GAP = 10, LABEL = 70, VALUE = 90;
  const max = Math.max(logical, stored, 1);
  const chart = svg('svg', {
    class: 'stat-chart', viewBox: `0 0 ${W} ${2 * BAR + 3 * GAP}`, width: W, height: 2 * BAR + 3 * GAP,
    role: 'img', 'aria-label': `logical ${humanBytes(logical)}, stored ${humanBytes(stored)}`,
  });
  [['logical', logical, 'bar-logical'], ['stored', stored, 'bar-stored']].forEach(([label, v, cls], i) => {
    const y = GAP + i * (BAR + GAP);
    const w = Math.max(v > 0 ? 2 : 0, ((W - LABEL - VALUE) * v) / max);
    chart.append(
      svg('text', { x: 0, y: y + BAR * 0.7, class: 'chart-label' }, label),
      svg('rect', { x: LABEL, y, width: w.toFixed(1), height: BAR, rx: 3, class: cls, 'data-bytes': v },
        svg('title', {}, `${label}: ${humanBytes(v)}`)),
      svg('text', { x: LABEL + w + 6, y: y + BAR * 0.7, class: 'chart-value' }, humanBytes(v)));
  });
  $('stats').replaceChildren(dl, chart);
}

// ---------------------------------------------------------------------------------------
// Start

function init() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('token-input').value.trim();
    if (token) login(token, true);
  });
  $('logout').addEventListener('click', logout);
  $('error-dismiss').addEventListener('click', () => { $('error').hidden = true; });
  $('repo-select').addEventListener('change', (e) => selectRepo(e.target.value));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved, false);
  else showLogin();
}

init();
