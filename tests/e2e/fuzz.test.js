// Generated hostile input against the real server (seeded, bounded, so it runs
// in CI): random bodies to every HTTP write route, random payloads to every
// Socket.IO handler. Invariants: no 5xx and no `internal` ack; every refusal is
// a 4xx with the error shape and a 422 names its field; the socket stays up;
// everything accepted reads back through the history and a replay.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const {
  api, connect, emitAck, mintToken, rawRequest, skipReason, sleep, useServer,
} = require('./harness');

const SEED = Number(process.env.JOBSTREAM_FUZZ_SEED || 20261130);
const CASES_PER_ROUTE = Number(process.env.JOBSTREAM_FUZZ_CASES || 300);

// mulberry32: a small seeded PRNG, so that a failure can be replayed with its seed.
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const KEYS = ['jobId', 'since', 'workspaceId', 'id', 'type', 'priority', 'metadata', 'status', 'result', 'error',
  'progress', 'message', 'name', 'phase', 'stepType', 'chunk', 'stream', 'tokensInput', 'tokensOutput', 'stepId',
  'payload', 'events', 'kind', '__proto__', 'constructor', ''];
const WORDS = ['queued', 'running', 'completed', 'failed', 'cancelled', 'execution', 'command', 'stdout', 'stderr',
  'skipped', 'output', 'progress', 'status', 'step', 'event', 'gate.passed', 'ai.tool_called', 'job.completed'];
// JSON number literals, written as text: some fit, some do not.
const NUMBERS = ['0', '-0', '1', '100', '101', '-1', '1.5', '1e2', '1e400', '-1e-400', '18446744073709551615',
  '18446744073709551616', '9223372036854775807', '-9223372036854775809', '0.1', '0.10000000000000000001',
  '123456789012345678901234567890', '2.5e-300', '4.9e-324'];

