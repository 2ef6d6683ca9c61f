// Smoke test of the Node reference gateway: starts server.js on a free port and
// checks auth, subscribe acks, HTTP writes and their delivery (in seq order, once
// per socket in both rooms), the error answers, and the --recovery mode.
//
//   npm install && node smoke.js        (needs the socket.io-client devDependency)
'use strict';

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');
const { test, after } = require('node:test');
const { io } = require('socket.io-client');

const SECRET = 'smoke-secret';
const SERVER_EVENTS = ['job:created', 'job:status', 'job:progress', 'step:started',
  'step:progress', 'step:output', 'step:completed', 'job:event'];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function sign(claims, secret = SECRET) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${body}.${crypto.createHmac('sha256', secret).update(body).digest('base64url')}`;
}

const token = (workspaces, scope = 'subscribe publish', ttl = 3600) =>
  sign({ sub: 'smoke', exp: Math.floor(Date.now() / 1000) + ttl, workspaces, scope });

const servers = [];
after(() => { for (const child of servers) child.kill('SIGTERM'); });

function startServer(args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'server.js'), '--listen', '127.0.0.1:0', ...args], {
      env: { ...process.env, JOBSTREAM_JWT_SECRET: SECRET },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    servers.push(child);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^node-reference listening on (http:\/\/\S+)\n/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

async function api(base, method, urlPath, body, tok) {
  const headers = {};
  if (tok) headers.authorization = `Bearer ${tok}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + urlPath, {
    method, headers, body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  return { status: res.status, body: await res.json() };
}

// A connected client that records every server event it gets.
function connect(base, opts) {
  const socket = io(base, { reconnection: false, forceNew: true, ...opts });
  socket.received = [];
  for (const name of SERVER_EVENTS) socket.on(name, (e) => socket.received.push({ name, e }));
  return socket;
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
}

