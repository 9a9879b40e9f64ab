// dmctl hub dashboard. Everything from the hub is written with textContent
// or DOM properties, never parsed as HTML.
'use strict';

const API_VERSION = '2021-04-12';
const MAX_FEED = 500;

const $ = (sel, root = document) => root.querySelector(sel);
const csrf = () => $('meta[name="csrf-token"]').content;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pretty(v) { return JSON.stringify(v === undefined || v === null ? {} : v, null, 2); }

// withoutMeta drops $version and $metadata: what the editor may send.
function withoutMeta(m) {
  const out = {};
  for (const [k, v] of Object.entries(m || {})) if (!k.startsWith('$')) out[k] = v;
  return out;
}

// withoutMetadata drops a property section's $metadata (timestamps), as the
// server-rendered page does.
function withoutMetadata(m) {
  const out = {};
  for (const [k, v] of Object.entries(m || {})) if (k !== '$metadata') out[k] = v;
  return out;
}

function devicePath(id, mid) {
  let p = '/devices/' + encodeURIComponent(id);
  if (mid) p += '/modules/' + encodeURIComponent(mid);
  return p;
}

function twinPath(id, mid) {
  let p = '/api/twins/' + encodeURIComponent(id);
  if (mid) p += '/modules/' + encodeURIComponent(mid);
  return p;
}

// request calls the dashboard; non-GET requests carry the CSRF token.
async function request(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (method !== 'GET') init.headers['X-CSRF-Token'] = csrf();
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  return { status: resp.status, ok: resp.ok, data, resp };
}

// errorText is the message of a REST error body.
function errorText(r) {
  const d = r.data;
  if (d && typeof d === 'object') return d.Message || d.message || d.error || JSON.stringify(d);
  return String(d || r.status);
}

// Event stream: every page runs one and keeps the status line.
const listeners = [];
function onHubEvent(fn) { listeners.push(fn); }

function startEvents(query) {
  const state = $('#stream-state');
  const received = $('#events-received');
  const lost = $('#events-lost');
  let nReceived = 0, nLost = 0;
  const src = new EventSource('/stream/events' + query);
  src.onopen = () => { state.textContent = 'live'; state.className = 'state live'; };
  src.onerror = () => { state.textContent = 'reconnecting'; state.className = 'state'; };
  const handle = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    nReceived++;
    received.textContent = String(nReceived);
    for (const fn of listeners) fn(ev);
  };
  for (const kind of ['connected', 'disconnected', 'methodCall', 'methodAnswer', 'reportedPatch', 'desiredPatch', 'message']) {
    src.addEventListener(kind, handle);
  }
  src.addEventListener('lost', (msg) => {
    try { nLost += JSON.parse(msg.data).lost; } catch (e) { return; }
    lost.textContent = String(nLost);
  });
}

// Devices page: rows follow connections and activity live.
function devicesPage() {
  const table = $('#devices');
  const filtered = table.dataset.filtered === 'true';
  const tbody = table.tBodies[0];
  const rows = new Map();
  for (const tr of tbody.rows) rows.set(tr.dataset.device, tr);

  function addRow(id) {
    const tr = el('tr');
    tr.dataset.device = id;
    const idCell = el('td', 'id');
    const a = el('a', '', id);
    a.href = devicePath(id);
    idCell.append(a);
    tr.append(idCell, el('td', 'status'), el('td', 'connection', 'disconnected'),
      el('td', 'activity'), el('td', 'modules'), el('td', 'tags'));
    tbody.append(tr);
    rows.set(id, tr);
    const empty = $('.empty');
    if (empty) empty.remove();
    return tr;
  }

  onHubEvent((ev) => {
    let tr = rows.get(ev.deviceId);
    if (!tr) {
      if (filtered) return;
      tr = addRow(ev.deviceId);
    }
    $('td.activity', tr).textContent = ev.time;
    if (ev.moduleId) return;
    if (ev.kind === 'connected' || ev.kind === 'disconnected') {
      const c = $('td.connection', tr);
      c.textContent = ev.kind;
      c.className = 'connection ' + ev.kind;
    }
  });
  startEvents('');
}

