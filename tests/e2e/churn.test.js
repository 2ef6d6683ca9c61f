// Unsubscribe and disconnect under churn while events flow: no event of a room
// reaches a socket after its unsubscribe is acked, and the sockets that stay
// lose nothing (CONTRACT §3).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it } = require('node:test');
const {
  api, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

describe('subscription churn while events flow', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();

  it('sends nothing after an unsubscribe ack and loses nothing for the sockets that stay', async () => {
    const workspace = randomUUID();
    const token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    const producer = api(ctx.server.url, token);
    const jobId = (await producer.createJob({ workspaceId: workspace, type: 'churn' })).body.id;

    // Eight sockets that stay, eight that come and go.
    const stayers = await Promise.all(Array.from({ length: 8 }, async (_, i) => {
      const socket = await connect(ctx.server.url, token, i % 2 ? { transports: ['websocket'] } : {});
      const seqs = [];
      socket.on('job:progress', (e) => seqs.push(e.seq));
      assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
      return { socket, seqs };
    }));
    let writing = true;
    const writes = (async () => {
      for (let p = 0; writing && p < 400; p += 1) await producer.setProgress(jobId, { progress: p % 100 });
    })();
    const violations = [];
    const churners = Array.from({ length: 8 }, async (_, i) => {
      for (let round = 0; round < 6; round += 1) {
        const socket = await connect(ctx.server.url, token, i % 2 ? { transports: ['websocket'] } : {});
        let unsubscribed = false;
        socket.on('job:progress', (e) => {
          if (unsubscribed) violations.push(`socket ${i} round ${round}: seq ${e.seq} after the unsubscribe ack`);
        });
        assert.equal((await emitAck(socket, i % 3 ? 'subscribe:job' : 'subscribe:workspace:jobs',
          i % 3 ? { jobId } : { workspaceId: workspace })).ok, true);
        await sleep(20 + (i * 7) % 50);
        if (round % 2 === 0) {
          const ack = await emitAck(socket, i % 3 ? 'unsubscribe:job' : 'unsubscribe:workspace:jobs',
            i % 3 ? { jobId } : { workspaceId: workspace });
          assert.equal(ack.ok, true);
          unsubscribed = true;
          await sleep(60);
        }
        socket.close(); // a disconnect, with or without an unsubscribe first
      }
    });
    await Promise.all(churners);
    writing = false;
    await writes;
    const last = (await producer.getJob(jobId)).body.lastSeq;
    await producer.setProgress(jobId, { progress: 1 }); // the sentinel
    for (const { seqs } of stayers) {
      const deadline = Date.now() + 20_000;
      while (!seqs.includes(last + 1) && Date.now() < deadline) await sleep(50);
      assert.deepEqual(seqs, Array.from({ length: last }, (_, k) => k + 2), 'every event once, in order');
    }
    assert.deepEqual(violations, []);
    for (const { socket } of stayers) socket.close();
  });
});
