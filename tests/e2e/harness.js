// Shared helpers for the jobstream end-to-end tests: start a server on a fresh
// database, mint JWTs, call the HTTP API, and connect Socket.IO clients.
'use strict';

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { before, after, afterEach } = require('node:test');
const { io } = require('socket.io-client');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const READY_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;
const TEST_TIMEOUT_MS = 30_000;
// A restart on the same port retries while the port is still held.
const SAME_PORT_ATTEMPTS = 8;
const SAME_PORT_RETRY_MS = 250;

// Socket.IO events the server sends (CONTRACT §1).
const SERVER_EVENTS = [
  'job:created', 'job:status', 'job:progress', 'step:started',
  'step:progress', 'step:output', 'step:completed', 'job:event',
];

// Socket.IO event name that carries each stored event type (CONTRACT §1).
const EVENT_NAME_BY_TYPE = {
  'job.created': 'job:created',
  'job.queued': 'job:status',
  'job.started': 'job:status',
  'job.completed': 'job:status',
  'job.failed': 'job:status',
  'job.cancelled': 'job:status',
  'job.progress': 'job:progress',
  'step.started': 'step:started',
  'step.progress': 'step:progress',
  'step.output': 'step:output',
  'step.completed': 'step:completed',
  'step.failed': 'step:completed',
  'ai.tool_called': 'job:event',
  'ai.tokens_used': 'job:event',
  'ai.artifact_created': 'job:event',
  'gate.started': 'job:event',
  'gate.passed': 'job:event',
  'gate.failed': 'job:event',
};

const TIMESTAMP_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const randomSuffix = () => crypto.randomBytes(6).toString('hex');

// ---------------------------------------------------------------------------
// Databases

function requestedDatabase() {
  const kind = (process.env.JOBSTREAM_E2E_DB || 'sqlite').toLowerCase();
  if (kind !== 'sqlite' && kind !== 'postgres') {
    throw new Error(`JOBSTREAM_E2E_DB must be "sqlite" or "postgres", not "${kind}"`);
  }
  return kind;
}

// A reason to skip the suite, or false. Under CI a missing PostgreSQL URL is
// not skipped: createDatabase() then fails the run.
function skipReason() {
  if (requestedDatabase() === 'postgres' && !process.env.JOBSTREAM_TEST_POSTGRES_URL
      && process.env.CI !== 'true') {
    return 'JOBSTREAM_E2E_DB=postgres but JOBSTREAM_TEST_POSTGRES_URL is not set '
      + '(e.g. postgres://postgres@127.0.0.1:5432/test)';
  }
  return false;
}