// Device page: the twin, the editor, direct methods, the secret and the feed.
function devicePage() {
  const id = document.body.dataset.device;
  const mid = document.body.dataset.module || '';
  // The editor saves with the etag of the twin its text came from: a
  // change made elsewhere since then makes the save fail (412) instead of
  // being overwritten. While the user has not typed, it follows the twin.
  const editor = $('#twin-edit');
  let editEtag = $('#twin-etag').textContent;
  let loadedText = editor.value;
  const edited = () => editor.value !== loadedText;

  async function loadTwin() {
    const r = await request('GET', twinPath(id, mid) + '?api-version=' + API_VERSION);
    if (!r.ok) return;
    const t = r.data;
    if (!edited()) {
      editEtag = t.etag;
      editor.value = loadedText = pretty({ tags: t.tags || {}, properties: { desired: withoutMeta(t.properties && t.properties.desired) } });
    }
    $('#twin-etag').textContent = t.etag;
    $('#twin-version').textContent = String(t.version);
    $('#twin-tags').textContent = pretty(t.tags);
    $('#twin-desired').textContent = pretty(withoutMetadata(t.properties && t.properties.desired));
    $('#twin-reported').textContent = pretty(withoutMetadata(t.properties && t.properties.reported));
    const conn = (t.connectionState || '').toLowerCase() === 'connected' ? 'connected' : 'disconnected';
    $('#connection').textContent = conn;
    $('#connection').className = conn;
  }

  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; loadTwin(); }, 150);
  }

  $('#twin-save').addEventListener('click', async () => {
    const out = $('#twin-result');
    let patch;
    try { patch = JSON.parse(editor.value); } catch (e) {
      out.textContent = 'not saved: the editor does not hold valid JSON (' + e.message + ')';
      out.className = 'result error';
      return;
    }
    const r = await request('PATCH', twinPath(id, mid) + '?api-version=' + API_VERSION, patch, { 'If-Match': editEtag });
    if (r.ok) {
      loadedText = editor.value; // saved: follow the twin again
      out.textContent = 'saved: etag ' + r.data.etag + ', version ' + r.data.version;
      out.className = 'result ok';
      loadTwin();
    } else if (r.status === 412) {
      out.textContent = 'not saved: the twin changed since the editor was loaded (etag ' + editEtag + '); reload the page and edit again.';
      out.className = 'result error';
    } else {
      out.textContent = 'not saved (' + r.status + '): ' + errorText(r);
      out.className = 'result error';
    }
  });

  $('#method-invoke').addEventListener('click', async () => {
    const status = $('#method-status');
    const body = $('#method-payload-result');
    const name = $('#method-name').value.trim();
    let payload = null;
    const text = $('#method-payload').value.trim();
    if (!name) { status.textContent = ''; body.textContent = 'give the method a name'; return; }
    if (text) {
      try { payload = JSON.parse(text); } catch (e) {
        status.textContent = '';
        body.textContent = 'not sent: the payload is not JSON (' + e.message + ')';
        return;
      }
    }
    status.textContent = '…';
    body.textContent = '';
    const r = await request('POST', twinPath(id, mid) + '/methods?api-version=' + API_VERSION, {
      methodName: name,
      payload,
      responseTimeoutInSeconds: Number($('#method-response-timeout').value) || 30,
      connectTimeoutInSeconds: Number($('#method-connect-timeout').value) || 0,
    });
    if (r.ok && r.data && typeof r.data === 'object') {
      status.textContent = String(r.data.status);
      body.textContent = pretty(r.data.payload);
    } else {
      status.textContent = String(r.status);
      body.textContent = typeof r.data === 'object' ? pretty(r.data) : String(r.data || '');
    }
  });

  $('#cs-show').addEventListener('click', async () => {
    const path = '/secrets' + devicePath(id, mid);
    const r = await request('POST', path);
    const out = $('#cs-value');
    out.textContent = r.ok && r.data.connectionString ? r.data.connectionString : (r.data && r.data.error) || ('error ' + r.status);
  });

  const feed = $('#events');
  onHubEvent((ev) => {
    if (ev.deviceId !== id || (mid && ev.moduleId !== mid)) return;
    feed.prepend(eventItem(ev));
    while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();
    if (!ev.moduleId || ev.moduleId === mid) {
      $('#activity').textContent = ev.time;
      if (['reportedPatch', 'desiredPatch', 'connected', 'disconnected'].includes(ev.kind) && (ev.moduleId || '') === mid) refresh();
    }
  });
  let q = '?device=' + encodeURIComponent(id);
  if (mid) q += '&module=' + encodeURIComponent(mid);
  startEvents(q);
}

