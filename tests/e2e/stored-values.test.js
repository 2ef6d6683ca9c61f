// What is accepted reads back as sent, through every reader, on both backends
// (CONTRACT §7 "Stored JSON"; docs/behaviour.md "Stored values"):
// - U+0000 is kept in step output chunks and refused (422, naming the field)
//   everywhere else: names, types, ids, messages, producer JSON, query strings;
// - numbers that a double or a 64-bit integer would change are refused (422);
// - JSON nested deeper than 64 levels is refused (422), so nothing stored is
//   too deep to read back.
// And repeated subscribes on one socket never deliver an event twice or out of
// order (CONTRACT §7 "Exactly once per socket, whatever the calls").
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const { io } = require('socket.io-client');
const {
  api, assertHttpError, connect, emitAck, mintToken, rawRequest: raw, skipReason, sleep, useServer,
} = require('./harness');

describe('values that one backend cannot store', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  let token;
  let producer;
  let jobId;
  let stepId;

  before(async () => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
    jobId = (await producer.createJob({ workspaceId: workspace, type: 'build' })).body.id;
    await producer.setStatus(jobId, { status: 'queued' });
    await producer.setStatus(jobId, { status: 'running' });
    stepId = (await producer.startStep(jobId, { name: 'cat', phase: 'execution', stepType: 'command' })).body.step.id;
  });

  it('keeps a NUL in an output chunk, through HTTP, the history and a live socket', async () => {
    const socket = await connect(ctx.server.url, token);
    const chunks = [];
    socket.on('step:output', (e) => chunks.push(e.chunk));
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
    const written = await raw(ctx.server.url, token, 'POST', `/api/v1/jobs/${jobId}/steps/${stepId}/output`,
      '{"chunk":"a\\u0000b\\u0001\\u001b[31mred\\u001b[0m"}');
    assert.equal(written.status, 200, written.text);
    const expected = 'a\u0000b\u0001\u001b[31mred\u001b[0m';
    assert.equal(JSON.parse(written.text).event.chunk, expected);
    const batch = await producer.batch({ events: [{ jobId, kind: 'output', stepId, chunk: '\u0000\u0000' }] });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    const history = await producer.events(jobId, {});
    const stored = history.body.events.filter((e) => e.type === 'step.output').map((e) => e.chunk);
    assert.deepEqual(stored, [expected, '\u0000\u0000']);
    while (chunks.length < 2) await sleep(20);
    assert.deepEqual(chunks, [expected, '\u0000\u0000']);
    socket.close();
  });

  const refused = [
    ['a job type', 'POST', () => '/api/v1/jobs', () => JSON.stringify({ workspaceId: workspace, type: 'a\u0000' }), 'type'],
    ['a workspace id', 'POST', () => '/api/v1/jobs', () => JSON.stringify({ workspaceId: 'w\u0000', type: 'x' }), 'workspaceId'],
    ['a metadata string', 'POST', () => '/api/v1/jobs',
      () => JSON.stringify({ workspaceId: workspace, type: 'x', metadata: { a: ['ok', 'x\u0000'] } }), 'metadata.a[1]'],
    ['a metadata key', 'POST', () => '/api/v1/jobs',
      () => JSON.stringify({ workspaceId: workspace, type: 'x', metadata: { 'k\u0000': 1 } }), 'metadata'],
    ['a step name', 'POST', () => `/api/v1/jobs/${jobId}/steps`,
      () => JSON.stringify({ name: 'n\u0000', phase: 'execution', stepType: 'command' }), 'name'],
    ['a progress message', 'POST', () => `/api/v1/jobs/${jobId}/progress`,
      () => JSON.stringify({ progress: 5, message: 'm\u0000' }), 'message'],
    ['a custom event payload', 'POST', () => `/api/v1/jobs/${jobId}/events`,
      () => JSON.stringify({ type: 'ai.tool_called', payload: { tool: '\u0000' } }), 'payload.tool'],
    ['a batch item', 'POST', () => '/api/v1/events/batch',
      () => JSON.stringify({ events: [{ jobId, kind: 'progress', progress: 5, message: '\u0000' }] }), 'events[0].message'],
    ['a step error', 'POST', () => `/api/v1/jobs/${jobId}/steps/${stepId}/complete`,
      () => JSON.stringify({ status: 'failed', error: 'e\u0000' }), 'error'],
  ];
  for (const [what, method, route, body, field] of refused) {
    it(`refuses a NUL in ${what} with 422 naming ${field}, and stores nothing`, async () => {
      const before = (await producer.getJob(jobId)).body.lastSeq;
      const response = await raw(ctx.server.url, token, method, route(), body());
      assert.equal(response.status, 422, response.text);
      const error = JSON.parse(response.text).error;
      assert.equal(error.code, 'invalid_payload');
      assert.ok(error.message.startsWith(`${field}:`), error.message);
      assert.equal((await producer.getJob(jobId)).body.lastSeq, before);
    });
  }

  it('refuses a NUL in a query string workspace id with 422', async () => {
    const admin = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: ['*'] }));
    assertHttpError(await admin.listJobs({ workspaceId: 'a\u0000b' }), 422, 'invalid_payload');
  });

  it('refuses a workspace id in the stream path that a body would refuse, with 422, and keeps the stream headers', async () => {
    const admin = mintToken(ctx.server.secret, { workspaces: ['*'] });
    for (const id of ['a%00b', 'a%01b', 'a%0Ab', 'x'.repeat(201)]) {
      const response = await fetch(`${ctx.server.url}/api/v1/workspaces/${id}/events/stream`, {
        headers: { authorization: `Bearer ${admin}` },
      });
      assert.equal(response.status, 422, id);
      assert.match((await response.json()).error.message, /^workspaceId: /);
      assert.equal(response.headers.get('cache-control'), 'no-cache, no-transform');
      assert.equal(response.headers.get('x-accel-buffering'), 'no');
    }
  });

  it('refuses the workspace id "*" (every workspace, in a token) wherever a workspace is named, and creates nothing', async () => {
    const adminToken = mintToken(ctx.server.secret, { workspaces: ['*'] });
    const admin = api(ctx.server.url, adminToken);
    const created = await raw(ctx.server.url, adminToken, 'POST', '/api/v1/jobs', JSON.stringify({ workspaceId: '*', type: 'x' }));
    assert.equal(created.status, 422, created.text);
    assert.match(JSON.parse(created.text).error.message, /^workspaceId: must not be "\*"/);
    assertHttpError(await admin.listJobs({ workspaceId: '*' }), 422, 'invalid_payload');
    const stream = await fetch(`${ctx.server.url}/api/v1/workspaces/*/events/stream`, {
      headers: { authorization: `Bearer ${adminToken}` },
    });
    assert.equal(stream.status, 422);
    await stream.body.cancel();
    const socket = await connect(ctx.server.url, adminToken);
    try {
      const ack = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: '*' });
      assert.equal(ack.ok, false, JSON.stringify(ack));
      assert.equal(ack.error.code, 'invalid_payload', JSON.stringify(ack));
    } finally {
      socket.close();
    }
    // Names that only contain a star are workspace ids like any other.
    const starred = await admin.createJob({ workspaceId: '**', type: 'x' });
    assert.equal(starred.status, 201, JSON.stringify(starred.body));
  });

  it('answers 404 for ids with a NUL in the path', async () => {
    assertHttpError(await producer.getJob('a\u0000b'), 404, 'not_found');
    assertHttpError(await producer.events(`${jobId}\u0000`, {}), 404, 'not_found');
    assertHttpError(await producer.stepOutput(jobId, `${stepId}\u0000`, { chunk: 'x' }), 404, 'not_found');
  });
});