function psql(adminUrl, sql) {
  execFileSync('psql', [adminUrl, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

// A fresh database for one test file: { url, drop() }.
function createDatabase() {
  if (requestedDatabase() === 'sqlite') {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-e2e-'));
    return {
      url: `sqlite://${dir}/jobstream.db?mode=rwc`,
      drop: async () => fs.rmSync(dir, { recursive: true, force: true }),
    };
  }
  const adminUrl = process.env.JOBSTREAM_TEST_POSTGRES_URL;
  if (!adminUrl) {
    throw new Error('JOBSTREAM_E2E_DB=postgres needs JOBSTREAM_TEST_POSTGRES_URL (an admin URL)');
  }
  const name = `jobstream_e2e_${randomSuffix()}`;
  psql(adminUrl, `CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => psql(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

// ---------------------------------------------------------------------------
// Server process

function binaryPath() {
  return process.env.JOBSTREAM_BIN || path.join(REPO_ROOT, 'target', 'debug', 'jobstream');
}

// Starts `jobstream serve` on `listen` (default: any free port) and resolves
// with { url, child } once it prints its listening line on stdout. `env` is
// added to the server's environment.
function startProcess({ databaseUrl, secret, log, listen = '127.0.0.1:0', env = {} }) {
  const bin = binaryPath();
  if (!fs.existsSync(bin)) {
    return Promise.reject(new Error(`server binary not found at ${bin} (build it, or set JOBSTREAM_BIN)`));
  }
  const child = spawn(bin, ['serve', '--listen', listen, '--database-url', databaseUrl], {
    env: {
      ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', ...env, JOBSTREAM_JWT_SECRET: secret,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  log.push(`--- ${bin} serve (pid ${child.pid}) ---`);

  return new Promise((resolve, reject) => {
    let ready = false;
    let pending = '';
    const fail = (message) => {
      if (ready) return;
      ready = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${message}\n--- server output ---\n${log.join('\n')}`));
    };
    const timer = setTimeout(() => fail(`server not ready after ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);

    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (data) => {
      pending += data;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        const match = /^jobstream listening on (http:\/\/127\.0\.0\.1:\d+)\s*$/
          .exec(line.replace(/\x1b\[[0-9;]*m/g, ''));
        if (match && !ready) {
          ready = true;
          clearTimeout(timer);
          resolve({ url: match[1], child });
        }
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (data) => log.push(data.replace(/\n$/, '')));
    child.on('error', (err) => fail(`could not start the server: ${err.message}`));
    child.on('exit', (code, signal) => {
      log.push(`--- server exited (code ${code}, signal ${signal}) ---`);
      if (!ready) fail('server exited before it was ready');
      else if (!child.stopping) {
        process.stderr.write(`jobstream server exited unexpectedly\n${log.join('\n')}\n`);
      }
    });
  });
}

function stopProcess(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  child.stopping = true;
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    child.once('exit', () => { clearTimeout(killer); resolve(); });
    child.kill('SIGTERM');
  });
}

// Starts a server on its own database (a fresh one unless databaseUrl is
// given); `env` is added to the server's environment. Returns { url, port,
// secret, stop(), restart(), close(), output() }. restart({ samePort: true })
// starts again on the port of the previous run (retrying while the port is
// still held), so that clients reconnect to the same URL.
async function spawnServer({ databaseUrl, env = {} } = {}) {
  const database = databaseUrl ? { url: databaseUrl, drop: async () => {} } : createDatabase();
  const secret = crypto.randomBytes(32).toString('hex');
  const log = [];
  let child = null;

  const start = async ({ samePort = false } = {}) => {
    const listen = samePort && server.port ? `127.0.0.1:${server.port}` : '127.0.0.1:0';
    const attempts = samePort ? SAME_PORT_ATTEMPTS : 1;
    for (let attempt = 1; ; attempt += 1) {
      try {
        const started = await startProcess({ databaseUrl: database.url, secret, log, listen, env });
        child = started.child;
        server.url = started.url;
        server.port = Number(new URL(started.url).port);
        return started.url;
      } catch (err) {
        if (attempt >= attempts) throw err;
        log.push(`--- start on ${listen} failed (attempt ${attempt} of ${attempts}); retrying ---`);
        await sleep(SAME_PORT_RETRY_MS * attempt);
      }
    }
  };
  const server = {
    url: null,
    port: null,
    secret,
    databaseUrl: database.url,
    stop: () => stopProcess(child),
    restart: async (options) => { await stopProcess(child); return start(options); },
    close: async () => { await stopProcess(child); await database.drop(); },
    output: () => log.join('\n'),
    pid: () => child && child.pid,
  };
  try {
    await start();
  } catch (err) {
    await database.drop().catch(() => {});
    throw err;
  }
  return server;
}

// Registers hooks that give the enclosing describe() its own server, print the
// server output after a failed test (or when a later `before` hook failed and
// no test ran), and clean up afterwards. The returned object is filled in by
// the `before` hook. options go to spawnServer (e.g. { env }).
function useServer(options = {}) {
  const ctx = { server: null };
  let testsRun = 0;
  const printOutput = (why) => process.stderr.write(`--- server output (${why}) ---\n${ctx.server.output()}\n`);
  before(async () => { ctx.server = await spawnServer(options); }, { timeout: READY_TIMEOUT_MS + 10_000 });
  afterEach((t) => {
    testsRun += 1;
    if (t.passed === false && ctx.server) printOutput(`"${t.name}" failed`);
  });
  after(async () => {
    if (!ctx.server) return;
    if (testsRun === 0) printOutput('no test ran');
    await ctx.server.close();
  }, { timeout: 15_000 });
  return ctx;
}

// ---------------------------------------------------------------------------
// Tokens

const base64url = (value) => Buffer.from(value).toString('base64url');

// HS256 JWT. expiresIn is in seconds (negative for an expired token);
// scope: null leaves the claim out.
function mintToken(secret, { sub = 'e2e', workspaces = [], scope = 'subscribe publish', expiresIn = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now, exp: now + expiresIn, workspaces };
  if (scope !== null) claims.scope = scope;
  const unsigned = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  const signature = crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

// ---------------------------------------------------------------------------
// HTTP API (CONTRACT §5)

// Every call resolves to { status, body, headers } and never throws on an
// HTTP error status.
function api(url, token) {
  const request = async (method, route, { body, rawBody, headers = {} } = {}) => {
    const init = { method, headers: { ...headers } };
    if (token) init.headers.authorization = `Bearer ${token}`;
    if (rawBody !== undefined) {
      init.body = rawBody;
      init.headers['content-type'] ??= 'application/json';
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
    const response = await fetch(url + route, { ...init, signal: AbortSignal.timeout(10_000) });
    const text = await response.text();
    let parsed = text;
    try { parsed = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
    return { status: response.status, body: parsed, headers: response.headers };
  };
  const query = (params = {}) => {
    const entries = Object.entries(params).filter(([, v]) => v !== undefined);
    return entries.length ? `?${new URLSearchParams(entries)}` : '';
  };
  const job = (jobId) => `/api/v1/jobs/${encodeURIComponent(jobId)}`;
  const step = (jobId, stepId) => `${job(jobId)}/steps/${encodeURIComponent(stepId)}`;

  return {
    request,
    createJob: (body) => request('POST', '/api/v1/jobs', { body }),
    listJobs: (params) => request('GET', `/api/v1/jobs${query(params)}`),
    getJob: (jobId) => request('GET', job(jobId)),
    setStatus: (jobId, body) => request('POST', `${job(jobId)}/status`, { body }),
    setProgress: (jobId, body) => request('POST', `${job(jobId)}/progress`, { body }),
    startStep: (jobId, body) => request('POST', `${job(jobId)}/steps`, { body }),
    stepProgress: (jobId, stepId, body) => request('POST', `${step(jobId, stepId)}/progress`, { body }),
    stepOutput: (jobId, stepId, body) => request('POST', `${step(jobId, stepId)}/output`, { body }),
    completeStep: (jobId, stepId, body) => request('POST', `${step(jobId, stepId)}/complete`, { body }),
    addEvent: (jobId, body) => request('POST', `${job(jobId)}/events`, { body }),
    batch: (body) => request('POST', '/api/v1/events/batch', { body }),
    events: (jobId, params) => request('GET', `${job(jobId)}/events${query(params)}`),
    healthz: () => request('GET', '/healthz'),
    readyz: () => request('GET', '/readyz'),
  };
}

// Raw HTTP with a JSON text body, to send and read JSON that
// JSON.stringify/parse would change: { status, text, body (parsed, or null) }.
async function rawRequest(url, token, method, route, text) {
  const response = await fetch(url + route, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(text !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: text,
  });
  const body = await response.text();
  let parsed = null;
  try { parsed = JSON.parse(body); } catch { /* not JSON: keep the text */ }
  return { status: response.status, text: body, body: parsed };
}

// ---------------------------------------------------------------------------
// Socket.IO

// Resolves with a connected socket, or rejects with the connect_error (the
// socket is then closed). By default the token goes in `auth.token`; pass
// token null and set `auth`, `query` or `extraHeaders` in opts to send it
// another way. Reconnection is off unless opts turns it on.
function connect(url, token, opts = {}) {
  const options = { forceNew: true, reconnection: false, timeout: 10_000, ...opts };
  if (token != null) options.auth = { ...(opts.auth || {}), token };
  const socket = io(url, options);
  return new Promise((resolve, reject) => {
    const onConnect = () => { socket.off('connect_error', onError); resolve(socket); };
    const onError = (err) => { socket.off('connect', onConnect); socket.close(); reject(err); };
    socket.once('connect', onConnect);
    socket.once('connect_error', onError);
  });
}

// Records every contract event the socket receives, in arrival order, as
// { event, data }. waitFor(n) resolves once n events have arrived.
function collect(socket) {
  const events = [];
  let waiters = [];
  socket.onAny((event, data) => {
    if (!SERVER_EVENTS.includes(event)) return;
    events.push({ event, data });
    waiters = waiters.filter((w) => !w.check());
  });
  return {
    events,
    waitFor(count, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const waiter = {
          check: () => {
            if (events.length < count) return false;
            clearTimeout(waiter.timer);
            resolve(events);
            return true;
          },
        };
        if (waiter.check()) return;
        waiter.timer = setTimeout(() => {
          waiters = waiters.filter((w) => w !== waiter);
          reject(new Error(`expected ${count} events within ${timeoutMs} ms, got ${events.length}: `
            + JSON.stringify(events.map((e) => `${e.event} #${e.data && e.data.seq}`))));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
  };
}

function emitAck(socket, event, payload) {
  return socket.timeout(5000).emitWithAck(event, payload);
}

// ---------------------------------------------------------------------------
// Assertions on the contract's JSON shapes

const JOB_FIELDS = ['id', 'workspaceId', 'type', 'status', 'priority', 'progress', 'metadata', 'result',
  'error', 'createdAt', 'updatedAt', 'startedAt', 'completedAt', 'lastSeq'];
const STEP_FIELDS = ['id', 'jobId', 'name', 'phase', 'stepType', 'status', 'startedAt', 'completedAt',
  'durationMs', 'error', 'tokensInput', 'tokensOutput'];

function assertCamelCaseKeys(object, what) {
  for (const key of Object.keys(object)) {
    assert.match(key, /^[a-z][a-zA-Z0-9]*$/, `${what}: field "${key}" is not camelCase`);
  }
}

function assertFields(object, expected, what) {
  for (const [key, value] of Object.entries(expected)) {
    if (value instanceof RegExp) assert.match(String(object[key]), value, `${what}: field ${key}`);
    else assert.deepStrictEqual(object[key], value, `${what}: field ${key}`);
  }
}

// An event object of CONTRACT §2: the common fields, then the expected ones.
// An expected value of undefined means the field must be absent.
function assertEvent(event, expected = {}) {
  const what = `event ${event && event.type} #${event && event.seq}`;
  assert.equal(typeof event, 'object', `${what}: not an object`);
  assertCamelCaseKeys(event, what);
  assert.match(event.eventId, UUID_RE, `${what}: eventId`);
  assert.ok(Number.isInteger(event.seq) && event.seq >= 1, `${what}: seq`);
  assert.equal(typeof event.type, 'string', `${what}: type`);
  assert.match(event.jobId, UUID_RE, `${what}: jobId`);
  assert.equal(typeof event.workspaceId, 'string', `${what}: workspaceId`);
  assert.ok('stepId' in event, `${what}: stepId missing (null for a job-level event)`);
  assert.match(event.timestamp, TIMESTAMP_RE, `${what}: timestamp`);
  assertFields(event, expected, what);
}

function assertTimestampOrNull(value, what) {
  if (value !== null) assert.match(value, TIMESTAMP_RE, what);
}

// A JobSnapshot of CONTRACT §2 with every field present.
function assertJobSnapshot(job, expected = {}) {
  const what = `job ${job && job.id}`;
  assert.equal(typeof job, 'object', `${what}: not an object`);
  assertCamelCaseKeys(job, what);
  for (const field of JOB_FIELDS) assert.ok(field in job, `${what}: field ${field} missing`);
  assert.match(job.createdAt, TIMESTAMP_RE, `${what}: createdAt`);
  assert.match(job.updatedAt, TIMESTAMP_RE, `${what}: updatedAt`);
  assertTimestampOrNull(job.startedAt, `${what}: startedAt`);
  assertTimestampOrNull(job.completedAt, `${what}: completedAt`);
  assert.ok(Number.isInteger(job.lastSeq), `${what}: lastSeq`);
  assertFields(job, expected, what);
}

// A StepSnapshot of CONTRACT §2 with every field present.
function assertStepSnapshot(step, expected = {}) {
  const what = `step ${step && step.id}`;
  assert.equal(typeof step, 'object', `${what}: not an object`);
  assertCamelCaseKeys(step, what);
  for (const field of STEP_FIELDS) assert.ok(field in step, `${what}: field ${field} missing`);
  assertTimestampOrNull(step.startedAt, `${what}: startedAt`);
  assertTimestampOrNull(step.completedAt, `${what}: completedAt`);
  assertFields(step, expected, what);
}

// An error answer: an HTTP response or a Socket.IO ack.
function assertHttpError(response, status, code) {
  const what = `HTTP ${response.status} ${JSON.stringify(response.body)}`;
  assert.equal(response.status, status, what);
  assert.ok(response.body && response.body.error, `${what}: no error object`);
  if (code instanceof RegExp) assert.match(response.body.error.code, code, what);
  else assert.equal(response.body.error.code, code, what);
  assert.equal(typeof response.body.error.message, 'string', `${what}: message`);
  assert.ok(response.body.error.message.length > 0, `${what}: empty message`);
}

function assertAckError(ack, code) {
  const what = `ack ${JSON.stringify(ack)}`;
  assert.equal(ack.ok, false, what);
  assert.equal(ack.error && ack.error.code, code, what);
  assert.equal(typeof ack.error.message, 'string', `${what}: message`);
}

module.exports = {
  rawRequest,
  binaryPath,
  createDatabase,
  startProcess,
  stopProcess,
  requestedDatabase,
  assertAckError,
  assertEvent,
  assertHttpError,
  assertJobSnapshot,
  assertStepSnapshot,
  EVENT_NAME_BY_TYPE,
  SERVER_EVENTS,
  TEST_TIMEOUT_MS,
  TIMESTAMP_RE,
  UUID_RE,
  api,
  collect,
  connect,
  emitAck,
  mintToken,
  skipReason,
  sleep,
  spawnServer,
  useServer,
};
