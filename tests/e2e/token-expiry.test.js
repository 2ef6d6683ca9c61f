// Token expiry on long-lived connections (CONTRACT §7): at the token's `exp`
// the server closes the Socket.IO socket's transport — so that the stock
// socket.io-client reconnects by itself, calling its `auth` function for a
// fresh token — and ends open SSE streams; a subscribe after `exp` is never
// granted, and a reconnect with the expired token is refused. Clients that
// follow the reconnect pattern (auth as a function, resume with `since`) lose
// nothing and get nothing twice. The waits for a token to expire are sleeps;
// every "nothing more" check waits for a later event instead.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const { io } = require('socket.io-client');
const { EventSource } = require('eventsource');
const { SERVER_EVENTS, api, connect, emitAck, mintToken, skipReason, sleep, useServer } = require('./harness');
const { openStream } = require('./sse-client');

const WAIT_MS = 15_000;
// How long after `exp` the server may take to close (timer and network slack).
const CLOSE_SLACK_MS = 1500;

// The `exp` claim of a token, in milliseconds.
const expiryOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).exp * 1000;

// Resolves when `predicate()` holds, checked on each call of the returned `check`.
function until(predicate, what, timeoutMs = WAIT_MS) {
  let settle;
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not within ${timeoutMs} ms: ${what}`)), timeoutMs);
    settle = () => { if (predicate()) { clearTimeout(timer); resolve(); } };
  });
  return { promise, check: () => settle() };
}

describe('token expiry', { skip: skipReason(), timeout: 180_000 }, () => {
  const cleanups = [];
  // Registered before useServer(), so that clients close before the server stops.
  after(() => cleanups.forEach((clean) => clean()));
  const ctx = useServer();
  const workspaceId = randomUUID();
  let producer;

  const token = (expiresIn) => mintToken(ctx.server.secret, {
    sub: 'viewer', workspaces: [workspaceId], scope: 'subscribe', expiresIn,
  });
  const ok = async (call, status = 200) => {
    const response = await call;
    assert.equal(response.status, status, JSON.stringify(response.body));
    return response.body;
  };
  const runningJob = async () => {
    const job = await ok(producer.createJob({ workspaceId, type: 'e2e.expiry' }), 201);
    await ok(producer.setStatus(job.id, { status: 'queued' }));
    await ok(producer.setStatus(job.id, { status: 'running' }));
    const { step } = await ok(producer.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' }), 201);
    return { id: job.id, stepId: step.id };
  };
  // Writes a line of output every 50 ms until stop() (at most 400 lines);
  // stop() resolves with the seq of the last line written.
  const keepWriting = (job) => {
    let stopped = false;
    let last = 0;
    const done = (async () => {
      for (let i = 0; i < 400 && !stopped; i += 1) {
        last = (await ok(producer.stepOutput(job.id, job.stepId, { chunk: `line ${i}\n` }))).event.seq;
        await sleep(50);
      }
    })();
    return { stop: async () => { stopped = true; await done; return last; } };
  };
  const finish = async (job) => {
    await ok(producer.completeStep(job.id, job.stepId, { status: 'completed' }));
    return (await ok(producer.setStatus(job.id, { status: 'completed' }))).event.seq;
  };
  const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  before(() => {
    producer = api(ctx.server.url, mintToken(ctx.server.secret, { sub: 'producer', workspaces: [workspaceId] }));
  });

  const transports = [
    ['WebSocket', { transports: ['websocket'] }],
    ['long-polling', { transports: ['polling'] }],
    ['polling upgraded to WebSocket', { transports: ['polling', 'websocket'], upgrade: true }],
  ];
  for (const [name, options] of transports) {
    it(`over ${name}: the socket closes at exp, the client reconnects with a fresh token from its auth function and resumes with since, without gap or repeat`, async () => {
      const job = await runningJob();
      const first = token(3);
      const exp = expiryOf(first);
      const issued = [];
      // The reconnect pattern of README: auth as a function, since = the last seq seen.
      const socket = io(ctx.server.url, {
        ...options,
        forceNew: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 200,
        auth: (cb) => {
          issued.push(issued.length === 0 ? first : token(3600));
          cb({ token: issued.at(-1) });
        },
      });
      cleanups.push(() => socket.close());
      const seqs = [];
      const acks = [];
      const disconnects = [];
      const ids = [];
      let lastSeq = 0;
      let upgraded = false;
      let waiter = { check: () => {} };
      const wait = (predicate, what) => { waiter = until(predicate, what); waiter.check(); return waiter.promise; };
      socket.io.engine.on('upgrade', () => { upgraded = true; waiter.check(); });
      socket.on('connect', async () => {
        ids.push(socket.id);
        acks.push(await socket.timeout(5000).emitWithAck('subscribe:job', { jobId: job.id, since: lastSeq }));
        waiter.check();
      });
      socket.on('disconnect', (reason) => { disconnects.push({ reason, at: Date.now() }); waiter.check(); });
      for (const event of SERVER_EVENTS) {
        socket.on(event, (data) => { seqs.push(data.seq); lastSeq = Math.max(lastSeq, data.seq); waiter.check(); });
      }
      const writer = keepWriting(job);

      await wait(() => acks.length === 1, 'the first subscription');
      if (options.upgrade) {
        await wait(() => upgraded, 'the upgrade to WebSocket');
        assert.equal(socket.io.engine.transport.name, 'websocket');
      }
      await wait(() => acks.length === 2, 'the subscription after the reconnect');
      const resumedFrom = lastSeq;
      await wait(() => lastSeq >= resumedFrom + 5, 'events after it');
      const lastLine = await writer.stop();
      const end = await finish(job);
      assert.ok(end > lastLine);
      await wait(() => lastSeq === end, `seq ${end}`);

      assert.deepEqual(disconnects.map((d) => d.reason), ['transport close']);
      const closedAt = disconnects[0].at;
      assert.ok(closedAt >= exp, `closed ${exp - closedAt} ms before exp`);
      assert.ok(closedAt < exp + CLOSE_SLACK_MS, `closed ${closedAt - exp} ms after exp`);
      assert.equal(issued.length, 2, 'auth was asked once more');
      assert.notEqual(issued[1], first);
      assert.equal(new Set(ids).size, 2);
      assert.deepEqual(acks.map((a) => a.ok), [true, true], JSON.stringify(acks));
      assert.deepEqual(seqs, range(1, end), 'every event once, in order');
    });
  }

  it('a subscribe after exp is never granted on the expired connection, nothing reaches it, and the expired token cannot reconnect', async () => {
    const job = await runningJob();
    const expiring = token(3);
    const exp = expiryOf(expiring);
    // A static auth object: the client reconnects with the same, expired token.
    const socket = io(ctx.server.url, {
      forceNew: true, transports: ['websocket'], reconnectionDelay: 100, reconnectionDelayMax: 200, auth: { token: expiring },
    });
    cleanups.push(() => socket.close());
    const asked = [];    // { at, answer }
    const seqs = [];
    let disconnect = null;
    let refusal = null;
    let waiter = { check: () => {} };
    const wait = (predicate, what) => { waiter = until(predicate, what); waiter.check(); return waiter.promise; };
    for (const event of SERVER_EVENTS) socket.on(event, (data) => { seqs.push(data.seq); waiter.check(); });
    socket.on('disconnect', (reason) => { disconnect = { reason, at: Date.now() }; waiter.check(); });
    socket.on('connect_error', (err) => { refusal = err.message; waiter.check(); });
    await new Promise((resolve) => socket.once('connect', resolve));

    // Subscribes again and again on the open connection, across exp.
    while (socket.connected && Date.now() < exp + CLOSE_SLACK_MS) {
      const request = { at: Date.now(), answer: null };
      asked.push(request);
      socket.timeout(5000).emitWithAck('subscribe:job', { jobId: job.id, since: 0 })
        .then((ack) => { request.answer = ack; }, () => { request.answer = 'none'; });
      await sleep(20);
    }
    await wait(() => disconnect !== null, 'the disconnect');
    await wait(() => refusal !== null, 'the refused reconnect');
    // After the disconnect, nothing more can arrive on that connection.
    const afterExp = asked.filter((r) => r.at >= exp);
    const granted = afterExp.filter((r) => r.answer && r.answer.ok === true);
    assert.deepEqual(granted, [], 'no subscribe emitted after exp was granted');
    for (const request of afterExp.filter((r) => r.answer && r.answer !== 'none')) {
      assert.equal(request.answer.ok, false);
      assert.equal(request.answer.error.code, 'unauthorized', JSON.stringify(request.answer));
    }
    assert.ok(asked.some((r) => r.at < exp - 500 && r.answer && r.answer.ok === true), 'subscribes before exp were granted');
    assert.equal(disconnect.reason, 'transport close');
    assert.ok(disconnect.at >= exp && disconnect.at < exp + CLOSE_SLACK_MS, `closed ${disconnect.at - exp} ms after exp`);
    assert.match(refusal, /^unauthorized: token expired/);
    assert.equal(socket.connected, false);

    // An event written now reaches a socket with a fresh token (the sentinel), not the expired one.
    const before = seqs.length;
    const fresh = await connect(ctx.server.url, token(3600));
    cleanups.push(() => fresh.close());
    const seen = [];
    let sentinel = { check: () => {} };
    for (const event of SERVER_EVENTS) fresh.on(event, (data) => { seen.push(data.seq); sentinel.check(); });
    assert.equal((await emitAck(fresh, 'subscribe:job', { jobId: job.id })).ok, true);
    const { event } = await ok(producer.setProgress(job.id, { progress: 50 }));
    sentinel = until(() => seen.includes(event.seq), `seq ${event.seq} on the fresh socket`);
    sentinel.check();
    await sentinel.promise;
    assert.equal(seqs.length, before);
    assert.ok(!seqs.includes(event.seq));
    socket.close();
  });

  it('an open job stream ends at exp; EventSource\'s reconnect with the expired ?token= gets 401; a new one with a fresh token resumes with since=, without gap or repeat', async () => {
    const job = await runningJob();
    const expiring = token(3);
    const exp = expiryOf(expiring);
    const path = `/api/v1/jobs/${job.id}/events/stream`;
    const seqs = [];
    let waiter = { check: () => {} };
    const wait = (predicate, what) => { waiter = until(predicate, what); waiter.check(); return waiter.promise; };
    // An EventSource that records what it asked and got, and every event.
    const open = (tokenValue, since) => {
      const url = new URL(path, ctx.server.url);
      url.searchParams.set('token', tokenValue);
      if (since !== undefined) url.searchParams.set('since', String(since));
      const record = { requests: [], errors: [], lastEventId: null };
      record.source = new EventSource(url, {
        fetch: async (input, init) => {
          const response = await fetch(input, init);
          record.requests.push({ lastEventId: new Headers(init.headers).get('last-event-id'), status: response.status });
          waiter.check();
          return response;
        },
      });
      cleanups.push(() => record.source.close());
      for (const name of SERVER_EVENTS) {
        record.source.addEventListener(name, (message) => {
          seqs.push(JSON.parse(message.data).seq);
          record.lastEventId = message.lastEventId;
          waiter.check();
        });
      }
      record.source.addEventListener('error', (event) => {
        record.errors.push({ at: Date.now(), code: event.code, state: record.source.readyState });
        waiter.check();
      });
      return record;
    };

    const writer = keepWriting(job);
    const first = open(expiring);
    await wait(() => first.errors.some((e) => e.state === EventSource.CLOSED), 'the first EventSource to give up');
    const ended = first.errors[0];
    assert.ok(ended.at >= exp && ended.at < exp + CLOSE_SLACK_MS, `the stream ended ${ended.at - exp} ms after exp`);
    assert.equal(ended.state, EventSource.CONNECTING, 'the end of the stream made it reconnect');
    assert.deepEqual(first.requests, [
      { lastEventId: null, status: 200 },
      { lastEventId: first.lastEventId, status: 401 },
    ]);
    assert.equal(first.errors.at(-1).code, 401);

    // The application opens a new one with a fresh token, from the last id it saw.
    const second = open(token(3600), Number(first.lastEventId));
    await wait(() => seqs.length > Number(first.lastEventId) + 5, 'events on the new stream');
    await writer.stop();
    const end = await finish(job);
    await wait(() => second.errors.some((e) => e.state === EventSource.CLOSED), 'the end of the job');
    assert.deepEqual(second.requests, [
      { lastEventId: null, status: 200 },
      { lastEventId: String(end), status: 204 },
    ]);
    assert.deepEqual(seqs, range(1, end), 'every event once, in order');
  });

  it('an open workspace stream ends at exp, and the expired token cannot open it again', async () => {
    const expiring = token(3);
    const exp = expiryOf(expiring);
    const path = `/api/v1/workspaces/${encodeURIComponent(workspaceId)}/events/stream`;
    const stream = await openStream(ctx.server.url, path, { query: { token: expiring } });
    cleanups.push(stream.close);
    assert.equal(stream.status, 200);
    await stream.untilEnd(exp - Date.now() + 5000);
    assert.ok(stream.endedAt >= exp && stream.endedAt < exp + CLOSE_SLACK_MS, `ended ${stream.endedAt - exp} ms after exp`);
    const again = await openStream(ctx.server.url, path, { query: { token: expiring } });
    assert.equal(again.status, 401);
    assert.equal(again.body.error.code, 'unauthorized');
  });
});