// eventItem renders one event of the feed.
function eventItem(ev) {
  const li = el('li', 'event');
  li.dataset.kind = ev.kind;
  const when = el('time', '', new Date(ev.time).toLocaleTimeString([], { hour12: false }));
  when.dateTime = ev.time;
  when.title = ev.time;
  li.append(when, el('span', 'kind', ev.kind));
  if (ev.moduleId) li.append(el('span', 'module', ev.moduleId));
  const parts = [];
  if (ev.method) parts.push(ev.method);
  if (ev.status) parts.push('status ' + ev.status);
  if (ev.error) parts.push(ev.error);
  if (ev.reason) parts.push(ev.reason);
  if (ev.version) parts.push('$version ' + ev.version);
  if (parts.length) li.append(el('span', 'what', parts.join(' · ')));
  if (ev.properties) {
    const props = Object.entries(ev.properties).map(([k, v]) => k + '=' + v).join(', ');
    li.append(el('span', 'props', props));
  }
  if (ev.binary) li.append(el('code', 'body', '(' + ev.bytes + ' bytes, not text)'));
  else if (ev.body) li.append(el('code', 'body', ev.body + (ev.truncated ? ' … (' + ev.bytes + ' bytes)' : '')));
  return li;
}

// setProgress updates a row's bar and percentage.
function setProgress(tr, pct) {
  $('.bar', tr).value = pct;
  $('.percent', tr).textContent = pct + '%';
}

function progressCell() {
  const td = el('td', 'progress');
  const bar = el('progress', 'bar');
  bar.max = 100;
  td.append(bar, ' ', el('span', 'percent', '0%'));
  return td;
}

// table keeps one row per key, creating rows on first sight.
function keyedRows(table, attr, make) {
  const tbody = table.tBodies[0];
  const rows = new Map();
  for (const tr of tbody.rows) rows.set(tr.dataset[attr], tr);
  return (key, first) => {
    let tr = rows.get(key);
    if (!tr) {
      tr = make(key);
      tr.dataset[attr] = key;
      if (first) tbody.prepend(tr); else tbody.append(tr);
      rows.set(key, tr);
      const empty = $('.empty');
      if (empty) empty.classList.add('hidden');
    }
    return tr;
  };
}

function jobsPage() {
  const row = keyedRows($('#jobs'), 'job', (id) => {
    const tr = el('tr');
    tr.append(el('td', 'id', id), el('td', 'type'), el('td', 'status'), el('td', 'counts'), progressCell());
    return tr;
  });
  watchJobs((snap) => {
    for (const j of snap.jobs.slice().reverse()) {
      const tr = row(j.jobId, true);
      $('td.type', tr).textContent = j.type;
      $('td.status', tr).textContent = j.status;
      $('td.counts', tr).textContent = j.counts;
      setProgress(tr, j.percent);
    }
  });
  startEvents('');
}

function configurationsPage() {
  const row = keyedRows($('#configurations'), 'configuration', (id) => {
    const tr = el('tr');
    const cond = el('td', 'condition');
    cond.append(el('code'));
    tr.append(el('td', 'id', id), el('td', 'priority'), cond, el('td', 'targeted'), el('td', 'applied'), progressCell());
    return tr;
  });
  watchJobs((snap) => {
    for (const c of snap.configurations) {
      const tr = row(c.id, false);
      $('td.priority', tr).textContent = String(c.priority);
      $('td.condition code', tr).textContent = c.targetCondition;
      $('td.targeted', tr).textContent = String(c.targeted);
      $('td.applied', tr).textContent = String(c.applied);
      setProgress(tr, c.percent);
    }
  });
  startEvents('');
}

function watchJobs(fn) {
  const src = new EventSource('/stream/jobs');
  src.addEventListener('jobs', (msg) => {
    try { fn(JSON.parse(msg.data)); } catch (e) { /* a malformed snapshot is skipped */ }
  });
}

function hubPage() {
  $('#hub-cs-show').addEventListener('click', async () => {
    const r = await request('POST', '/secrets/hub');
    $('#hub-cs').textContent = r.ok ? r.data.connectionString : (r.data && r.data.error) || ('error ' + r.status);
  });
  startEvents('');
}

const pages = {
  devices: devicesPage,
  device: devicePage,
  jobs: jobsPage,
  configurations: configurationsPage,
  hub: hubPage,
};

document.addEventListener('DOMContentLoaded', () => {
  const page = pages[document.body.dataset.page];
  if (page) page(); else if (document.body.dataset.page) startEvents('');
});