function generator(random) {
  const pick = (list) => list[Math.floor(random() * list.length)];
  const string = () => {
    const r = random();
    if (r < 0.25) return pick(WORDS);
    if (r < 0.35) return randomUUID();
    if (r < 0.45) return '\u0000' + pick(WORDS);
    if (r < 0.5) return '\ud800';
    if (r < 0.55) return 'x'.repeat(Math.floor(random() * 300));
    if (r < 0.6) return '\u001b[31m' + '☃'.repeat(5);
    return Math.random().toString(36).slice(2, 2 + Math.floor(random() * 12));
  };
  // Returns JSON text (not a value), so that numbers and escapes survive as written.
  const value = (depth) => {
    const r = random();
    if (depth > 5 || r < 0.35) {
      const s = random();
      if (s < 0.3) return pick(NUMBERS);
      if (s < 0.4) return pick(['true', 'false', 'null']);
      return JSON.stringify(string());
    }
    if (r < 0.45) return `${'['.repeat(60 + Math.floor(random() * 80))}1${']'.repeat(60 + Math.floor(random() * 80))}`;
    if (r < 0.65) {
      const n = Math.floor(random() * 4);
      return `[${Array.from({ length: n }, () => value(depth + 1)).join(',')}]`;
    }
    const n = Math.floor(random() * 6);
    const members = Array.from({ length: n }, () => `${JSON.stringify(pick(KEYS))}:${value(depth + 1)}`);
    return `{${members.join(',')}}`;
  };
  // A body that is mostly right for its route, with random fields changed.
  const body = (base) => {
    const r = random();
    if (r < 0.05) return pick(['', '{', 'null', '[]', '"x"', '{"a":1}x', '{"a":\u0000}', '\ufeff{}']);
    const members = Object.entries(base).map(([k, v]) => [k, JSON.stringify(v)]);
    const changes = 1 + Math.floor(random() * 3);
    for (let i = 0; i < changes; i += 1) {
      const k = random() < 0.7 && members.length ? members[Math.floor(random() * members.length)][0] : pick(KEYS);
      const existing = members.find(([key]) => key === k);
      if (existing && random() < 0.2) members.splice(members.indexOf(existing), 1);
      else if (existing) existing[1] = value(0);
      else members.push([k, value(0)]);
    }
    return `{${members.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
  };
  return { body, value, pick, random };
}

function assertCleanAnswer(response, what) {
  const context = `${what} → ${response.status} ${response.text.slice(0, 300)}`;
  assert.ok(response.status < 500, `server error: ${context}`);
  if (response.status >= 400) {
    assert.ok(response.body && response.body.error, `no error object: ${context}`);
    assert.match(response.body.error.code, /^[a-z_]+$/, context);
    assert.ok(response.body.error.message.length > 0, context);
    assert.notEqual(response.body.error.code, 'internal', context);
    if (response.status === 422) {
      assert.match(response.body.error.message, /^[^\s:][^:]*: ./, `422 without a field: ${context}`);
    }
  }
}

describe('generated hostile input', { skip: skipReason(), timeout: 300_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  let token;
  let producer;
  let jobId;
  let stepId;

  before(async () => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
    jobId = (await producer.createJob({ workspaceId: workspace, type: 'fuzz' })).body.id;
    await producer.setStatus(jobId, { status: 'queued' });
    await producer.setStatus(jobId, { status: 'running' });
    stepId = (await producer.startStep(jobId, { name: 'fuzz', phase: 'execution', stepType: 'command' })).body.step.id;
  });

  it('answers every generated HTTP body with a clean 2xx or 4xx, and what was accepted reads back', async () => {
    const gen = generator(prng(SEED));
    const routes = () => [
      ['/api/v1/jobs', { workspaceId: workspace, type: 'fuzz', metadata: { a: 1 } }],
      [`/api/v1/jobs/${jobId}/progress`, { progress: 5, message: 'm' }],
      [`/api/v1/jobs/${jobId}/steps`, { name: 's', phase: 'execution', stepType: 'command' }],
      [`/api/v1/jobs/${jobId}/steps/${stepId}/progress`, { progress: 5 }],
      [`/api/v1/jobs/${jobId}/steps/${stepId}/output`, { chunk: 'line\n', stream: 'stdout' }],
      [`/api/v1/jobs/${jobId}/events`, { type: 'ai.tool_called', payload: { tool: 'grep' } }],
      ['/api/v1/events/batch', { events: [{ jobId, kind: 'output', stepId, chunk: 'x' }] }],
    ];
    const created = [];
    let accepted = 0;
    for (const [route, base] of routes()) {
      for (let i = 0; i < CASES_PER_ROUTE; i += 1) {
        const text = gen.body(base);
        const response = await rawRequest(ctx.server.url, token, 'POST', route, text);
        assertCleanAnswer(response, `POST ${route} ${text.slice(0, 200)} (seed ${SEED})`);
        if (response.status < 300) {
          accepted += 1;
          if (route === '/api/v1/jobs' && response.body.id) created.push(response.body.id);
        }
      }
    }
    assert.ok(accepted > 0, 'some generated bodies were accepted');
    // Everything accepted reads back: the job's history, each created job, a replay.
    for (const id of [jobId, ...created.slice(0, 20)]) {
      const job = await producer.getJob(id);
      assert.equal(job.status, 200, JSON.stringify(job.body));
      const history = await producer.events(id, { limit: 10000 });
      assert.equal(history.status, 200);
      assert.equal(history.body.events.length, job.body.lastSeq);
    }
    const socket = await connect(ctx.server.url, token);
    let last = 0;
    socket.onAny((name, e) => { if (e && e.jobId === jobId) last = e.seq; });
    const { lastSeq } = (await producer.getJob(jobId)).body;
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId, since: 0 })).ok, true);
    const deadline = Date.now() + 20_000;
    while (last < lastSeq && Date.now() < deadline) await sleep(20);
    assert.equal(last, lastSeq, 'the replay reached the end');
    assert.equal(socket.connected, true);
    socket.close();
  });

  it('answers a URL whose percent-encoding is not UTF-8 with 400 bad_request on every route, and writes nothing', async () => {
    const before = (await producer.getJob(jobId)).body.lastSeq;
    const bad = ['%FF', '%C3', '%ED%A0%80', 'a%80b'];
    const step = `/api/v1/jobs/${jobId}/steps/${stepId}`;
    const cases = [];
    for (const b of bad) {
      cases.push(
        ['GET', `/api/v1/jobs/${b}`], ['GET', `/api/v1/jobs/${jobId}/events?since=${b}`],
        ['GET', `/api/v1/jobs?workspaceId=${workspace}&status=${b}`], ['GET', `/api/v1/jobs?${b}=1`],
        ['GET', `${step}/log/search?q=${b}`], ['GET', `${step}/log/lines?from=${b}`],
        ['GET', `/api/v1/jobs/${b}/steps/${stepId}/log/search?q=x`], ['GET', `/api/v1/workspaces/${b}/events/stream`],
        ['POST', `/api/v1/jobs/${b}/progress`, '{"progress":1}'], ['POST', `${step}/output?x=${b}`, '{"chunk":"no"}'],
        ['POST', `/api/v1/jobs/${jobId}/steps/${b}/output`, '{"chunk":"no"}'],
      );
    }
    for (const [method, route, text] of cases) {
      const response = await rawRequest(ctx.server.url, token, method, route, text);
      assertCleanAnswer(response, `${method} ${route}`);
      if (route.includes('%')) {
        assert.equal(response.status, 400, `${method} ${route} → ${response.status} ${response.text}`);
        assert.equal(response.body.error.code, 'bad_request', route);
      }
    }
    assert.equal((await producer.getJob(jobId)).body.lastSeq, before, 'nothing was written');
  });

  it('answers a query parameter given twice with 400 naming it, on reads, streams and writes, and writes nothing', async () => {
    const before = (await producer.getJob(jobId)).body.lastSeq;
    const step = `/api/v1/jobs/${jobId}/steps/${stepId}`;
    const cases = [
      ['GET', `/api/v1/jobs/${jobId}/events?since=1&since=2`, 'since'],
      ['GET', `/api/v1/jobs/${jobId}/events/stream?since=0&%73ince=3`, 'since'],
      ['GET', `/api/v1/jobs?workspaceId=${workspace}&workspaceId=other`, 'workspaceId'],
      ['GET', `${step}/log/lines?tail=5&tail=9`, 'tail'],
      ['POST', `/api/v1/jobs/${jobId}/progress?x=1&x=2`, 'x', '{"progress":1}'],
    ];
    for (const [method, route, name, text] of cases) {
      const response = await rawRequest(ctx.server.url, token, method, route, text);
      assertCleanAnswer(response, `${method} ${route}`);
      assert.equal(response.status, 400, `${method} ${route} → ${response.status} ${response.text}`);
      assert.equal(response.body.error.code, 'bad_request', route);
      assert.match(response.body.error.message, new RegExp(`"${name}"`), route);
    }
    assert.equal((await producer.getJob(jobId)).body.lastSeq, before, 'nothing was written');
  });

  it('acks every generated Socket.IO payload cleanly and keeps the socket up', async () => {
    const gen = generator(prng(SEED + 1));
    const socket = await connect(ctx.server.url, token);
    const events = ['subscribe:job', 'subscribe:workspace:jobs', 'unsubscribe:job', 'unsubscribe:workspace:jobs'];
    const bases = [{ jobId, since: 0 }, { workspaceId: workspace }, { jobId }, { workspaceId: workspace }];
    for (let i = 0; i < CASES_PER_ROUTE * 2; i += 1) {
      const which = Math.floor(gen.random() * events.length);
      let payload;
      try { payload = JSON.parse(gen.body(bases[which])); } catch { payload = gen.pick([undefined, 'x', 42, null, []]); }
      if (gen.random() < 0.1) {
        socket.emit(events[which], payload); // no ack callback at all
        continue;
      }
      const ack = await socket.timeout(5000).emitWithAck(events[which], payload);
      assert.equal(typeof ack, 'object', `${events[which]} ${JSON.stringify(payload)}`);
      assert.equal(typeof ack.ok, 'boolean');
      if (!ack.ok) {
        assert.match(ack.error.code, /^(invalid_payload|not_found|forbidden|invalid_cursor|unauthorized)$/,
          `${events[which]} ${JSON.stringify(payload)} → ${JSON.stringify(ack)}`);
      }
    }
    // The socket still works: a sentinel subscribe answers.
    const sentinel = await emitAck(socket, 'subscribe:job', { jobId });
    assert.equal(sentinel.ok, true);
    assert.equal(socket.connected, true);
    socket.close();
  });
});
