// @ts-nocheck
// jobstream dashboard: reads the HTTP API and the SSE streams only. It keeps a
// token in sessionStorage, lists a workspace's jobs live, and shows one job's
// steps and the log of one step (viewer.js: any size, from the log routes,
// live chunks counted once by seq, resumed from the last applied seq after
// any reconnect, so no line is lost or doubled).
import { ACTIVE, TERMINAL, loadSnapshot, newDetail, reduceDetail, reduceListJob } from './reducer.js';
import { LogViewer } from './viewer.js';

(() => {
  'use strict';

  const LIST_CAP = 300;           // jobs kept in the list
  const EVENT_NAMES = ['job:created', 'job:status', 'job:progress', 'step:started',
    'step:progress', 'step:output', 'step:completed', 'job:event'];
  const STEP_ICON = { pending: '○', running: '●', completed: '✓', failed: '✕', skipped: '–' };
  const TOKEN_KEY = 'jobstream.token';
  const WS_KEY = 'jobstream.workspace';
  const RECENT_KEY = 'jobstream.recentWorkspaces';

  const $ = (id) => document.getElementById(id);
  const store = { // sessionStorage, which may be unavailable
    get: (k) => { try { return sessionStorage.getItem(k); } catch { return null; } },
    set: (k, v) => { try { if (v == null) sessionStorage.removeItem(k); else sessionStorage.setItem(k, v); } catch { /* ignore */ } },
  };

  // An element with a class and children (strings become text nodes, never HTML).
  function h(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.filter((c) => c != null));
    return node;
  }
  function setText(node, text) {
    const value = text == null ? '' : String(text);
    if (node.textContent !== value) node.textContent = value;
  }
  function setAttr(node, name, value) {
    if (value == null) node.removeAttribute(name);
    else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
  }

  // ---------------------------------------------------------------- state

  const state = {
    config: { demo: false, workspaceId: null, token: null },
    token: null,
    claims: null,
    workspace: null,
    jobs: new Map(),           // id -> JobSnapshot (+ stepName), the workspace list
    pendingFetch: new Map(),   // job id -> events that arrived while its snapshot loads
    filter: '',
    detail: null,              // the open job, see openJob()
    wsStream: null,
    reconnects: 0,             // outages recovered from since the page loaded
    outage: false,
    dirty: { list: false, detail: false },
  };

  // ---------------------------------------------------------------- formatting

  function fmtDuration(ms) {
    if (ms == null || !Number.isFinite(ms)) return '';
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)}ms`;
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 60) return `${Math.floor(s)}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  }
  const ts = (iso) => (iso ? Date.parse(iso) : NaN);
  function fmtTime(iso) {
    const d = new Date(ts(iso));
    if (!Number.isFinite(d.getTime())) return '—';
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }
  // Running: so far; waiting: since created; finished: start to end.
  function jobDuration(job, now) {
    if (job.startedAt) return (job.completedAt ? ts(job.completedAt) : now) - ts(job.startedAt);
    return ACTIVE.has(job.status) ? now - ts(job.createdAt) : null;
  }
  const stepDuration = (step, now) => (step.durationMs != null ? step.durationMs
    : step.status === 'running' && step.startedAt ? now - ts(step.startedAt) : null);
  const shortId = (id) => (id ? `…${id.slice(-8)}` : '');
  function metaSummary(meta) {
    if (!meta || typeof meta !== 'object') return '';
    return Object.entries(meta).filter(([, v]) => ['string', 'number'].includes(typeof v))
      .slice(0, 3).map(([k, v]) => (typeof v === 'number' ? `${k} ${v}` : v)).join(' · ');
  }

  // ---------------------------------------------------------------- tokens

  function decodeJwt(token) {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
      const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
      return claims && typeof claims === 'object' ? claims : null;
    } catch { return null; }
  }
  const workspacesOf = (claims) => (Array.isArray(claims && claims.workspaces)
    ? claims.workspaces.filter((w) => typeof w === 'string' && w) : []);

  // GET with the token; throws an Error with .status and the server's message.
  async function api(path) {
    const response = await fetch(path, { headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });
    const body = await response.json().catch(() => null);
    if (response.ok) return body;
    throw Object.assign(new Error((body && body.error && body.error.message) || `HTTP ${response.status}`),
      { status: response.status });
  }

  // The raw log with the token (a download must not put it in a URL).
  const apiRaw = (path) => fetch(path, { headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });

  // ---------------------------------------------------------------- streams

  // An EventSource that this page reconnects itself (with backoff), so that
  // every reopen carries the URL it wants (e.g. a fresh ?since=).
  class Stream {
    constructor(makeUrl, names, handlers) {
      Object.assign(this, { makeUrl, names, handlers, es: null, timer: 0, failures: 0, wasLive: false, status: 'connecting' });
    }
    start() { this.stopped = false; this.connect(); return this; }
    connect() {
      clearTimeout(this.timer);
      const es = new EventSource(this.makeUrl());
      this.es = es;
      es.onopen = () => {
        if (this.es !== es) return;
        Object.assign(this, { wasLive: true, failures: 0, status: 'live' });
        updateConnection();
      };
      for (const name of this.names) {
        es.addEventListener(name, (message) => {
          if (this.es !== es) return;
          let data;
          try { data = JSON.parse(message.data); } catch { return; }
          this.handlers.onEvent(name, data);
        });
      }
      es.onerror = () => {
        if (this.es !== es) return;
        es.close();
        this.es = null;
        if (this.stopped) return;
        if (this.handlers.isDone && this.handlers.isDone()) { this.stop(); return; }
        if (this.wasLive) state.outage = true;
        this.failures += 1;
        this.status = 'reconnecting';
        const delay = Math.min(15000, 500 * 2 ** Math.min(this.failures - 1, 5)) * (0.8 + Math.random() * 0.4);
        this.timer = setTimeout(() => this.connect(), delay);
        updateConnection();
        if (this.handlers.onDown) this.handlers.onDown(this.failures);
      };
    }
    retryNow() { if (!this.stopped && !this.es) this.connect(); }
    stop() {
      this.stopped = true;
      this.status = 'stopped';
      clearTimeout(this.timer);
      if (this.es) { this.es.close(); this.es = null; }
      updateConnection();
    }
  }

  function activeStreams() {
    return [state.wsStream, state.detail && state.detail.stream].filter((s) => s && !s.stopped);
  }
  function updateConnection() {
    const streams = activeStreams();
    let mode = 'offline';
    let text = 'offline';
    if (!state.token) text = 'not connected';
    else if (streams.length && streams.every((s) => s.status === 'live')) { mode = 'live'; text = 'live'; }
    else if (streams.length) {
      const worst = Math.max(...streams.map((s) => s.failures));
      const everLive = streams.some((s) => s.wasLive);
      if (!navigator.onLine || worst >= 4) { mode = 'offline'; text = 'offline · retrying'; }
      else { mode = 'reconnecting'; text = everLive || worst > 0 ? 'reconnecting…' : 'connecting…'; }
    }
    if (mode === 'live' && state.outage) { state.outage = false; state.reconnects += 1; }
    const conn = $('conn');
    setAttr(conn, 'data-state', mode);
    setText($('conn-text'), text);
    setText($('conn-extra'), state.reconnects ? `${state.reconnects} reconnect${state.reconnects === 1 ? '' : 's'}` : '');
    conn.title = state.reconnects ? `Reconnected ${state.reconnects} time(s) since the page loaded` : '';
  }
  window.addEventListener('online', () => activeStreams().forEach((s) => s.retryNow()));
  window.addEventListener('offline', updateConnection);

  const streamUrl = (path, params) => `${path}?${new URLSearchParams({ token: state.token, ...params })}`;

  // ---------------------------------------------------------------- workspace list

  function startWorkspace(ws) {
    stopWorkspace();
    state.workspace = ws;
    state.jobs.clear();
    state.pendingFetch.clear();
    store.set(WS_KEY, ws);
    rememberWorkspace(ws);
    renderPicker();
    showNotice('');
    redraw('list');
    const wsAtStart = ws;
    api(`/api/v1/jobs?${new URLSearchParams({ workspaceId: ws, limit: '100' })}`).then((body) => {
      if (state.workspace !== wsAtStart) return;
      (body.jobs || []).forEach(mergeJob);
      redraw('list');
    }, (err) => {
      if (state.workspace !== wsAtStart) return;
      if (err.status === 401) { refused(err); return; }
      if (err.status === 403) showNotice(`This token cannot read workspace “${ws}”.`);
      else showNotice(`Could not load jobs (${err.message}); retrying…`, true);
    });
    state.wsStream = new Stream(
      () => streamUrl(`/api/v1/workspaces/${encodeURIComponent(ws)}/events/stream`, {}),
      ['snapshot', ...EVENT_NAMES],
      {
        onEvent: (name, data) => {
          if (name !== 'snapshot') applyListEvent(name, data);
          else { (data.jobs || []).forEach(mergeJob); if (state.noticeTransient) showNotice(''); }
          redraw('list');
        },
        onDown: (failures) => { if (failures === 1 || failures % 5 === 0) probeAccess(wsAtStart); },
      },
    ).start();
    updateConnection();
  }
  function stopWorkspace() {
    if (state.wsStream) state.wsStream.stop();
    state.wsStream = null;
  }
  function probeAccess(ws) {
    api(`/api/v1/jobs?${new URLSearchParams({ workspaceId: ws, limit: '1' })}`).catch((err) => {
      if (state.workspace !== ws) return;
      if (err.status === 401) refused(err);
      else if (err.status === 403) { showNotice(`This token cannot read workspace “${ws}”.`); stopWorkspace(); }
    });
  }
  // A transient notice (a failed load) goes away when the stream delivers.
  function showNotice(text, transient = false) {
    state.noticeTransient = transient;
    setText($('jobs-notice'), text);
    $('jobs-notice').hidden = !text;
    redraw('list');
  }

  // Keeps the snapshot with the newest seq.
  function mergeJob(job) {
    if (!job || job.workspaceId !== state.workspace) return;
    const known = state.jobs.get(job.id);
    if (known && known.lastSeq >= job.lastSeq) return;
    state.jobs.set(job.id, { ...job, stepName: known ? known.stepName : null });
    if (state.jobs.size > LIST_CAP) {
      const oldest = [...state.jobs.values()].sort(byNewest).slice(LIST_CAP);
      oldest.forEach((j) => { if (!state.detail || state.detail.id !== j.id) state.jobs.delete(j.id); });
    }
  }
  function byNewest(a, b) { return (ts(b.createdAt) - ts(a.createdAt)) || (a.id < b.id ? 1 : -1); }

  // Applies one event to the list entry of its job (each seq once).
  function applyListEvent(name, e) {
    if (!e || e.workspaceId !== state.workspace) return;
    let job = state.jobs.get(e.jobId);
    if (!job) {
      if (name === 'job:created' && e.job) { mergeJob({ ...e.job, lastSeq: e.seq }); return; }
      fetchIntoList(e.jobId, name, e);
      return;
    }
    job = reduceListJob(job, name, e);
    if (!job) return;
    state.jobs.set(job.id, job);
  }
  function fetchIntoList(jobId, name, e) {
    const waiting = state.pendingFetch.get(jobId);
    if (waiting) { waiting.push([name, e]); return; }
    state.pendingFetch.set(jobId, [[name, e]]);
    const ws = state.workspace;
    api(`/api/v1/jobs/${encodeURIComponent(jobId)}`).then((job) => {
      const queued = state.pendingFetch.get(jobId) || [];
      state.pendingFetch.delete(jobId);
      if (state.workspace !== ws) return;
      const { steps, ...snapshot } = job;
      mergeJob(snapshot);
      queued.forEach(([n, ev]) => { if (state.jobs.has(jobId)) applyListEvent(n, ev); });
      redraw('list');
    }, () => state.pendingFetch.delete(jobId));
  }

  // ---------------------------------------------------------------- job detail

  // The log viewer of the selected step.
  const viewer = new LogViewer({
    pane: $('term'),
    jump: $('jump'),
    tools: $('log-tools'),
    getJson: (path) => api(path),
    getRaw: (path) => apiRaw(path),
    onMeta: (text) => {
      const d = state.detail;
      const step = d && d.selected && d.steps.get(d.selected);
      const live = step && step.status === 'running' && d.job && !TERMINAL.has(d.job.status);
      setText($('term-meta'), `${text}${live ? ' · live' : ''}`);
    },
    lineHref: (n) => {
      const d = state.detail;
      return d && d.selected ? `#/${encodeURIComponent(state.workspace || '')}/${d.id}/step-${d.selected}-L${n}` : `#L${n}`;
    },
    onSelect: (range) => {
      const d = state.detail;
      if (!d || !d.selected) return;
      const anchor = `step-${d.selected}-L${range[0]}${range[1] !== range[0] ? `-L${range[1]}` : ''}`;
      d.anchor = anchor;
      history.replaceState(null, '', `#/${encodeURIComponent(state.workspace || '')}/${d.id}/${anchor}`);
    },
  });

  // `step-<id>-L10` or `step-<id>-L10-L20`.
  function parseAnchor(text) {
    const m = /^step-([0-9a-fA-F-]{36})(?:-L(\d+)(?:-L(\d+))?)?$/.exec(text || '');
    if (!m) return null;
    const from = m[2] ? Number(m[2]) : null;
    const to = m[3] ? Number(m[3]) : from;
    return { stepId: m[1].toLowerCase(), range: from ? [Math.min(from, to), Math.max(from, to)] : null };
  }

  function openJob(jobId, anchor) {
    closeJob();
    if (!jobId) return;
    const d = Object.assign(newDetail(jobId), { selected: null, autoSelect: true, stream: null, error: null, anchor });
    state.detail = d;
    viewer.close();
    redraw('detail', 'list');
    const jobUrl = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
    const load = () => api(jobUrl).then((job) => {
      if (state.detail !== d) return;
      loadSnapshot(d, job);
      d.error = null;
      const linked = parseAnchor(d.anchor);
      const steps = d.order.map((id) => d.steps.get(id));
      const running = steps.filter((s) => s.status === 'running').pop();
      if (linked && d.steps.has(linked.stepId)) { d.selected = linked.stepId; d.autoSelect = false; }
      else d.selected = (running || steps[steps.length - 1] || {}).id || null;
      showStep(d, linked && linked.stepId === d.selected ? linked.range : null);
      // The snapshot holds the state up to its lastSeq; the stream goes on from there.
      d.stream = new Stream(
        () => streamUrl(`/api/v1/jobs/${encodeURIComponent(jobId)}/events/stream`, { since: String(d.lastSeq) }),
        EVENT_NAMES,
        {
          onEvent: (name, e) => applyJobEvent(d, name, e),
          isDone: () => d.finished,
          onDown: (failures) => {
            if (failures !== 1 && failures % 5 !== 0) return;
            api(jobUrl).catch((err) => {
              if (state.detail !== d) return;
              if (err.status === 401) refused(err);
              else if (err.status === 404) { d.error = 'This job no longer exists or this token cannot read it.'; d.stream.stop(); redraw('detail'); }
            });
          },
        },
      );
      if (!d.finished) d.stream.start();
      updateConnection();
      redraw('detail');
    }, (err) => {
      if (state.detail !== d) return;
      if (err.status === 401) { refused(err); return; }
      d.missing = err.status === 404 || err.status === 403;
      d.error = d.missing ? 'No such job, or this token cannot read it.' : `Could not load the job (${err.message}); retrying…`;
      if (!d.missing) setTimeout(() => { if (state.detail === d) load(); }, 2000);
      redraw('detail');
    });
    load();
  }
  function closeJob() {
    if (state.detail && state.detail.stream) state.detail.stream.stop();
    state.detail = null;
    updateConnection();
  }

  // Applies one job event exactly once, in seq order (reducer.js).
  function applyJobEvent(d, name, e) {
    if (state.detail !== d) return;
    const effect = reduceDetail(d, name, e);
    if (!effect.applied) return;
    applyListEvent(name, e);
    if (effect.announce) announce(effect.announce);
    if (d.finished && d.stream) d.stream.stop();
    if (effect.startedStep && d.autoSelect) selectStep(d, effect.startedStep, true);
    if (effect.output && effect.output.stepId === d.selected) viewer.onChunk(effect.output);
    if (name === 'step:completed' && e.stepId === d.selected) viewer.setFailed(e.status === 'failed');
    redraw('detail');
  }

  function showStep(d, range) {
    const step = d.selected && d.steps.get(d.selected);
    if (!step) { viewer.close(); return; }
    viewer.open({ jobId: d.id, stepId: step.id, name: step.name, failed: step.status === 'failed', range });
  }

  function selectStep(d, stepId, auto) {
    if (!auto) {
      // Choosing the newest step of a live job keeps following new steps.
      d.autoSelect = !TERMINAL.has(d.job.status) && stepId === d.order[d.order.length - 1];
    }
    if (d.selected === stepId) return;
    d.selected = stepId;
    d.anchor = null;
    if (!auto) history.replaceState(null, '', `#/${encodeURIComponent(state.workspace || '')}/${d.id}`);
    showStep(d, null);
    redraw('detail');
  }

  // ---------------------------------------------------------------- rendering

  let frame = 0;
  function redraw(...parts) {
    for (const part of parts) state.dirty[part] = true;
    schedule();
  }
  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }
  function render() {
    frame = 0;
    const now = Date.now();
    if (state.dirty.list) { state.dirty.list = false; renderList(now); }
    if (state.dirty.detail) { state.dirty.detail = false; renderDetail(now); }
  }

  const listItems = new Map(); // job id -> { li, a, name, badge, stepNow, dur, bar }
  function listItem(id) {
    let item = listItems.get(id);
    if (item) return item;
    const [name, badge, stepNow, dur, bar] = [h('span', 'job-name'), h('span'), h('span', 'step-now'), h('span', 'dur'), h('span')];
    const progress = h('span', 'progress', bar);
    const a = h('a', 'job-item', name, badge, h('span', 'job-sub', h('span', 'mono', shortId(id)), stepNow, dur), progress);
    Object.assign(a.dataset, { testid: 'job-item', jobId: id });
    item = { li: h('li', null, a), a, name, badge, stepNow, dur, progress, bar };
    listItems.set(id, item);
    return item;
  }
  const passesFilter = (job) => !state.filter || job.status === state.filter || (state.filter === 'active' && ACTIVE.has(job.status));
  function renderList(now) {
    const jobs = [...state.jobs.values()].filter(passesFilter).sort(byNewest);
    const list = $('job-list');
    const openId = state.detail && state.detail.id;
    jobs.forEach((job, i) => {
      const it = listItem(job.id);
      setAttr(it.a, 'href', `#/${encodeURIComponent(state.workspace)}/${job.id}`);
      setAttr(it.a, 'data-status', job.status);
      setAttr(it.a, 'aria-current', job.id === openId ? 'true' : null);
      setAttr(it.a, 'aria-label', `${job.type}, ${job.status}, ${job.progress}%`);
      setText(it.name, job.type);
      setText(it.badge, job.status);
      it.badge.className = `badge s-${job.status}`;
      setText(it.stepNow, job.status === 'running' && job.stepName ? `▸ ${job.stepName}` : metaSummary(job.metadata));
      setText(it.dur, fmtDuration(jobDuration(job, now)));
      it.progress.className = `progress p-${job.status}`;
      it.bar.style.width = `${Math.max(0, Math.min(100, job.progress || 0))}%`;
      if (list.children[i] !== it.li) list.insertBefore(it.li, list.children[i] || null);
    });
    while (list.children.length > jobs.length) {
      const li = list.lastChild;
      li.remove();
      for (const [id, it] of listItems) if (it.li === li) listItems.delete(id);
    }
    setText($('jobs-count'), jobs.length === state.jobs.size ? jobs.length || '' : `${jobs.length} of ${state.jobs.size}`);
    $('jobs-empty').hidden = !state.workspace || state.jobs.size > 0 || !$('jobs-notice').hidden;
  }

  function renderDetail(now) {
    const d = state.detail;
    $('layout').classList.toggle('has-job', !!d);
    $('detail-empty').hidden = !!d;
    $('detail-body').hidden = !d;
    if (!d) { document.title = 'jobstream'; return; }
    setAttr($('back-link'), 'href', `#/${encodeURIComponent(state.workspace || '')}`);
    const job = d.job;
    if (!job) {
      setText($('detail-title'), d.missing ? 'Job unavailable' : 'Loading…');
      setText($('detail-id'), d.id);
      $('detail-status').hidden = true;
      $('detail-error').hidden = !d.error;
      setText($('detail-error'), d.error);
      $('term-wrap').hidden = true;
      $('detail-bar').style.width = '0%';
      $('detail-facts').replaceChildren();
      $('detail-facts').dataset.key = '';
      $('steps').replaceChildren();
      $('steps').hidden = true;
      $('steps-empty').hidden = true;
      stepRowsFor = null;
      return;
    }
    document.title = `${job.status === 'running' ? '● ' : ''}${job.type} · ${job.status} — jobstream`;
    setText($('detail-title'), job.type);
    setText($('detail-id'), job.id);
    const badge = $('detail-status');
    badge.hidden = false;
    setText(badge, job.status);
    badge.className = `badge s-${job.status}`;
    $('detail-bar').parentElement.className = `progress big p-${job.status}`;
    $('detail-bar').style.width = `${Math.max(0, Math.min(100, job.progress || 0))}%`;

    const facts = [['Progress', `${job.progress || 0}%${job.progressMessage ? ` · ${job.progressMessage}` : ''}`],
      ['Created', fmtTime(job.createdAt)], ['Duration', fmtDuration(jobDuration(job, now)) || '—']];
    for (const [k, v] of Object.entries(job.metadata || {}).slice(0, 6)) facts.push([k, typeof v === 'string' ? v : JSON.stringify(v)]);
    if (job.status === 'completed' && job.result != null) facts.push(['Result', JSON.stringify(job.result).slice(0, 200)]);
    const dl = $('detail-facts');
    const key = JSON.stringify(facts);
    if (dl.dataset.key !== key) {
      dl.dataset.key = key;
      dl.replaceChildren(...facts.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v))));
    }
    const error = d.error || job.error;
    $('detail-error').hidden = !error;
    setText($('detail-error'), error);
    renderSteps(d, now);
  }

  const stepRows = new Map(); // step id -> row refs; rebuilt when another job opens
  let stepRowsFor = null;
  function renderSteps(d, now) {
    const ol = $('steps');
    if (stepRowsFor !== d) { stepRows.clear(); ol.replaceChildren(); stepRowsFor = d; }
    // A step still running when its job ended stops at the job's end.
    const ended = TERMINAL.has(d.job.status) ? ts(d.job.completedAt) || now : 0;
    d.order.forEach((id, i) => {
      const step = d.steps.get(id);
      let row = stepRows.get(id);
      if (!row) {
        const [icon, name, phase, type, dur] = ['icon', 'name', 'chip phase', 'chip type', 'dur'].map((c) => h('span', c));
        icon.setAttribute('aria-hidden', 'true');
        const btn = h('button', 'step', icon, name, phase, type, dur);
        btn.type = 'button';
        Object.assign(btn.dataset, { testid: 'step', stepId: id });
        btn.addEventListener('click', () => selectStep(d, id, false));
        const err = h('div', 'step-error');
        const events = h('div', 'step-events');
        events.dataset.testid = 'step-events';
        row = { li: h('li', null, btn, err, events), btn, icon, name, phase, type, dur, err, events };
        stepRows.set(id, row);
      }
      row.btn.className = `step st-${step.status}`;
      setAttr(row.btn, 'data-status', step.status);
      setAttr(row.btn, 'aria-pressed', String(d.selected === id));
      setAttr(row.btn, 'aria-label', `${step.name}: ${step.phase}, ${step.stepType}, ${step.status}`);
      setText(row.icon, STEP_ICON[step.status] || '•');
      setText(row.name, step.name);
      setText(row.phase, step.phase);
      setText(row.type, String(step.stepType || '').replace('_', ' '));
      const pct = step.status === 'running' && step.progress != null ? `${step.progress}% · ` : '';
      setText(row.dur, pct + fmtDuration(stepDuration(step, ended || now)));
      row.err.hidden = !step.error;
      setText(row.err, step.error);
      row.events.hidden = !step.events.length;
      setText(row.events, step.events.join('\n'));
      if (ol.children[i] !== row.li) ol.insertBefore(row.li, ol.children[i] || null);
    });
    $('steps-empty').hidden = d.order.length > 0;
    ol.hidden = !d.order.length;
    $('term-wrap').hidden = !d.selected;
    const step = d.selected && d.steps.get(d.selected);
    if (step) {
      setText($('term-title'), `${step.name} — output`);
      viewer.setFailed(step.status === 'failed');
    }
  }

  const announce = (text) => setText($('announce'), text);

  // Durations of running things tick once a second.
  setInterval(() => {
    if ([...state.jobs.values()].some((j) => ACTIVE.has(j.status))
      || (state.detail && state.detail.job && ACTIVE.has(state.detail.job.status))) redraw('list', 'detail');
  }, 1000);

  // ---------------------------------------------------------------- workspace picker

  function recentWorkspaces() {
    try { return JSON.parse(store.get(RECENT_KEY) || '[]').filter((w) => typeof w === 'string'); } catch { return []; }
  }
  function rememberWorkspace(ws) {
    store.set(RECENT_KEY, JSON.stringify([ws, ...recentWorkspaces().filter((w) => w !== ws)].slice(0, 8)));
  }
  function renderPicker() {
    const allowed = workspacesOf(state.claims);
    const any = allowed.includes('*');
    $('ws-picker').hidden = !state.token;
    const select = $('ws-select');
    const form = $('ws-form');
    select.hidden = any;
    form.hidden = !any;
    if (any) {
      const input = $('ws-input');
      if (document.activeElement !== input) input.value = state.workspace || '';
      $('ws-recent').replaceChildren(...recentWorkspaces().map((w) => Object.assign(h('option'), { value: w })));
    } else {
      const options = allowed.map((w) => Object.assign(h('option', null, w), { value: w }));
      if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== allowed[i])) {
        select.replaceChildren(...options);
      }
      select.value = state.workspace || '';
      select.disabled = allowed.length < 2;
    }
    $('ws-picker').querySelector('label').htmlFor = any ? 'ws-input' : 'ws-select';
  }
  $('ws-select').addEventListener('change', (ev) => navigate(ev.target.value, null));
  $('ws-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const ws = $('ws-input').value.trim();
    if (ws) navigate(ws, null);
  });

  // ---------------------------------------------------------------- routing: #/{workspace}/{jobId}

  function parseHash() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch { return p; }
    });
    return { ws: parts[0] || null, job: parts[1] || null, anchor: parts[2] || null };
  }
  function navigate(ws, jobId) {
    const hash = ws ? `#/${encodeURIComponent(ws)}${jobId ? `/${jobId}` : ''}` : '#/';
    if (location.hash !== hash) location.hash = hash; else route();
  }
  function canRead(ws) {
    const allowed = workspacesOf(state.claims);
    return allowed.includes('*') || allowed.includes(ws);
  }
  function defaultWorkspace() {
    const allowed = workspacesOf(state.claims);
    const saved = store.get(WS_KEY);
    if (saved && canRead(saved)) return saved;
    if (state.config.demo && state.config.workspaceId && canRead(state.config.workspaceId)) return state.config.workspaceId;
    return allowed.find((w) => w !== '*') || null;
  }
  function route() {
    if (!state.token) return;
    let { ws, job, anchor } = parseHash();
    let refusedWs = null;
    if (!ws) ws = defaultWorkspace();
    if (ws && !canRead(ws)) {
      refusedWs = ws;
      ws = defaultWorkspace();
      job = null;
    }
    if (!ws) {
      stopWorkspace();
      state.workspace = null;
      state.jobs.clear();
      renderPicker();
      showNotice('Type the id of a workspace to open.');
      redraw('list');
      updateConnection();
      return;
    }
    if (ws !== state.workspace || !state.wsStream) startWorkspace(ws);
    if (refusedWs) showNotice(`This token cannot read workspace “${refusedWs}”; showing “${ws}”.`);
    const currentJob = state.detail ? state.detail.id : null;
    if (job && job === currentJob && anchor && anchor !== state.detail.anchor && state.detail.job) {
      // Another line or step of the open job.
      const linked = parseAnchor(anchor);
      const d = state.detail;
      d.anchor = anchor;
      if (linked && d.steps.has(linked.stepId)) {
        if (d.selected !== linked.stepId) { d.selected = linked.stepId; d.autoSelect = false; showStep(d, linked.range); }
        else if (linked.range) viewer.open({ jobId: d.id, stepId: d.selected, name: '', failed: false, range: linked.range });
      }
    }
    if (job !== currentJob) {
      openJob(job, anchor);
      // One column: the view changes under the focus, so move it along.
      if (matchMedia('(max-width: 860px)').matches) {
        requestAnimationFrame(() => {
          const back = currentJob && listItems.get(currentJob);
          if (job) { window.scrollTo(0, 0); $('back-link').focus({ preventScroll: true }); } else if (back) back.a.focus();
        });
      }
    }
    redraw('list', 'detail');
  }
  window.addEventListener('hashchange', route);

  // ---------------------------------------------------------------- token prompt

  const refused = (err) => showTokenPrompt(`The server refused this token: ${err.message}`);
  function showTokenPrompt(error) {
    stopWorkspace();
    closeJob();
    $('layout').hidden = true;
    $('token-view').hidden = false;
    $('token-button').hidden = true;
    $('ws-picker').hidden = true;
    $('token-cancel').hidden = !!error || !state.token;
    setText($('token-error'), error || '');
    const input = $('token-input');
    input.value = state.token || (state.config.demo && state.config.token) || '';
    if (error) { state.token = null; store.set(TOKEN_KEY, null); }
    updateConnection();
    input.focus();
  }
  function applyToken(token) {
    token = token.trim().replace(/^Bearer\s+/i, '');
    const claims = decodeJwt(token);
    if (!claims) return 'This does not look like a JWT (three dot-separated parts).';
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      return `This token expired at ${new Date(claims.exp * 1000).toLocaleString()}.`;
    }
    if (!workspacesOf(claims).length) return 'This token names no workspace (its “workspaces” claim is empty).';
    state.token = token;
    state.claims = claims;
    store.set(TOKEN_KEY, token);
    $('token-view').hidden = true;
    $('layout').hidden = false;
    $('token-button').hidden = false;
    state.workspace = null;
    renderPicker();
    route();
    return null;
  }
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const error = applyToken($('token-input').value);
    setText($('token-error'), error || '');
    if (error) $('token-input').focus();
  });
  $('token-button').addEventListener('click', () => showTokenPrompt(''));
  $('token-cancel').addEventListener('click', () => applyToken(state.token));
  $('token-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); $('token-form').requestSubmit(); }
  });
  $('status-filter').addEventListener('change', (ev) => { state.filter = ev.target.value; redraw('list'); });

  // ---------------------------------------------------------------- start

  async function boot() {
    try {
      const response = await fetch('/dashboard/config.json', { cache: 'no-store' });
      if (response.ok) state.config = { ...state.config, ...(await response.json()) };
    } catch { /* served without config: no demo */ }
    $('demo-tag').hidden = !state.config.demo;
    const saved = store.get(TOKEN_KEY);
    const initial = saved || (state.config.demo ? state.config.token : null);
    const error = initial ? applyToken(initial) : null;
    if (!initial || error) showTokenPrompt(saved ? error : '');
    updateConnection();
  }

  boot();
})();
