// Replay of a long job over Socket.IO (CONTRACT §3: `subscribe:job` with
// `since` gets the stored events first, then live ones): a job with 100,000
// events written in batches of 1000 is replayed to new sockets, and the
// received events are checked one by one as they arrive (not kept).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const {
  EVENT_NAME_BY_TYPE, SERVER_EVENTS, api, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

const BATCHES = 100;
const BATCH_SIZE = 1000;
const TOTAL = 1 + BATCHES * BATCH_SIZE; // job.created, then the batches
const REPLAY_LIMIT_MS = 40_000;

// Follows one job on a socket and checks each event as it comes: the next seq,
// under the Socket.IO name of its type. Keeps counts, not payloads.
function follow(socket, jobId) {
  const state = {
    count: 0, first: null, last: null, problems: [], byType: {}, lastArrival: 0,
  };
  let waiter = null;
  socket.onAny((event, data) => {
    if (!SERVER_EVENTS.includes(event)) return;
    state.lastArrival = Date.now();
    const problem = (text) => { if (state.problems.length < 10) state.problems.push(text); };
    if (data.jobId !== jobId) problem(`event of another job: ${data.jobId} #${data.seq}`);
    if (EVENT_NAME_BY_TYPE[data.type] !== event) problem(`${data.type} #${data.seq} came as "${event}"`);
    if (state.last !== null && data.seq !== state.last + 1) {
      problem(`after #${state.last} came #${data.seq}`);
    }
    if (state.first === null) state.first = data.seq;
    state.last = data.seq;
    state.count += 1;
    state.byType[data.type] = (state.byType[data.type] || 0) + 1;
    if (waiter && waiter.check()) waiter = null;
  });
  // Resolves once the event with seq `target` has arrived, then waits `quietMs`
  // more for anything unexpected after it.
  state.until = (target, timeoutMs, quietMs = 300) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiter = null;
      reject(new Error(`seq ${target} not reached within ${timeoutMs} ms: ${state.count} events, `
        + `last #${state.last}; ${state.problems.join('; ')}`));
    }, timeoutMs);
    const check = () => {
      if (state.last === null || state.last < target) return false;
      clearTimeout(timer);
      setTimeout(resolve, quietMs);
      return true;
    };
    if (!check()) waiter = { check };
  });
  return state;
}

