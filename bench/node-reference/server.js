// The Node.js reference gateway: the plain node:http + socket.io job-events server
// that jobstream replaces, kept as the comparison target of the benchmarks. It speaks
// the same wire contract (docs/contract.md) for what it implements — JWT auth,
// the subscribe/unsubscribe events with acks, the HTTP write routes — but keeps
// jobs in memory only, stores no events and does not replay (`since` is ignored).
//
//   JOBSTREAM_JWT_SECRET=change-me node server.js [--listen HOST:PORT] [--recovery]
//
// Env: LISTEN (default 127.0.0.1:3100, port 0 picks a free one), NODE_REF_RECOVERY=1
// (same as --recovery). Prints `node-reference listening on http://HOST:PORT` when ready.
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');

// ---------------------------------------------------------------------------
// Configuration

function usage(message) {
  process.stderr.write(`node-reference: ${message}\n`
    + 'usage: node server.js [--listen HOST:PORT] [--recovery]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const options = {
    listen: process.env.LISTEN || '127.0.0.1:3100',
    recovery: process.env.NODE_REF_RECOVERY === '1' || process.env.NODE_REF_RECOVERY === 'true',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--recovery') options.recovery = true;
    else if (arg === '--listen') {
      if (i + 1 >= argv.length) usage('--listen needs HOST:PORT');
      options.listen = argv[++i];
    } else if (arg.startsWith('--listen=')) options.listen = arg.slice('--listen='.length);
    else if (arg === '--help' || arg === '-h') usage('help');
    else usage(`unknown argument ${JSON.stringify(arg)}`);
  }
  const colon = options.listen.lastIndexOf(':');
  if (colon <= 0) usage(`--listen must be HOST:PORT, got ${JSON.stringify(options.listen)}`);
  let host = options.listen.slice(0, colon);
  const port = Number(options.listen.slice(colon + 1));
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    usage(`--listen port must be 0–65535, got ${JSON.stringify(options.listen)}`);
  }
  options.host = host;
  options.port = port;
  return options;
}

const MAX_BODY_BYTES = 1024 * 1024; // 1 MiB, as jobstream's default
const MAX_CHUNK_BYTES = 64 * 1024; // 64 KiB per step:output chunk
const MAX_BATCH = 1000;
const WORKSPACE_SNAPSHOT_LIMIT = 100;

// ---------------------------------------------------------------------------
// Errors: `{ error: { code, message } }` over HTTP, `{ ok: false, error }` in acks.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const invalid = (field, message) => new ApiError(422, 'invalid_payload', `${field}: ${message}`);
const jobNotFound = (id) => new ApiError(404, 'not_found', `job ${id} not found`);
const stepNotFound = (jobId, stepId) => new ApiError(404, 'not_found', `step ${stepId} not found in job ${jobId}`);

function errorBody(err) {
  if (err instanceof ApiError) return { code: err.code, message: err.message };
  process.stderr.write(`node-reference: internal error: ${err && err.stack ? err.stack : err}\n`);
  return { code: 'internal', message: 'internal error' };
}

// ---------------------------------------------------------------------------
// Tokens: JWT HS256 verified with node:crypto (CONTRACT §4).

let secret = process.env.JOBSTREAM_JWT_SECRET;

function signToken(claims) {
  const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');
  const payload = Buffer.from(JSON.stringify(claims)).toString('base64url');
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

class TokenError extends Error {}

function decodePart(part) {
  try {
    const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
    return value;
  } catch {
    throw new TokenError('malformed token');
  }
}

// The claims of a valid token, as { sub, exp, workspaces, all, subscribe, publish }.
function verifyToken(token) {
  if (typeof token !== 'string' || token === '') throw new TokenError('missing token');
  const parts = token.split('.');
  if (parts.length !== 3) throw new TokenError('malformed token');
  const header = decodePart(parts[0]);
  const claims = decodePart(parts[1]);
  if (header.alg !== 'HS256') throw new TokenError('unsupported token algorithm (HS256 expected)');
  const expected = crypto.createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new TokenError('invalid token signature');
  }
  if (typeof claims.sub !== 'string' || typeof claims.exp !== 'number') throw new TokenError('malformed token');
  if (claims.exp * 1000 <= Date.now()) throw new TokenError('token expired');
  const workspaces = Array.isArray(claims.workspaces)
    ? claims.workspaces.filter((w) => typeof w === 'string')
    : [];
  const scopes = typeof claims.scope === 'string' ? claims.scope.split(' ') : ['subscribe'];
  return {
    sub: claims.sub,
    exp: claims.exp,
    workspaces,
    all: workspaces.includes('*'),
    subscribe: scopes.includes('subscribe'),
    publish: scopes.includes('publish'),
  };
}

