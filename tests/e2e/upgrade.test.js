// The upgrade from long-polling to WebSocket (socket.io-client's default)
// while a replay is under way (CONTRACT §3: both transports and the upgrade
// between them; every event of a job once, in seq order). The stock client's
// WebSocket is opened a little late, so that the upgrade falls in the middle
// of the replay: packets are then waiting on the polling side (one a poll
// could not fit in its payload, a channel full of them) and must all reach
// the client once, in order, over the WebSocket.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
// socket.io-client's own transport layer, for its transport classes.
const { NodeXHR, NodeWebSocket } = require('engine.io-client');
const {
  SERVER_EVENTS, api, connect, mintToken, skipReason, useServer,
} = require('./harness');

// A WebSocket transport that opens `delayMs` after socket.io-client asks it to.
function lateWebSocket(delayMs) {
  return class LateWebSocket extends NodeWebSocket {
    doOpen() { setTimeout(() => super.doOpen(), delayMs); }
  };
}

// Writes a job whose step prints `chunks` chunks of `bytes` bytes; its last seq.
async function jobWithOutput(producer, workspaceId, chunks, bytes) {
  const job = (await producer.createJob({ workspaceId, type: 'e2e.upgrade' })).body;
  await producer.setStatus(job.id, { status: 'queued' });
  await producer.setStatus(job.id, { status: 'running' });
  const step = (await producer.startStep(job.id, { name: 'print', phase: 'execution', stepType: 'command' })).body.step;
  const perBatch = Math.max(1, Math.floor(900_000 / (bytes + 200)));
  for (let i = 0; i < chunks; i += perBatch) {
    const events = [];
    for (let k = i; k < Math.min(chunks, i + perBatch); k += 1) {
      events.push({ jobId: job.id, kind: 'output', stepId: step.id, chunk: `#${k}#`.padEnd(bytes, 'y') });
    }
    const answer = await producer.batch({ events });
    assert.equal(answer.status, 200, JSON.stringify(answer.body).slice(0, 300));
  }
  return { jobId: job.id, lastSeq: (await producer.getJob(job.id)).body.lastSeq };
}

describe('upgrading to WebSocket during a replay', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  const sockets = [];
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspaceId] });
    producer = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId] }));
  });

  after(() => sockets.forEach((socket) => socket.close()));

  // Replays `jobId` from seq 0 to a stock client that starts on long-polling
  // and upgrades `delayMs` later; resolves with what arrived.
  async function replayAcrossTheUpgrade(jobId, lastSeq, delayMs) {
    const socket = await connect(ctx.server.url, token, { transports: [NodeXHR, lateWebSocket(delayMs)] });
    sockets.push(socket);
    const seen = { count: 0, last: 0, problems: [], upgradedAt: null, disconnected: null };
    socket.io.engine.on('upgrade', () => { seen.upgradedAt = seen.count; });
    socket.on('disconnect', (reason) => { seen.disconnected = reason; });
    let done;
    const finished = new Promise((resolve) => { done = resolve; });
    socket.onAny((event, data) => {
      if (!SERVER_EVENTS.includes(event) || data.jobId !== jobId) return;
      if (data.seq !== seen.last + 1 && seen.problems.length < 5) seen.problems.push(`#${data.seq} after #${seen.last}`);
      seen.last = Math.max(seen.last, data.seq);
      seen.count += 1;
      if (seen.last === lastSeq) done();
    });
    const ack = await socket.emitWithAck('subscribe:job', { jobId, since: 0 });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    const timer = setTimeout(done, 60_000);
    await finished;
    clearTimeout(timer);
    return seen;
  }

  it('gives every event of large chunks once, in order, when the upgrade comes mid-replay', async () => {
    const { jobId, lastSeq } = await jobWithOutput(producer, workspaceId, 400, 60_000);
    for (const delayMs of [150, 400]) {
      const seen = await replayAcrossTheUpgrade(jobId, lastSeq, delayMs);
      assert.deepEqual(seen.problems, [], `upgrade after ${delayMs} ms, at event ${seen.upgradedAt}`);
      assert.equal(seen.count, lastSeq);
      assert.ok(seen.upgradedAt !== null && seen.upgradedAt < lastSeq, `upgraded mid-replay (at ${seen.upgradedAt})`);
      assert.equal(seen.disconnected, null);
    }
  });

  it('completes the upgrade while the polling side is full, and gives every small event once, in order', async () => {
    const { jobId, lastSeq } = await jobWithOutput(producer, workspaceId, 20_000, 1000);
    const seen = await replayAcrossTheUpgrade(jobId, lastSeq, 300);
    assert.deepEqual(seen.problems, []);
    assert.equal(seen.count, lastSeq);
    assert.ok(seen.upgradedAt !== null, 'the upgrade completed');
    assert.equal(seen.disconnected, null);
  });
});