describe('numbers and nesting in stored JSON', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
  });

  const create = (metadataText) => raw(ctx.server.url, token, 'POST', '/api/v1/jobs',
    `{"workspaceId":"${workspace}","type":"x","metadata":${metadataText}}`);

  for (const [number, field] of [
    ['18446744073709551617', 'metadata.n'],
    ['-9223372036854775809', 'metadata.n'],
    ['0.10000000000000000001', 'metadata.n'],
    ['123456789012345678901234567890', 'metadata.n'],
  ]) {
    it(`refuses ${number}, which would read back as another number, naming ${field}`, async () => {
      const response = await create(`{"n":${number}}`);
      assert.equal(response.status, 422, response.text);
      assert.ok(JSON.parse(response.text).error.message.startsWith(`${field}:`));
    });
  }

  it('refuses the same in a result, a payload and a batch item', async () => {
    const job = JSON.parse((await create('{}')).text);
    const events = await raw(ctx.server.url, token, 'POST', `/api/v1/jobs/${job.id}/events`,
      '{"type":"ai.tokens_used","payload":{"tokens":[1,18446744073709551617]}}');
    assert.equal(events.status, 422);
    assert.match(JSON.parse(events.text).error.message, /^payload\.tokens\[1\]:/);
    const batch = await raw(ctx.server.url, token, 'POST', '/api/v1/events/batch',
      `{"events":[{"jobId":"${job.id}","kind":"status","status":"queued"},`
      + `{"jobId":"${job.id}","kind":"event","type":"gate.passed","payload":{"x":1e400}}]}`);
    assert.equal(batch.status, 422, batch.text);
    assert.match(JSON.parse(batch.text).error.message, /^events\[1\]\.payload\.x:/);
    assert.equal(JSON.parse((await raw(ctx.server.url, token, 'GET', `/api/v1/jobs/${job.id}`)).text).lastSeq, 1);
  });

  it('reads back the largest 64-bit integers and short decimals exactly, everywhere', async () => {
    const created = await create('{"u":18446744073709551615,"i":-9223372036854775808,"f":0.1,"e":2.5e-300,"z":-0.0,"b":1e18}');
    assert.equal(created.status, 201, created.text);
    const { id } = JSON.parse(created.text);
    for (const text of [
      created.text,
      (await raw(ctx.server.url, token, 'GET', `/api/v1/jobs/${id}`)).text,
      (await raw(ctx.server.url, token, 'GET', `/api/v1/jobs/${id}/events`)).text,
      (await raw(ctx.server.url, token, 'GET', `/api/v1/jobs?workspaceId=${workspace}&limit=500`)).text,
    ]) {
      assert.match(text, /"z":-0\.0/, 'negative zero keeps its sign on every read');
      assert.match(text, /"b":1e\+18/, 'a float stays a float on every read');
      assert.match(text, /"u":18446744073709551615/);
      assert.match(text, /"i":-9223372036854775808/);
      assert.match(text, /"f":0\.1[,}]/);
    }
  });

  it('refuses metadata nested 125 levels deep (the poison record) and accepts 60 levels, readable everywhere', async () => {
    const deep = (n) => `${'['.repeat(n)}1${']'.repeat(n)}`;
    const poison = await create(`{"a":${deep(125)}}`);
    assert.equal(poison.status, 422, poison.text);
    assert.match(JSON.parse(poison.text).error.message, /nested more than 64 levels/);
    const tooDeepForTheParser = await create(`{"a":${deep(300)}}`);
    assert.equal(tooDeepForTheParser.status, 422, tooDeepForTheParser.text);

    const fine = await create(`{"a":${deep(60)}}`);
    assert.equal(fine.status, 201, fine.text);
    const { id } = JSON.parse(fine.text);
    assert.equal((await producer.getJob(id)).status, 200);
    assert.equal((await producer.events(id, {})).status, 200);
    const socket = await connect(ctx.server.url, token);
    const got = [];
    socket.on('job:created', (e) => got.push(e.seq));
    const ack = await emitAck(socket, 'subscribe:job', { jobId: id, since: 0 });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    while (got.length < 1) await sleep(20);
    assert.equal(socket.connected, true);
    socket.close();
  });
});