const allows = (auth, workspaceId) => auth.all || auth.workspaces.includes(workspaceId);

function requireScope(auth, scope) {
  if (!auth[scope]) throw new ApiError(403, 'forbidden', `the token lacks the \`${scope}\` scope`);
}

function bearer(header) {
  if (typeof header !== 'string') return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : undefined;
}

// ---------------------------------------------------------------------------
// State: everything in memory. A job keeps its own seq counter (`lastSeq`);
// no event is stored.

const jobs = new Map(); // jobId -> job
const jobsByWorkspace = new Map(); // workspaceId -> Set of jobs
const stepsById = new Map(); // stepId -> step (step ids are unique across jobs)

const JOB_STATUSES = ['pending', 'queued', 'running', 'completed', 'failed', 'cancelled'];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const TRANSITIONS = {
  pending: ['queued', 'failed', 'cancelled'],
  queued: ['running', 'failed', 'cancelled'],
  running: ['completed', 'failed', 'cancelled'],
};
const STATUS_EVENT_TYPE = {
  queued: 'job.queued',
  running: 'job.started',
  completed: 'job.completed',
  failed: 'job.failed',
  cancelled: 'job.cancelled',
};
const PHASES = ['setup', 'execution', 'validation', 'cleanup'];
const STEP_TYPES = ['command', 'ai_action', 'gate', 'artifact'];
const STEP_END_STATUSES = ['completed', 'failed', 'skipped'];
const CUSTOM_TYPES = ['ai.tool_called', 'ai.tokens_used', 'ai.artifact_created', 'gate.started', 'gate.passed', 'gate.failed'];
const SOCKET_EVENT = {
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
};
for (const type of CUSTOM_TYPES) SOCKET_EVENT[type] = 'job:event';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function jobSnapshot(job, withSteps) {
  const snapshot = {
    id: job.id,
    workspaceId: job.workspaceId,
    type: job.type,
    status: job.status,
    priority: job.priority,
    progress: job.progress,
    metadata: job.metadata,
    result: job.result,
    error: job.error,
    createdAt: job.createdAt,
    updatedAt: job.updatedAt,
    startedAt: job.startedAt,
    completedAt: job.completedAt,
    lastSeq: job.lastSeq,
  };
  if (withSteps) snapshot.steps = job.steps.map((step) => ({ ...step }));
  return snapshot;
}

// Builds the job's next event (seq = lastSeq + 1) in the contract's JSON shape.
function nextEvent(job, type, stepId, fields, timestamp) {
  job.lastSeq += 1;
  job.updatedAt = timestamp;
  job.updatedMs = Date.parse(timestamp);
  const event = {
    eventId: crypto.randomUUID(),
    seq: job.lastSeq,
    type,
    jobId: job.id,
    workspaceId: job.workspaceId,
    stepId: stepId || null,
    timestamp,
  };
  return Object.assign(event, fields);
}

let io; // set at start

// Sends an event to its job's two rooms. Written the plain way: one emit aimed at
// both rooms. socket.io's adapter takes the union of the rooms' sockets, so a
// socket in both `workspace:…:jobs` and `job:…` gets it once per emit. (The old
// gateway emitted twice, once per room, and such a socket got every event twice.)
function publish(event) {
  io.to(`workspace:${event.workspaceId}:jobs`).to(`job:${event.jobId}`).emit(SOCKET_EVENT[event.type], event);
}

// ---------------------------------------------------------------------------
// Validation helpers (kept minimal: types, enums, ranges).

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function requireObject(body) {
  if (!isObject(body)) throw new ApiError(422, 'invalid_payload', 'the body must be a JSON object');
  return body;
}

function string(body, field, { required = true, max = Infinity } = {}) {
  const value = body[field];
  if (value === undefined || value === null) {
    if (required) throw invalid(field, 'is required');
    return undefined;
  }
  if (typeof value !== 'string') throw invalid(field, 'must be a string');
  if (required && value === '') throw invalid(field, 'must not be empty');
  if (value.length > max) throw invalid(field, `must be at most ${max} characters`);
  return value;
}