async function until(check, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const seqs = (socket, jobId) => socket.received.filter((r) => r.e.jobId === jobId).map((r) => r.e.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('refuses bad tokens with unauthorized connect errors; accepts auth, query and header tokens', async () => {
  const base = await startServer();
  const cases = [
    [{}, 'unauthorized: missing token'],
    [{ auth: { token: 'abc' } }, 'unauthorized: malformed token'],
    [{ auth: { token: token(['w'], 'subscribe', 60).replace(/.$/, 'A') } }, 'unauthorized'],
    [{ auth: { token: sign({ sub: 's', exp: 1, workspaces: ['w'] }) } }, 'unauthorized: token expired'],
    [{ auth: { token: sign({ sub: 's', exp: 9e9, workspaces: ['w'] }, 'other') } }, 'unauthorized: invalid token signature'],
  ];
  for (const [opts, message] of cases) {
    const socket = connect(base, opts);
    const err = await connected(socket).then(() => null, (e) => e);
    socket.close();
    assert.ok(err, `refused: ${message}`);
    assert.ok(err.message.startsWith(message), `${err.message} starts with ${message}`);
  }
  for (const opts of [
    { auth: { token: token(['w']) } },
    { query: { token: token(['w']) } },
    { extraHeaders: { authorization: `Bearer ${token(['w'])}` } },
  ]) {
    const socket = connect(base, opts);
    await connected(socket);
    socket.close();
  }
});

test('delivers every write in seq order, once per socket, to both rooms', async () => {
  const base = await startServer();
  const ws = `ws-${crypto.randomUUID()}`;
  const tok = token([ws]);
  const both = connect(base, { auth: { token: tok } });
  const wsOnly = connect(base, { auth: { token: tok }, transports: ['websocket'] });
  const jobOnly = connect(base, { auth: { token: token(['*'], 'subscribe') } });
  await Promise.all([connected(both), connected(wsOnly), connected(jobOnly)]);

  const forbidden = await both.emitWithAck('subscribe:workspace:jobs', { workspaceId: 'elsewhere' });
  assert.equal(forbidden.ok, false);
  assert.equal(forbidden.error.code, 'forbidden');
  const bad = await both.emitWithAck('subscribe:job', {});
  assert.equal(bad.error.code, 'invalid_payload');
  const missing = await both.emitWithAck('subscribe:job', { jobId: crypto.randomUUID() });
  assert.equal(missing.error.code, 'not_found');

  for (const s of [both, wsOnly]) {
    const ack = await s.emitWithAck('subscribe:workspace:jobs', { workspaceId: ws });
    assert.deepEqual(ack, { ok: true, room: `workspace:${ws}:jobs`, jobs: [] });
  }

  const created = await api(base, 'POST', '/api/v1/jobs', { workspaceId: ws, type: 'build', metadata: { b: 1 } }, tok);
  assert.equal(created.status, 201);
  const job = created.body;
  assert.equal(job.status, 'pending');
  assert.equal(job.lastSeq, 1);
  const again = await api(base, 'POST', '/api/v1/jobs', { id: job.id, workspaceId: ws, type: 'build' }, tok);
  assert.equal(again.status, 200);

  for (const s of [both, jobOnly]) {
    const ack = await s.emitWithAck('subscribe:job', { jobId: job.id, since: 0 });
    assert.equal(ack.ok, true);
    assert.equal(ack.room, `job:${job.id}`);
    assert.equal(ack.job.lastSeq, 1);
    assert.deepEqual(ack.job.steps, []);
  }

  const J = `/api/v1/jobs/${job.id}`;
  const writes = [];
  const w = async (method, p, body, status = 200) => {
    const r = await api(base, method, p, body, tok);
    assert.equal(r.status, status, JSON.stringify(r.body));
    writes.push(r.body);
    return r.body;
  };
  await w('POST', `${J}/status`, { status: 'queued' });
  await w('POST', `${J}/status`, { status: 'running' });
  await w('POST', `${J}/progress`, { progress: 10, message: 'starting' });
  const step = (await w('POST', `${J}/steps`, { name: 'compile', phase: 'execution', stepType: 'command' }, 201)).step;
  assert.equal(step.status, 'running');
  const S = `${J}/steps/${step.id}`;
  await w('POST', `${S}/progress`, { progress: 50 });
  // Concurrent writes: the socket still sees them in seq order.
  const outputs = await Promise.all(range(1, 50).map((i) => api(base, 'POST', `${S}/output`, { chunk: `line ${i}\n` }, tok)));
  for (const o of outputs) assert.equal(o.status, 200);
  assert.equal(outputs[0].body.event.stream, 'stdout');
  const done = await w('POST', `${S}/complete`, { status: 'completed', tokensInput: 3 });
  assert.equal(done.step.status, 'completed');
  assert.equal(done.event.type, 'step.completed');
  await w('POST', `${J}/events`, { type: 'ai.tool_called', payload: { tool: 'grep' } }, 201);
  const batch = await w('POST', '/api/v1/events/batch', { events: [
    { jobId: job.id, kind: 'progress', progress: 90 },
    { jobId: job.id, kind: 'step', name: 'test', phase: 'validation', stepType: 'gate' },
  ] });
  assert.equal(batch.events.length, 2);
  await w('POST', `${J}/status`, { status: 'completed', result: { ok: 1 } });
  // job:event types are still accepted on a finished job.
  await w('POST', `${J}/events`, { type: 'gate.passed' }, 201);

  const last = 1 + 2 + 1 + 1 + 1 + 50 + 1 + 1 + 2 + 1 + 1;
  await until(() => seqs(both, job.id).length >= last && seqs(wsOnly, job.id).length >= last
    && seqs(jobOnly, job.id).length >= last - 1, 'all events');
  await sleep(200); // nothing more (no duplicates) arrives
  assert.deepEqual(seqs(both, job.id), range(1, last), 'both rooms: each seq once, in order');
  assert.deepEqual(seqs(wsOnly, job.id), range(1, last), 'workspace room');
  assert.deepEqual(seqs(jobOnly, job.id), range(2, last), 'job room (subscribed after creation)');

  const names = Object.fromEntries(both.received.map((r) => [r.e.type, r.name]));
  assert.deepEqual(names, {
    'job.created': 'job:created', 'job.queued': 'job:status', 'job.started': 'job:status',
    'job.progress': 'job:progress', 'step.started': 'step:started', 'step.progress': 'step:progress',
    'step.output': 'step:output', 'step.completed': 'step:completed', 'ai.tool_called': 'job:event',
    'job.completed': 'job:status', 'gate.passed': 'job:event',
  });
  const first = both.received[0].e;
  assert.deepEqual(Object.keys(first), ['eventId', 'seq', 'type', 'jobId', 'workspaceId', 'stepId', 'timestamp', 'job']);
  assert.match(first.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const completed = both.received.find((r) => r.e.type === 'job.completed').e;
  assert.equal(completed.previousStatus, 'running');
  assert.deepEqual(completed.result, { ok: 1 });
  const outputsSeen = both.received.filter((r) => r.name === 'step:output').map((r) => r.e);
  assert.equal(outputsSeen.length, 50);
  assert.ok(outputsSeen.every((e) => e.stepId === step.id && e.stream === 'stdout'));

  const got = await api(base, 'GET', J, undefined, tok);
  assert.equal(got.status, 200);
  assert.equal(got.body.lastSeq, last);
  assert.equal(got.body.status, 'completed');
  assert.equal(got.body.progress, 90);
  assert.equal(got.body.steps.length, 2);
  assert.equal(got.body.steps[0].tokensInput, 3);

  const list = await both.emitWithAck('subscribe:workspace:jobs', { workspaceId: ws });
  assert.equal(list.jobs.length, 1);
  assert.equal(list.jobs[0].lastSeq, last);

  // After unsubscribing from both rooms, nothing more arrives.
  assert.deepEqual(await both.emitWithAck('unsubscribe:job', { jobId: job.id }), { ok: true });
  assert.deepEqual(await both.emitWithAck('unsubscribe:workspace:jobs', { workspaceId: ws }), { ok: true });
  await w('POST', `${J}/events`, { type: 'gate.failed' }, 201);
  await until(() => seqs(jobOnly, job.id).length === last, 'jobOnly got the last event');
  await sleep(100);
  assert.equal(seqs(both, job.id).length, last);
  for (const s of [both, wsOnly, jobOnly]) s.close();
});

test('answers bad HTTP input with contract errors; a failed batch writes nothing', async () => {
  const base = await startServer();
  const tok = token(['a']);
  const job = (await api(base, 'POST', '/api/v1/jobs', { workspaceId: 'a', type: 't' }, tok)).body;
  const J = `/api/v1/jobs/${job.id}`;
  const expect = async (method, p, body, tk, status, code) => {
    const r = await api(base, method, p, body, tk);
    assert.equal(r.status, status, `${method} ${p}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error.code, code);
    assert.equal(typeof r.body.error.message, 'string');
  };
  await expect('POST', `${J}/status`, { status: 'queued' }, undefined, 401, 'unauthorized');
  await expect('POST', `${J}/status`, { status: 'queued' }, token(['a'], 'subscribe'), 403, 'forbidden');
  await expect('POST', '/api/v1/jobs', { workspaceId: 'b', type: 't' }, tok, 403, 'forbidden');
  await expect('POST', `${J}/status`, '{nope', tok, 400, 'bad_request');
  await expect('POST', `${J}/status`, { status: 'running' }, tok, 409, 'invalid_transition');
  await expect('POST', `${J}/status`, { status: 'bogus' }, tok, 422, 'invalid_payload');
  await expect('POST', `${J}/progress`, { progress: 101 }, tok, 422, 'invalid_payload');
  await expect('POST', `/api/v1/jobs/${crypto.randomUUID()}/progress`, { progress: 1 }, tok, 404, 'not_found');
  await expect('GET', J, undefined, token(['other']), 404, 'not_found');
  await expect('POST', `${J}/steps/${crypto.randomUUID()}/output`, { chunk: 'x' }, tok, 404, 'not_found');
  await expect('POST', `${J}/events`, { type: 'job.created' }, tok, 422, 'invalid_payload');
  await expect('GET', '/api/v1/nothing', undefined, tok, 404, 'not_found');
  const step = (await api(base, 'POST', `${J}/steps`, { name: 's', phase: 'setup', stepType: 'command' }, tok)).body.step;
  await expect('POST', `${J}/steps/${step.id}/output`, { chunk: 'x'.repeat(70000) }, tok, 413, 'payload_too_large');
  await api(base, 'POST', `${J}/steps/${step.id}/complete`, { status: 'skipped' }, tok);
  await expect('POST', `${J}/steps/${step.id}/output`, { chunk: 'x' }, tok, 409, 'conflict');

  const before = (await api(base, 'GET', J, undefined, tok)).body;
  const r = await api(base, 'POST', '/api/v1/events/batch', { events: [
    { jobId: job.id, kind: 'status', status: 'queued' },
    { jobId: job.id, kind: 'step', name: 'n', phase: 'setup', stepType: 'command' },
    { jobId: job.id, kind: 'progress', progress: 500 },
  ] }, tok);
  assert.equal(r.status, 422);
  assert.match(r.body.error.message, /^events\[2\]\.progress: /);
  const afterBatch = (await api(base, 'GET', J, undefined, tok)).body;
  assert.deepEqual(afterBatch, before, 'nothing of the failed batch was written');
  const health = await api(base, 'GET', '/healthz');
  assert.deepEqual(health, { status: 200, body: { status: 'ok' } });
});

// Drops the transport as a network loss would, writes while the client is away,
// and reports what the client got after it reconnected.
async function dropAndReconnect(args) {
  const base = await startServer(args);
  const tok = token(['r']);
  const job = (await api(base, 'POST', '/api/v1/jobs', { workspaceId: 'r', type: 't' }, tok)).body;
  const socket = connect(base, { auth: { token: tok }, reconnection: true, reconnectionDelay: 100,
    reconnectionDelayMax: 100, transports: ['websocket'] });
  await connected(socket);
  await socket.emitWithAck('subscribe:job', { jobId: job.id });
  await api(base, 'POST', `/api/v1/jobs/${job.id}/progress`, { progress: 1 }, tok);
  await until(() => socket.received.length === 1, 'first event');
  const reconnected = new Promise((resolve) => socket.io.once('reconnect', resolve));
  socket.io.engine.close(); // the transport goes away; socket.io-client reconnects
  await sleep(20);
  for (let p = 2; p <= 4; p++) await api(base, 'POST', `/api/v1/jobs/${job.id}/progress`, { progress: p }, tok);
  await reconnected;
  await sleep(300);
  const result = { recovered: socket.recovered === true, seqs: seqs(socket, job.id) };
  socket.close();
  return result;
}

test('without --recovery, events written during a disconnect are lost (no replay)', async () => {
  const { recovered, seqs: got } = await dropAndReconnect([]);
  assert.equal(recovered, false);
  assert.deepEqual(got, [2]);
});

test('with --recovery, socket.io restores the session and its missed events', async () => {
  const { recovered, seqs: got } = await dropAndReconnect(['--recovery']);
  assert.equal(recovered, true);
  assert.deepEqual(got, [2, 3, 4, 5]);
});