describe('repeated subscribes on one socket', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
  });

  // A job with seq 1..n.
  async function jobWithEvents(n) {
    const job = (await producer.createJob({ workspaceId: workspace, type: 'x' })).body;
    for (let i = 2; i <= n; i += 1) await producer.setProgress(job.id, { progress: i });
    return job.id;
  }

  // Records every event's seq per job on a socket.
  function record(socket) {
    const seqs = {};
    socket.onAny((name, e) => {
      if (e && e.jobId && Number.isInteger(e.seq)) (seqs[e.jobId] ||= []).push(e.seq);
    });
    return seqs;
  }

  async function until(check, what) {
    const deadline = Date.now() + 10_000;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(20);
    }
  }

  const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  it('subscribe:job with the same since twice delivers each event once', async () => {
    const jobId = await jobWithEvents(7);
    const socket = await connect(ctx.server.url, token);
    const seqs = record(socket);
    const [a, b] = await Promise.all([
      emitAck(socket, 'subscribe:job', { jobId, since: 2 }),
      emitAck(socket, 'subscribe:job', { jobId, since: 2 }),
    ]);
    assert.equal(a.ok, true);
    assert.equal(b.ok, true);
    await producer.setProgress(jobId, { progress: 80 }); // seq 8: the sentinel
    await until(() => (seqs[jobId] || []).includes(8), 'seq 8');
    assert.deepEqual(seqs[jobId], range(3, 8));
    socket.close();
  });

  it('an older since, no since, or a resubscribe after unsubscribe never sends an event again', async () => {
    const jobId = await jobWithEvents(5);
    const socket = await connect(ctx.server.url, token);
    const seqs = record(socket);
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId, since: 3 })).ok, true);
    await until(() => (seqs[jobId] || []).includes(5), 'seq 5');
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId, since: 0 })).ok, true);
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
    assert.equal((await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: workspace })).ok, true);
    assert.equal((await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: workspace })).ok, true);
    assert.equal((await emitAck(socket, 'unsubscribe:job', { jobId })).ok, true);
    assert.equal((await emitAck(socket, 'unsubscribe:workspace:jobs', { workspaceId: workspace })).ok, true);
    await producer.setProgress(jobId, { progress: 60 }); // seq 6, while not subscribed
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId, since: 0 })).ok, true);
    await producer.setProgress(jobId, { progress: 70 }); // seq 7: the sentinel
    await until(() => (seqs[jobId] || []).includes(7), 'seq 7');
    assert.deepEqual(seqs[jobId], [4, 5, 6, 7], 'each event once, in order; 6 was missed while away');
    socket.close();
  });

  it('applies requests sent back to back in the order they were sent: the last one wins', async () => {
    for (let round = 0; round < 10; round += 1) {
      const jobId = await jobWithEvents(2);
      const socket = await connect(ctx.server.url, token, { transports: ['websocket'] });
      const seqs = record(socket);
      assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
      socket.emit('unsubscribe:job', { jobId });
      assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
      socket.emit('unsubscribe:workspace:jobs', { workspaceId: workspace });
      assert.equal((await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: workspace })).ok, true);
      await producer.setProgress(jobId, { progress: 50 }); // seq 3
      await until(() => (seqs[jobId] || []).includes(3), `seq 3 after a resubscribe (round ${round})`);
      assert.deepEqual(seqs[jobId], [3]);
      socket.close();
    }
  });

  it('a job subscribe and a workspace subscribe sent together while the job is written to leave no silent hole', async () => {
    for (const jobFirst of [true, false]) {
      for (let round = 0; round < 6; round += 1) {
        const jobId = await jobWithEvents(11);
        let writing = true;
        const writer = (async () => {
          for (let p = 0; writing && p < 40; p += 1) await producer.setProgress(jobId, { progress: p });
        })();
        const socket = await connect(ctx.server.url, token, { transports: ['websocket'] });
        const seqs = record(socket);
        const job = () => emitAck(socket, 'subscribe:job', { jobId, since: 2 });
        const ws = () => emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: workspace });
        const [a, b] = jobFirst ? await Promise.all([job(), ws()]) : (await Promise.all([ws(), job()])).reverse();
        assert.equal(b.ok, true);
        writing = false;
        await writer;
        const last = (await producer.getJob(jobId)).body.lastSeq;
        await producer.setProgress(jobId, { progress: 99 }); // the sentinel
        await until(() => (seqs[jobId] || []).includes(last + 1), 'the sentinel');
        const got = seqs[jobId];
        if (a.ok) {
          assert.deepEqual(got, range(3, last + 1), `job first: ${jobFirst}; each event after since 2 once, in order`);
        } else {
          // Refused, never silently: later events came through the workspace, in order.
          assert.equal(jobFirst, false, 'a job subscribe sent first is never refused');
          assert.equal(a.error.code, 'invalid_cursor');
          assert.deepEqual(got, range(got[0], last + 1));
        }
        socket.close();
      }
    }
  });

  it('an app whose connect handler subscribes twice resumes across reconnects without a duplicate', async () => {
    const jobId = await jobWithEvents(3);
    const socket = io(ctx.server.url, { forceNew: true, auth: { token }, reconnectionDelay: 50, reconnectionDelayMax: 100 });
    const seqs = [];
    let lastSeq = 0;
    socket.on('job:progress', (e) => { seqs.push(e.seq); lastSeq = e.seq; });
    socket.on('job:created', (e) => { seqs.push(e.seq); lastSeq = e.seq; });
    let connects = 0;
    const subscribe = () => socket.emit('subscribe:job', { jobId, since: lastSeq });
    socket.on('connect', () => { connects += 1; subscribe(); });
    socket.on('connect', subscribe); // registered twice, as a real app may do
    await until(() => connects >= 1 && seqs.includes(3), 'the first replay');
    for (let round = 0; round < 3; round += 1) {
      await producer.setProgress(jobId, { progress: 10 + round });
      socket.io.engine.close(); // a network drop: the client reconnects by itself
      await until(() => connects >= round + 2, `reconnect ${round + 1}`);
      await producer.setProgress(jobId, { progress: 20 + round });
    }
    const last = (await producer.getJob(jobId)).body.lastSeq;
    await until(() => seqs.includes(last), `seq ${last}`);
    socket.close();
    assert.deepEqual(seqs, range(1, last), 'every event once, in order');
  });
});