describe('replaying a job of 100,000 events', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  const sockets = [];
  let token;
  let producer;
  let jobId;
  let writeMs;

  const openSocket = async () => {
    const socket = await connect(ctx.server.url, token, { transports: ['websocket'] });
    sockets.push(socket);
    return socket;
  };

  before(async () => {
    const { secret, url } = ctx.server;
    token = mintToken(secret, { sub: 'replayer', workspaces: [workspaceId], scope: 'subscribe' });
    producer = api(url, mintToken(secret, { sub: 'producer', workspaces: [workspaceId] }));
    const created = await producer.createJob({ workspaceId, type: 'e2e.replay' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    jobId = created.body.id;

    // The batches: the job starts, a step prints 99,995 lines, the step and the job complete.
    const stepId = randomUUID();
    const started = Date.now();
    let line = 0;
    for (let b = 0; b < BATCHES; b += 1) {
      const events = [];
      if (b === 0) {
        events.push({ jobId, kind: 'status', status: 'queued' }, { jobId, kind: 'status', status: 'running' },
          { jobId, kind: 'step', id: stepId, name: 'print', phase: 'execution', stepType: 'command' });
      }
      const closing = b === BATCHES - 1 ? 2 : 0;
      while (events.length < BATCH_SIZE - closing) {
        line += 1;
        events.push({ jobId, kind: 'output', stepId, chunk: `line ${line}\n` });
      }
      if (closing) {
        events.push({ jobId, kind: 'step_complete', stepId, status: 'completed' },
          { jobId, kind: 'status', status: 'completed', result: { lines: line } });
      }
      const response = await producer.batch({ events });
      assert.equal(response.status, 200, `batch ${b}: ${JSON.stringify(response.body).slice(0, 500)}`);
      assert.equal(response.body.events.length, BATCH_SIZE);
      assert.equal(response.body.events[BATCH_SIZE - 1].seq, 1 + (b + 1) * BATCH_SIZE);
    }
    writeMs = Date.now() - started;
    const job = await producer.getJob(jobId);
    assert.equal(job.body.lastSeq, TOTAL, JSON.stringify({ ...job.body, steps: undefined }));
    assert.equal(job.body.status, 'completed');
  }, { timeout: 120_000 });

  after(() => sockets.forEach((socket) => socket.close()));

  it('replays all 100,001 events in seq order, each once, to a socket subscribing with since 0', async () => {
    const socket = await openSocket();
    const received = follow(socket, jobId);
    const started = Date.now();

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since: 0 });
    await received.until(TOTAL, REPLAY_LIMIT_MS);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.job.lastSeq, TOTAL);
    assert.deepEqual(received.problems, []);
    assert.equal(received.first, 1);
    assert.equal(received.last, TOTAL);
    assert.equal(received.count, TOTAL);
    assert.deepEqual(received.byType, {
      'job.created': 1, 'job.queued': 1, 'job.started': 1, 'step.started': 1,
      'step.output': TOTAL - 6, 'step.completed': 1, 'job.completed': 1,
    });
    process.stdout.write(`replay: ${TOTAL} events written in ${writeMs} ms, replayed in ${Date.now() - started} ms\n`);
  });

  it('gives a socket subscribing with since in the middle exactly the events after it', async () => {
    const since = 61_234;
    const socket = await openSocket();
    const received = follow(socket, jobId);

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since });
    await received.until(TOTAL, REPLAY_LIMIT_MS);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(received.problems, []);
    assert.equal(received.first, since + 1);
    assert.equal(received.last, TOTAL);
    assert.equal(received.count, TOTAL - since);
  });

  it('keeps a socket whose client falls behind during the replay just as its ping is due, and gives it every event', async () => {
    // The server pings 25 s after the socket opened; a replay fills the
    // socket's buffer whenever the client falls behind, and the ping must
    // wait for room there rather than close the socket (docs/behaviour.md).
    const socket = await openSocket();
    const opened = Date.now();
    const received = follow(socket, jobId);
    let disconnected = null;
    socket.on('disconnect', (reason) => { disconnected = reason; });
    await sleep(Math.max(0, 24_300 - (Date.now() - opened)));

    const acked = emitAck(socket, 'subscribe:job', { jobId, since: 0 });
    // The client's event loop is busy for 1.5 s right after subscribing.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
    const ack = await acked;
    await received.until(TOTAL, REPLAY_LIMIT_MS);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(disconnected, null, `disconnected: ${disconnected}`);
    assert.equal(socket.connected, true);
    assert.deepEqual(received.problems, []);
    assert.equal(received.count, TOTAL);
  }, { timeout: 90_000 });

  it('gives nothing to a socket subscribing with since equal to the last seq', async () => {
    const socket = await openSocket();
    const received = follow(socket, jobId);

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since: TOTAL });
    await sleep(500);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(received.count, 0);
  });

  it('sends events written during a replay after the stored ones, in seq order, each once', async () => {
    const since = 40_000;
    const live = 5;
    const socket = await openSocket();
    const received = follow(socket, jobId);

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since });
    // Writes while the replay is under way (job:event types are accepted on a finished job).
    while (received.count < 1000) await sleep(5);
    const answers = [];
    for (let i = 0; i < live; i += 1) {
      answers.push(await producer.addEvent(jobId, { type: 'gate.passed', payload: { during: 'replay', i } }));
    }
    const countWhenWritten = received.count;
    await received.until(TOTAL + live, REPLAY_LIMIT_MS);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    answers.forEach((answer, i) => {
      assert.equal(answer.status, 201, JSON.stringify(answer.body));
      assert.equal(answer.body.event.seq, TOTAL + i + 1);
    });
    assert.ok(countWhenWritten < TOTAL - since, `the writes came during the replay (${countWhenWritten} events in)`);
    assert.deepEqual(received.problems, []);
    assert.equal(received.first, since + 1);
    assert.equal(received.last, TOTAL + live);
    assert.equal(received.count, TOTAL + live - since);
  });

  it('acks an unsubscribe sent during the replay before the replay ends, and sends nothing of the job after the ack', async () => {
    const socket = await openSocket();
    const log = []; // [jobId, seq] in arrival order, and 'ack' where the unsubscribe's ack came
    socket.onAny((event, data) => { if (SERVER_EVENTS.includes(event)) log.push([data.jobId, data.seq]); });
    const sentinel = await producer.createJob({ workspaceId, type: 'e2e.sentinel' });
    assert.equal(sentinel.status, 201, JSON.stringify(sentinel.body));
    const sentinelId = sentinel.body.id;

    const subscribed = await emitAck(socket, 'subscribe:job', { jobId, since: 0 });
    assert.equal(subscribed.ok, true, JSON.stringify(subscribed));
    while (log.length === 0) await sleep(1);
    const unsubscribed = await emitAck(socket, 'unsubscribe:job', { jobId });
    log.push('ack');
    assert.equal(unsubscribed.ok, true, JSON.stringify(unsubscribed));
    // The sentinel: a later event on another job, on the same socket.
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId: sentinelId })).ok, true);
    const answer = await producer.addEvent(sentinelId, { type: 'gate.passed', payload: { sentinel: true } });
    assert.equal(answer.status, 201, JSON.stringify(answer.body));
    while (!log.some((entry) => entry[0] === sentinelId)) await sleep(5);

    const ack = log.indexOf('ack');
    const before = log.slice(0, ack).map(([, seq]) => seq);
    assert.ok(before.length < TOTAL / 2, `acked after ${before.length} of ${TOTAL} events: the replay stopped`);
    assert.deepEqual(before, before.map((_, i) => i + 1), 'the events before the ack are 1, 2, 3, ... in order');
    assert.deepEqual(log.slice(ack + 1).filter((entry) => entry[0] === jobId), [], 'nothing of the job after the ack');
  });
});