function integer(body, field, { required = true, min = -2147483648, max = 2147483647 } = {}) {
  const value = body[field];
  if (value === undefined || value === null) {
    if (required) throw invalid(field, 'is required');
    return undefined;
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalid(field, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

function oneOf(body, field, values, { required = true, fallback } = {}) {
  const value = body[field];
  if (value === undefined || value === null) {
    if (required) throw invalid(field, `is required (one of ${values.join(', ')})`);
    return fallback;
  }
  if (!values.includes(value)) throw invalid(field, `must be one of ${values.join(', ')}`);
  return value;
}

function uuid(body, field) {
  const value = body[field];
  if (value === undefined || value === null) return crypto.randomUUID();
  if (typeof value !== 'string' || !UUID_RE.test(value)) throw invalid(field, 'must be a UUID');
  return value.toLowerCase();
}

// The job a write names, if the token may write to its workspace.
function writableJob(auth, jobId) {
  const job = typeof jobId === 'string' ? jobs.get(jobId.toLowerCase()) : undefined;
  if (!job || !allows(auth, job.workspaceId)) throw jobNotFound(jobId);
  return job;
}

function notFinished(job) {
  if (TERMINAL.has(job.status)) {
    throw new ApiError(409, 'invalid_transition',
      `job ${job.id} is ${job.status}: it takes no more writes except job:event types`);
  }
}

function runningStep(job, stepId) {
  const step = typeof stepId === 'string' ? stepsById.get(stepId.toLowerCase()) : undefined;
  if (!step || step.jobId !== job.id) throw stepNotFound(job.id, stepId);
  if (step.status !== 'running') {
    throw new ApiError(409, 'conflict', `step ${step.id} is ${step.status}, not running`);
  }
  return step;
}

// ---------------------------------------------------------------------------
// Writes. Each validates first, then changes the state and returns { event, step? };
// the caller publishes the event.

function createJob(auth, body) {
  requireObject(body);
  const workspaceId = string(body, 'workspaceId', { max: 200 });
  const type = string(body, 'type', { max: 200 });
  const priority = integer(body, 'priority', { required: false }) ?? 0;
  const metadata = body.metadata ?? {};
  if (!isObject(metadata)) throw invalid('metadata', 'must be a JSON object');
  const id = uuid(body, 'id');
  if (!allows(auth, workspaceId)) {
    throw new ApiError(403, 'forbidden', `the token does not grant workspace ${workspaceId}`);
  }
  const existing = jobs.get(id);
  if (existing) {
    if (existing.workspaceId !== workspaceId) throw new ApiError(409, 'conflict', `job id ${id} is already used`);
    return { created: false, job: existing };
  }
  const now = new Date().toISOString();
  const job = {
    id, workspaceId, type, status: 'pending', priority, progress: 0, metadata,
    result: null, error: null, createdAt: now, updatedAt: now, startedAt: null, completedAt: null,
    lastSeq: 0, updatedMs: 0, steps: [],
  };
  jobs.set(id, job);
  let set = jobsByWorkspace.get(workspaceId);
  if (!set) jobsByWorkspace.set(workspaceId, (set = new Set()));
  set.add(job);
  // seq 1; the embedded snapshot shows the job after its creation (lastSeq 1).
  const event = nextEvent(job, 'job.created', null, {}, now);
  event.job = jobSnapshot(job, false);
  return { created: true, job, event };
}

function changeStatus(auth, jobId, body) {
  requireObject(body);
  const job = writableJob(auth, jobId);
  const status = oneOf(body, 'status', JOB_STATUSES);
  const hasResult = body.result !== undefined;
  const error = string(body, 'error', { required: false });
  if (hasResult && status !== 'completed') throw invalid('result', 'is accepted only with status completed');
  if (error !== undefined && status !== 'failed' && status !== 'cancelled') {
    throw invalid('error', 'is accepted only with status failed or cancelled');
  }
  const allowed = TRANSITIONS[job.status] || [];
  if (!allowed.includes(status)) {
    throw new ApiError(409, 'invalid_transition', `job ${job.id} cannot go from ${job.status} to ${status}`);
  }
  const now = new Date().toISOString();
  const previousStatus = job.status;
  job.status = status;
  if (status === 'running' && job.startedAt === null) job.startedAt = now;
  if (TERMINAL.has(status)) job.completedAt = now;
  const fields = { status, previousStatus };
  if (hasResult) job.result = fields.result = body.result;
  if (error !== undefined) job.error = fields.error = error;
  return { event: nextEvent(job, STATUS_EVENT_TYPE[status], null, fields, now) };
}

function progressFields(body) {
  requireObject(body);
  const fields = { progress: integer(body, 'progress', { min: 0, max: 100 }) };
  const message = string(body, 'message', { required: false });
  if (message !== undefined) fields.message = message;
  return fields;
}

function jobProgress(auth, jobId, body) {
  const job = writableJob(auth, jobId);
  const fields = progressFields(body);
  notFinished(job);
  job.progress = fields.progress;
  return { event: nextEvent(job, 'job.progress', null, fields, new Date().toISOString()) };
}

function startStep(auth, jobId, body) {
  requireObject(body);
  const job = writableJob(auth, jobId);
  const id = uuid(body, 'id');
  const name = string(body, 'name', { max: 500 });
  const phase = oneOf(body, 'phase', PHASES);
  const stepType = oneOf(body, 'stepType', STEP_TYPES);
  notFinished(job);
  if (stepsById.has(id)) throw new ApiError(409, 'conflict', `step id ${id} is already used`);
  const now = new Date().toISOString();
  const step = {
    id, jobId: job.id, name, phase, stepType, status: 'running', startedAt: now, completedAt: null,
    durationMs: null, error: null, tokensInput: null, tokensOutput: null,
  };
  stepsById.set(id, step);
  job.steps.push(step);
  const event = nextEvent(job, 'step.started', id, { name, phase, stepType }, now);
  return { step: { ...step }, event };
}

function stepProgress(auth, jobId, stepId, body) {
  const job = writableJob(auth, jobId);
  const fields = progressFields(body);
  notFinished(job);
  const step = runningStep(job, stepId);
  return { event: nextEvent(job, 'step.progress', step.id, fields, new Date().toISOString()) };
}

function stepOutput(auth, jobId, stepId, body) {
  requireObject(body);
  const job = writableJob(auth, jobId);
  const chunk = body.chunk;
  if (typeof chunk !== 'string') throw invalid('chunk', 'is required and must be a string');
  // Cheap bound first; the exact UTF-8 length only when it could be over.
  if (chunk.length * 3 > MAX_CHUNK_BYTES && Buffer.byteLength(chunk) > MAX_CHUNK_BYTES) {
    throw new ApiError(413, 'payload_too_large',
      `chunk is ${Buffer.byteLength(chunk)} bytes; the limit is ${MAX_CHUNK_BYTES} bytes: split the output into smaller chunks`);
  }
  const stream = oneOf(body, 'stream', ['stdout', 'stderr'], { required: false, fallback: 'stdout' });
  notFinished(job);
  const step = runningStep(job, stepId);
  return { event: nextEvent(job, 'step.output', step.id, { chunk, stream }, new Date().toISOString()) };
}

function completeStep(auth, jobId, stepId, body) {
  requireObject(body);
  const job = writableJob(auth, jobId);
  const status = oneOf(body, 'status', STEP_END_STATUSES);
  const error = string(body, 'error', { required: false });
  const tokensInput = integer(body, 'tokensInput', { required: false, min: 0, max: Number.MAX_SAFE_INTEGER });
  const tokensOutput = integer(body, 'tokensOutput', { required: false, min: 0, max: Number.MAX_SAFE_INTEGER });
  notFinished(job);
  const step = runningStep(job, stepId);
  const now = new Date().toISOString();
  const durationMs = Math.max(0, Date.parse(now) - Date.parse(step.startedAt));
  step.status = status;
  step.completedAt = now;
  step.durationMs = durationMs;
  const fields = { status, durationMs };
  if (error !== undefined) step.error = fields.error = error;
  if (tokensInput !== undefined) step.tokensInput = fields.tokensInput = tokensInput;
  if (tokensOutput !== undefined) step.tokensOutput = fields.tokensOutput = tokensOutput;
  const type = status === 'failed' ? 'step.failed' : 'step.completed';
  return { step: { ...step }, event: nextEvent(job, type, step.id, fields, now) };
}

function customEvent(auth, jobId, body) {
  requireObject(body);
  const job = writableJob(auth, jobId);
  const type = oneOf(body, 'type', CUSTOM_TYPES);
  const payload = body.payload ?? {};
  if (!isObject(payload)) throw invalid('payload', 'must be a JSON object');
  let stepId = null;
  if (body.stepId !== undefined && body.stepId !== null) {
    const step = typeof body.stepId === 'string' ? stepsById.get(body.stepId.toLowerCase()) : undefined;
    if (!step || step.jobId !== job.id) throw stepNotFound(job.id, body.stepId);
    stepId = step.id;
  }
  // job:event types are accepted on finished jobs too.
  return { event: nextEvent(job, type, stepId, { payload }, new Date().toISOString()) };
}

const BATCH_KINDS = {
  status: (auth, item) => changeStatus(auth, item.jobId, item),
  progress: (auth, item) => jobProgress(auth, item.jobId, item),
  step: (auth, item) => startStep(auth, item.jobId, item),
  step_progress: (auth, item) => stepProgress(auth, item.jobId, item.stepId, item),
  output: (auth, item) => stepOutput(auth, item.jobId, item.stepId, item),
  step_complete: (auth, item) => completeStep(auth, item.jobId, item.stepId, item),
  event: (auth, item) => customEvent(auth, item.jobId, item),
};

// A copy of what a batch may change in a job, to undo the batch if an item fails.
function backup(job) {
  const { steps, ...fields } = job;
  return { job, fields, steps: steps.slice(), stepFields: steps.map((s) => ({ ...s })) };
}

function restore({ job, fields, steps, stepFields }) {
  for (const step of job.steps) if (!steps.includes(step)) stepsById.delete(step.id);
  steps.forEach((step, i) => Object.assign(step, stepFields[i]));
  Object.assign(job, fields);
  job.steps = steps;
}

// All or nothing: items apply in order; on the first error every touched job is
// restored and nothing is published.
function batch(auth, body) {
  requireObject(body);
  const items = body.events;
  if (!Array.isArray(items)) throw invalid('events', 'must be an array');
  if (items.length > MAX_BATCH) throw invalid('events', `has ${items.length} items; at most ${MAX_BATCH}`);
  const backups = new Map();
  const events = [];
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    try {
      if (!isObject(item)) throw new ApiError(422, 'invalid_payload', 'each item must be a JSON object');
      const apply = Object.hasOwn(BATCH_KINDS, item.kind) ? BATCH_KINDS[item.kind] : undefined;
      if (!apply) throw invalid('kind', `must be one of ${Object.keys(BATCH_KINDS).join(', ')}`);
      if (typeof item.jobId !== 'string') throw invalid('jobId', 'is required and must be a UUID');
      const job = writableJob(auth, item.jobId);
      if (!backups.has(job)) backups.set(job, backup(job));
      events.push(apply(auth, item).event);
    } catch (err) {
      for (const saved of backups.values()) restore(saved);
      if (err instanceof ApiError) {
        // `events[3].progress: …` for a field, `events[3]: …` otherwise.
        const sep = /^[A-Za-z]+: /.test(err.message) ? '.' : ': ';
        throw new ApiError(err.status, err.code, `events[${i}]${sep}${err.message}`);
      }
      throw err;
    }
  }
  return events;
}

// ---------------------------------------------------------------------------
// HTTP

function send(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function sendError(res, err) {
  const status = err instanceof ApiError ? err.status : 500;
  send(res, status, { error: errorBody(err) });
}

function isJson(contentType) {
  if (typeof contentType !== 'string') return false;
  const mime = contentType.split(';')[0].trim().toLowerCase();
  return mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json'));
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    if (!isJson(req.headers['content-type'])) {
      reject(new ApiError(400, 'bad_request', 'expected a JSON body with `Content-Type: application/json`'));
      return;
    }
    const declared = Number(req.headers['content-length']);
    if (declared > MAX_BODY_BYTES) {
      reject(new ApiError(413, 'payload_too_large', `the request body is over the limit of ${MAX_BODY_BYTES} bytes`));
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk) => {
      if (failed) return;
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        failed = true;
        reject(new ApiError(413, 'payload_too_large', `the request body is over the limit of ${MAX_BODY_BYTES} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (failed) return;
      try {
        resolve(JSON.parse(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
      } catch (err) {
        reject(new ApiError(400, 'bad_request', `the body is not valid JSON: ${err.message}`));
      }
    });
    req.on('error', reject);
  });
}

function authenticate(req) {
  try {
    return verifyToken(bearer(req.headers.authorization));
  } catch (err) {
    if (err instanceof TokenError) throw new ApiError(401, 'unauthorized', `unauthorized: ${err.message}`);
    throw err;
  }
}

// Matches a path under /api/v1 to [method, scope, handler(auth, params, body)].
function route(segments) {
  const [a, id, b, stepId, c] = segments;
  const n = segments.length;
  if (a === 'jobs') {
    if (n === 1) {
      return ['POST', 'publish', (auth, body) => {
        const created = createJob(auth, body);
        if (!created.created) return [200, jobSnapshot(created.job, false)];
        publish(created.event);
        return [201, jobSnapshot(created.job, false)];
      }];
    }
    if (n === 2) {
      return ['GET', 'subscribe', (auth) => {
        const job = jobs.get(id.toLowerCase());
        if (!job || !allows(auth, job.workspaceId)) throw jobNotFound(id);
        return [200, jobSnapshot(job, true)];
      }];
    }
    if (n === 3 && b === 'status') return ['POST', 'publish', (auth, body) => write(200, changeStatus(auth, id, body))];
    if (n === 3 && b === 'progress') return ['POST', 'publish', (auth, body) => write(200, jobProgress(auth, id, body))];
    if (n === 3 && b === 'steps') return ['POST', 'publish', (auth, body) => write(201, startStep(auth, id, body), true)];
    if (n === 3 && b === 'events') return ['POST', 'publish', (auth, body) => write(201, customEvent(auth, id, body))];
    if (n === 5 && b === 'steps') {
      if (c === 'progress') return ['POST', 'publish', (auth, body) => write(200, stepProgress(auth, id, stepId, body))];
      if (c === 'output') return ['POST', 'publish', (auth, body) => write(200, stepOutput(auth, id, stepId, body))];
      if (c === 'complete') {
        return ['POST', 'publish', (auth, body) => write(200, completeStep(auth, id, stepId, body), true)];
      }
    }
  } else if (a === 'events' && id === 'batch' && n === 2) {
    return ['POST', 'publish', (auth, body) => {
      const events = batch(auth, body);
      for (const event of events) publish(event);
      return [200, { events }];
    }];
  }
  return undefined;
}

// Publishes a write's event and shapes its answer: { event } or { step, event }.
function write(status, applied, withStep = false) {
  publish(applied.event);
  return [status, withStep ? { step: applied.step, event: applied.event } : { event: applied.event }];
}

async function handleRequest(req, res) {
  try {
    const url = req.url;
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new ApiError(405, 'bad_request', 'use GET /healthz');
      send(res, 200, { status: 'ok' });
      return;
    }
    const matched = path.startsWith('/api/v1/') ? route(path.slice('/api/v1/'.length).split('/')) : undefined;
    if (!matched) throw new ApiError(404, 'not_found', 'no such endpoint; the API lives under /api/v1');
    const [method, scope, handler] = matched;
    if (req.method !== method) {
      res.setHeader('allow', method);
      throw new ApiError(405, 'bad_request', `${req.method} is not allowed here; use ${method}`);
    }
    const auth = authenticate(req);
    requireScope(auth, scope);
    if (method === 'POST') {
      const [status, answer] = handler(auth, await readJson(req));
      send(res, status, answer);
    } else {
      const [status, answer] = handler(auth);
      send(res, status, answer);
    }
  } catch (err) {
    sendError(res, err);
  }
}

// ---------------------------------------------------------------------------
// Socket.IO

function tokenFromHandshake(handshake) {
  if (handshake.auth && typeof handshake.auth.token === 'string' && handshake.auth.token !== '') {
    return handshake.auth.token;
  }
  if (typeof handshake.query.token === 'string' && handshake.query.token !== '') return handshake.query.token;
  return bearer(handshake.headers.authorization);
}

// Registers a client → server event that answers through its ack.
function onRequest(socket, name, handler) {
  socket.on(name, (payload, ack) => {
    if (typeof ack !== 'function') {
      if (typeof payload !== 'function') return; // no ack: nothing to answer
      ack = payload;
      payload = undefined;
    }
    let answer;
    try {
      if (!isObject(payload)) throw new ApiError(422, 'invalid_payload', 'the payload must be a JSON object');
      answer = handler(socket, payload);
    } catch (err) {
      answer = { ok: false, error: errorBody(err) };
    }
    ack(answer);
  });
}

function socketField(payload, field) {
  const value = payload[field];
  if (typeof value !== 'string' || value === '') throw invalid(field, 'is required and must be a non-empty string');
  return value;
}

function readableWorkspace(socket, workspaceId) {
  const auth = socket.data.auth;
  requireScope(auth, 'subscribe');
  if (!allows(auth, workspaceId)) {
    throw new ApiError(403, 'forbidden', `the token does not grant workspace ${workspaceId}`);
  }
}

function subscribeWorkspace(socket, payload) {
  const workspaceId = socketField(payload, 'workspaceId');
  readableWorkspace(socket, workspaceId);
  const room = `workspace:${workspaceId}:jobs`;
  socket.join(room);
  const set = jobsByWorkspace.get(workspaceId);
  const recent = set ? Array.from(set).sort((x, y) => y.updatedMs - x.updatedMs) : [];
  if (recent.length > WORKSPACE_SNAPSHOT_LIMIT) recent.length = WORKSPACE_SNAPSHOT_LIMIT;
  return { ok: true, room, jobs: recent.map((job) => jobSnapshot(job, false)) };
}

function subscribeJob(socket, payload) {
  const jobId = socketField(payload, 'jobId');
  // `since` is accepted and ignored: this gateway keeps no events, so it cannot
  // replay. A reconnecting client gets only what is published after its ack.
  requireScope(socket.data.auth, 'subscribe');
  const job = jobs.get(jobId.toLowerCase());
  if (!job || !allows(socket.data.auth, job.workspaceId)) throw jobNotFound(jobId);
  const room = `job:${job.id}`;
  socket.join(room);
  return { ok: true, room, job: jobSnapshot(job, true) };
}

function unsubscribeWorkspace(socket, payload) {
  socket.leave(`workspace:${socketField(payload, 'workspaceId')}:jobs`);
  return { ok: true };
}

function unsubscribeJob(socket, payload) {
  socket.leave(`job:${socketField(payload, 'jobId').toLowerCase()}`);
  return { ok: true };
}

// ---------------------------------------------------------------------------
// Start

function start() {
  const options = parseArgs(process.argv.slice(2));
  if (!secret) {
    secret = crypto.randomBytes(32).toString('base64url');
    const token = signToken({
      sub: 'demo', exp: Math.floor(Date.now() / 1000) + 24 * 3600, workspaces: ['demo'], scope: 'subscribe publish',
    });
    process.stderr.write('node-reference: JOBSTREAM_JWT_SECRET is not set; using a random secret.\n'
      + `node-reference: a subscribe+publish token for workspace "demo" (24h): ${token}\n`);
  }

  const server = http.createServer(handleRequest);
  const ioOptions = {
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: 1e6,
    // pingInterval / pingTimeout: socket.io defaults (25 s / 20 s).
  };
  if (options.recovery) {
    ioOptions.connectionStateRecovery = { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true };
  }
  io = new Server(server, ioOptions);

  io.use((socket, next) => {
    try {
      socket.data.auth = verifyToken(tokenFromHandshake(socket.handshake));
      next();
    } catch (err) {
      next(new Error(err instanceof TokenError ? `unauthorized: ${err.message}` : 'unauthorized'));
    }
  });

  io.on('connection', (socket) => {
    onRequest(socket, 'subscribe:workspace:jobs', subscribeWorkspace);
    onRequest(socket, 'unsubscribe:workspace:jobs', unsubscribeWorkspace);
    onRequest(socket, 'subscribe:job', subscribeJob);
    onRequest(socket, 'unsubscribe:job', unsubscribeJob);
  });

  server.on('error', (err) => {
    process.stderr.write(`node-reference: cannot listen on ${options.listen}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(options.port, options.host, () => {
    const { port } = server.address();
    const host = options.host.includes(':') ? `[${options.host}]` : options.host;
    process.stdout.write(`node-reference listening on http://${host}:${port}\n`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref();
    io.close(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

start();
