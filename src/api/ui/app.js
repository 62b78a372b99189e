// segswarm dashboard. Plain JS, no build step; talks only to this pod.
//
// Jobs come from GET /v1/jobs (50 per page, optional status filter). Each
// visible job that has not ended is followed through its SSE stream
// (/v1/jobs/{id}/events), read with fetch() so that the Authorization header
// can be sent (EventSource cannot send headers). If streaming fails, the job
// is polled once a second instead. A 401 asks for the token, which is kept in
// sessionStorage for this tab.
'use strict';

const PAGE_SIZE = 50;
const TERMINAL = new Set(['done', 'partial', 'failed', 'canceled']);
const TOKEN_KEY = 'segswarm.token';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  offset: 0,
  status: '',
  total: 0,
  jobs: new Map(), // id -> job object (visible page)
  followers: new Map(), // id -> AbortController
  hls: null,
};

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

// --- API -------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h.Authorization = 'Bearer ' + state.token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { 'content-type': 'application/json' } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) {
    askForToken();
    throw new Unauthorized('the API token is missing or wrong');
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.error ? data.error.message : response.status + ' ' + response.statusText;
    throw new Error(message);
  }
  return data;
}

// --- Token -----------------------------------------------------------------

function askForToken() {
  stopAllFollowers();
  $('token-panel').hidden = false;
  $('token-input').focus();
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = $('token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('token-input').value = '';
  $('token-panel').hidden = true;
  refreshAll();
});

// --- Jobs list -------------------------------------------------------------

async function loadJobs() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(state.offset) });
  if (state.status) query.set('status', state.status);
  try {
    const page = await api('GET', '/v1/jobs?' + query);
    if (page.jobs.length === 0 && state.offset > 0 && page.total > 0) {
      state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return loadJobs();
    }
    state.total = page.total;
    renderList(page.jobs);
    $('jobs-status').textContent = page.total === 0 ? 'No jobs yet.' : '';
  } catch (err) {
    if (!(err instanceof Unauthorized)) $('jobs-status').textContent = 'Could not list jobs: ' + err.message;
  }
}

function renderList(jobs) {
  const list = $('jobs');
  const keep = new Set(jobs.map((j) => j.id));
  for (const [id, controller] of state.followers) {
    if (!keep.has(id)) {
      controller.abort();
      state.followers.delete(id);
    }
  }
  state.jobs = new Map();
  const items = jobs.map((job) => {
    // Keep what a live stream already knows if it is newer.
    const known = document.querySelector(`li[data-job-id="${job.id}"]`);
    const item = known || createJobItem(job.id);
    const current = known && known.job && progressRank(known.job) > progressRank(job) ? known.job : job;
    updateJobItem(item, current);
    state.jobs.set(job.id, current);
    return item;
  });
  list.replaceChildren(...items);
  for (const job of state.jobs.values()) follow(job);
  const first = state.total === 0 ? 0 : state.offset + 1;
  const last = Math.min(state.offset + PAGE_SIZE, state.total);
  $('page-info').textContent = `${first}–${last} of ${state.total}`;
  $('prev').disabled = state.offset === 0;
  $('next').disabled = state.offset + PAGE_SIZE >= state.total;
}

// Orders job snapshots: a terminal status beats a live one, then progress.
function progressRank(job) {
  return (TERMINAL.has(job.status) ? 1000 : 0) + job.progress;
}

function createJobItem(id) {
  const item = document.createElement('li');
  item.className = 'job';
  item.dataset.jobId = id;
  item.innerHTML = `
    <div class="job-head">
      <span class="job-source"></span>
      <span class="badge job-status"></span>
      <span class="job-id"></span>
    </div>
    <div class="meter">
      <progress max="100" value="0"></progress>
      <span class="job-percent"></span>
    </div>
    <ul class="renditions"></ul>
    <p class="job-error" hidden></p>
    <div class="actions">
      <button type="button" class="play">Play</button>
      <button type="button" class="danger cancel">Cancel</button>
    </div>`;
  item.querySelector('.play').addEventListener('click', () => play(item.job));
  item.querySelector('.cancel').addEventListener('click', () => cancel(item.job));
  return item;
}

