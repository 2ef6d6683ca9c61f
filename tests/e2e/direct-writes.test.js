// Events written straight to a socket's WebSocket (encoded once for all its
// caught-up subscribers, without the socket's queue) keep the contract's order
// (CONTRACT §3): a subscription's ack comes before any event it announces, and
// its events follow it gap-free and once each, while other packets (acks,
// events behind them) still go through the queue. Sockets subscribe at random
// moments while a producer writes, over WebSocket, over long-polling, and over
// long-polling upgraded to WebSocket, enough of them for the room to be written
// on two lanes; the direct path must be taken by the WebSocket and the upgraded
// sockets (counted at /metrics).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it } = require('node:test');
const { api, connect, mintToken, skipReason, sleep, useServer } = require('./harness');

// Sockets per transport, and events the producer writes (in parallel writers).
// 135 sockets in one room: well past the size at which the server writes a
// room on two lanes (crates/delivery, `SPLIT_ROOM`).
const SOCKETS_PER_TRANSPORT = 45;
const EVENTS = 400;
const WRITERS = 4;

const TRANSPORTS = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'] },
  upgraded: { transports: ['polling', 'websocket'] },
};

async function directWrites(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('jobstream_socket_writes_direct_total '));
  assert.ok(line, 'jobstream_socket_writes_direct_total is exposed');
  return Number(line.split(' ')[1]);
}

// Connects; once connected (and, for `upgraded`, once on WebSocket), waits
// `delayMs`, then subscribes to the job. Records the ack and every event of
// the job in arrival order (an ack callback runs as its packet is decoded).
async function follower(url, token, jobId, transport, delayMs) {
  const socket = await connect(url, token, TRANSPORTS[transport]);
  if (transport === 'upgraded' && socket.io.engine.transport.name !== 'websocket') {
    await new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
  }
  const arrivals = [];
  socket.onAny((event, data) => {
    if (data && data.jobId === jobId) arrivals.push({ event, seq: data.seq });
  });
  await sleep(delayMs);
  socket.emit('subscribe:job', { jobId }, (ack) => arrivals.push({ ack }));
  return { socket, transport, arrivals };
}

// Every event after the ack, gap-free from the ack's lastSeq to `lastSeq`.
function check({ transport, arrivals }, lastSeq) {
  const what = `a ${transport} socket`;
  assert.ok(arrivals.length > 0 && arrivals[0].ack, `${what}: the ack comes first (got ${JSON.stringify(arrivals[0])})`);
  const { ack } = arrivals[0];
  assert.ok(ack.ok, `${what}: subscribed (${JSON.stringify(ack)})`);
  const start = ack.job.lastSeq;
  const seqs = arrivals.slice(1).map((a) => {
    assert.ok(a.seq !== undefined, `${what}: one ack only, then events`);
    return a.seq;
  });
  const expected = Array.from({ length: lastSeq - start }, (_, i) => start + 1 + i);
  assert.deepEqual(seqs, expected, `${what}: events ${start + 1}..${lastSeq} once each, in order`);
}

describe('events written straight to WebSockets', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();

  it('keep ack-first, gap-free, once-each order for sockets subscribing while events flow, on every transport', async () => {
    const { url, secret } = ctx.server;
    const workspaceId = randomUUID();
    const producer = api(url, mintToken(secret, { workspaces: [workspaceId] }));
    const created = await producer.createJob({ workspaceId, type: 'e2e.direct' });
    assert.equal(created.status, 201);
    const jobId = created.body.id;
    const step = await producer.startStep(jobId, { name: 'build', phase: 'execution', stepType: 'command' });
    assert.equal(step.status, 201, JSON.stringify(step.body));
    const stepId = step.body.step.id;
    const before = await directWrites(url);

    // One subject per transport: each stays under the per-subject connection limit.
    const token = (transport) => mintToken(secret, { sub: `direct-${transport}`, workspaces: [workspaceId], scope: 'subscribe' });
    // Subscribes spread over the first half of the writes.
    const followers = Object.keys(TRANSPORTS).flatMap((transport) => Array.from(
      { length: SOCKETS_PER_TRANSPORT },
      (_, i) => follower(url, token(transport), jobId, transport, 20 + i * 12),
    ));
    let written = 0;
    const writers = Array.from({ length: WRITERS }, async () => {
      while (written < EVENTS) {
        written += 1;
        const response = await producer.stepOutput(jobId, stepId, { chunk: `line ${written}\n` });
        assert.equal(response.status, 200, JSON.stringify(response.body));
      }
    });
    const sockets = await Promise.all(followers);
    await Promise.all(writers);
    // The sentinel: the job's last event, written after everything else.
    const done = await producer.setProgress(jobId, { progress: 100 });
    assert.equal(done.status, 200, JSON.stringify(done.body));
    const lastSeq = done.body.event.seq;
    const deadline = Date.now() + 30_000;
    while (sockets.some((s) => s.arrivals.at(-1)?.seq !== lastSeq) && Date.now() < deadline) await sleep(50);

    try {
      for (const socket of sockets) check(socket, lastSeq);
      assert.ok(await directWrites(url) > before, 'WebSocket deliveries were written directly');
    } finally {
      for (const { socket } of sockets) socket.close();
    }
  });

  it('takes the direct path on a socket that upgraded from long-polling', async () => {
    const { url, secret } = ctx.server;
    const workspaceId = randomUUID();
    const producer = api(url, mintToken(secret, { workspaces: [workspaceId] }));
    const jobId = (await producer.createJob({ workspaceId, type: 'e2e.direct' })).body.id;
    const token = mintToken(secret, { workspaces: [workspaceId], scope: 'subscribe' });
    const socket = await follower(url, token, jobId, 'upgraded', 0);
    try {
      while (!socket.arrivals.length) await sleep(10);
      const before = await directWrites(url);
      let lastSeq = 0;
      for (let i = 0; i < 20; i += 1) lastSeq = (await producer.setProgress(jobId, { progress: i })).body.event.seq;
      while (socket.arrivals.at(-1)?.seq !== lastSeq) await sleep(10);
      check(socket, lastSeq);
      // The first event after the ack may queue behind it; the others go direct.
      assert.ok(await directWrites(url) - before >= 10, 'most events to the upgraded socket were written directly');
    } finally {
      socket.socket.close();
    }
  });
});