function updateJobItem(item, job) {
  item.job = job;
  const name = job.source.split('/').pop() || job.source;
  item.querySelector('.job-source').textContent = name;
  item.querySelector('.job-source').title = job.source;
  const badge = item.querySelector('.job-status');
  badge.textContent = job.status;
  badge.className = 'badge job-status ' + job.status;
  item.dataset.status = job.status;
  item.querySelector('.job-id').textContent = `${job.id} · ${job.mode} · ${job.created_at}`;
  const bar = item.querySelector('.meter progress');
  bar.value = job.progress;
  bar.setAttribute('aria-label', `Progress of ${name}`);
  item.querySelector('.job-percent').textContent = job.progress.toFixed(1) + ' %';
  const renditions = item.querySelector('.renditions');
  renditions.replaceChildren(
    ...job.renditions.map((r) => {
      const li = document.createElement('li');
      li.className = 'meter';
      const label = document.createElement('span');
      label.textContent = r.name;
      const p = document.createElement('progress');
      p.max = Math.max(r.total, 1);
      p.value = r.done;
      p.setAttribute('aria-label', `${r.name} segments of ${name}`);
      const count = document.createElement('span');
      count.textContent = `${r.done}/${r.total}`;
      li.append(label, p, count);
      return li;
    }),
  );
  const error = item.querySelector('.job-error');
  error.hidden = !job.error;
  error.textContent = job.error || '';
  item.querySelector('.play').hidden = !job.playable;
  item.querySelector('.cancel').hidden = TERMINAL.has(job.status);
}

function applyJob(job) {
  const item = document.querySelector(`li[data-job-id="${job.id}"]`);
  if (!item) return;
  const ended = TERMINAL.has(job.status) && !(item.job && TERMINAL.has(item.job.status));
  state.jobs.set(job.id, job);
  updateJobItem(item, job);
  if (ended) loadCluster(); // its units are no longer held
}

// --- Live updates: SSE over fetch, or polling ---------------------------------

function follow(job) {
  if (TERMINAL.has(job.status) || state.followers.has(job.id)) return;
  const controller = new AbortController();
  state.followers.set(job.id, controller);
  streamEvents(job.id, controller.signal)
    .catch(() => pollJob(job.id, controller.signal))
    .finally(() => {
      if (state.followers.get(job.id) === controller) state.followers.delete(job.id);
    });
}

async function streamEvents(id, signal) {
  let lastId = '';
  for (;;) {
    const h = headers({ accept: 'text/event-stream' });
    if (lastId) h['last-event-id'] = lastId;
    const response = await fetch(`/v1/jobs/${id}/events`, { headers: h, signal });
    if (response.status === 401) {
      askForToken();
      return;
    }
    if (!response.ok || !response.body || !response.body.getReader) throw new Error('no stream');
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseEvent(block);
        if (event.id) lastId = event.id;
        if (event.data) {
          const job = JSON.parse(event.data);
          applyJob(job);
          if (TERMINAL.has(job.status)) return;
        }
      }
    }
    // The stream ended without a final event (a pod restart, a proxy):
    // reconnect after a second, resuming after the last event seen.
    await sleep(1000, signal);
  }
}

function parseEvent(block) {
  const event = { id: '', type: 'message', data: '' };
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') event.id = value;
    else if (field === 'event') event.type = value;
    else if (field === 'data') data.push(value);
  }
  event.data = data.join('\n');
  return event;
}

async function pollJob(id, signal) {
  while (!signal.aborted) {
    try {
      const job = await api('GET', `/v1/jobs/${id}`);
      applyJob(job);
      if (TERMINAL.has(job.status)) return;
    } catch (err) {
      if (err instanceof Unauthorized) return;
    }
    await sleep(1000, signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener('abort', () => {
        clearTimeout(timer);
        reject(new Error('aborted'));
      }, { once: true });
    }
  });
}

function stopAllFollowers() {
  for (const controller of state.followers.values()) controller.abort();
  state.followers.clear();
}

// --- Submit and cancel -----------------------------------------------------

$('submit-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = $('submit-status');
  const body = { source: $('source').value.trim(), mode: $('job-mode').value };
  const ladder = $('ladder').value.trim();
  if (ladder) body.ladder = ladder;
  status.textContent = 'Submitting…';
  try {
    const job = await api('POST', '/v1/jobs', body);
    status.textContent = `Submitted job ${job.id}.`;
    status.dataset.jobId = job.id;
    state.offset = 0;
    await loadJobs();
  } catch (err) {
    status.textContent = 'Not submitted: ' + err.message;
  }
});

async function cancel(job) {
  if (!job) return;
  try {
    applyJob(await api('DELETE', `/v1/jobs/${job.id}`));
  } catch (err) {
    $('jobs-status').textContent = `Could not cancel ${job.id}: ${err.message}`;
  }
}

$('status-filter').addEventListener('change', () => {
  state.status = $('status-filter').value;
  state.offset = 0;
  loadJobs();
});
$('prev').addEventListener('click', () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  loadJobs();
});
$('next').addEventListener('click', () => {
  state.offset += PAGE_SIZE;
  loadJobs();
});

// --- Player ----------------------------------------------------------------

function play(job) {
  if (!job) return;
  const video = $('video');
  const quality = $('quality');
  const status = $('player-status');
  closePlayer();
  $('player-panel').hidden = false;
  $('player-title').textContent = 'Player: ' + (job.source.split('/').pop() || job.id);
  quality.replaceChildren(new Option('auto', '-1'));
  if (window.Hls && window.Hls.isSupported()) {
    const hls = new window.Hls();
    state.hls = hls;
    hls.on(window.Hls.Events.MANIFEST_PARSED, (_, data) => {
      for (const [index, level] of data.levels.entries()) {
        const kbps = Math.round(level.bitrate / 1000);
        quality.append(new Option(`${level.height}p (${kbps} kb/s)`, String(index)));
      }
      status.textContent = '';
      video.play().catch((err) => { status.textContent = 'Press play: ' + err.message; });
    });
    hls.on(window.Hls.Events.ERROR, (_, data) => {
      if (data.fatal) status.textContent = `Playback error: ${data.type} ${data.details}`;
    });
    hls.loadSource(job.master_url);
    hls.attachMedia(video);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = job.master_url; // Safari plays HLS natively.
    video.play().catch(() => {});
  } else {
    status.textContent = 'This browser cannot play HLS.';
  }
  $('player-panel').scrollIntoView({ block: 'nearest' });
}

$('quality').addEventListener('change', () => {
  if (state.hls) state.hls.currentLevel = Number($('quality').value);
});

function closePlayer() {
  if (state.hls) {
    state.hls.destroy();
    state.hls = null;
  }
  const video = $('video');
  video.removeAttribute('src');
  video.load();
  $('player-panel').hidden = true;
}
$('close-player').addEventListener('click', closePlayer);

// --- Cluster ---------------------------------------------------------------

async function loadCluster() {
  try {
    const cluster = await api('GET', '/v1/cluster');
    $('mode').textContent = cluster.mode;
    $('worker-id').textContent = cluster.worker_id;
    const rows = cluster.holders.map((h) => {
      const tr = document.createElement('tr');
      for (const text of [h.worker_id, h.job, h.unit]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    $('holders').replaceChildren(...rows);
    $('holders-table').hidden = rows.length === 0;
    $('holders-empty').hidden = rows.length > 0;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $('mode').textContent = 'unknown';
  }
}

function refreshAll() {
  loadJobs();
  loadCluster();
}

refreshAll();
setInterval(() => { if ($('token-panel').hidden) loadCluster(); }, 2000);
setInterval(() => { if ($('token-panel').hidden) loadJobs(); }, 5000);
