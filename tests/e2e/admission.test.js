// Admission limits (docs/operations.md, "Limits and timeouts"), with small
// settings: Socket.IO connections per token subject (a connect past it gets
// connect_error `rate_limited: …`), subscriptions per socket (acked
// `rate_limited`), and writes per second per token subject on the HTTP write
// routes (429 `rate_limited` with Retry-After). Each refusal is counted in
// jobstream_refusals_total{limit}.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it } = require('node:test');
const {
  api, assertAckError, assertHttpError, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

const PER_SUBJECT = 3;
const PER_SOCKET = 3;
const RATE = 5;
const BURST = 5;

async function refusalCount(url, limit) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`jobstream_refusals_total{limit="${limit}"} `));
  return line ? Number(line.split(' ')[1]) : null;
}

describe('admission limits', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer({
    env: {
      JOBSTREAM_MAX_CONNECTIONS_PER_SUBJECT: String(PER_SUBJECT),
      JOBSTREAM_MAX_SUBSCRIPTIONS_PER_SOCKET: String(PER_SOCKET),
      JOBSTREAM_MAX_WRITES_PER_SECOND: String(RATE),
      JOBSTREAM_WRITE_BURST: String(BURST),
    },
  });
  const workspaceId = `ws-${randomUUID()}`;
  const token = (sub, scope = 'subscribe publish') => mintToken(ctx.server.secret, { sub, workspaces: [workspaceId], scope });

  // Connects, retrying while the connect is refused as rate_limited (a place
  // given back is seen once the server has processed the disconnect).
  async function connectOnceFree(sub, opts) {
    const until = Date.now() + 10_000;
    for (;;) {
      try {
        return await connect(ctx.server.url, token(sub), opts);
      } catch (err) {
        if (!/^rate_limited/.test(err.message) || Date.now() > until) throw err;
        await sleep(100);
      }
    }
  }

  it('refuses a Socket.IO connection past the limit per token subject', async () => {
    const before = await refusalCount(ctx.server.url, 'subject_connections');
    for (const transports of [['polling', 'websocket'], ['websocket'], ['polling']]) {
      const sub = `alice-${transports.join('-')}`;
      const sockets = [];
      for (let i = 0; i < PER_SUBJECT; i += 1) sockets.push(await connect(ctx.server.url, token(sub), { transports }));
      try {
        const err = await connect(ctx.server.url, token(sub), { transports }).then(
          (socket) => { socket.close(); return null; },
          (e) => e,
        );
        assert.ok(err, `a connection past the limit was accepted (${transports})`);
        assert.match(err.message, /^rate_limited: .*3 open connections/);
        // Other subjects are not affected.
        const other = await connect(ctx.server.url, token(`bob-${sub}`), { transports });
        other.close();
        // A place given back is taken again.
        sockets.shift().close();
        sockets.push(await connectOnceFree(sub, { transports }));
        const ack = await emitAck(sockets.at(-1), 'subscribe:workspace:jobs', { workspaceId });
        assert.equal(ack.ok, true, JSON.stringify(ack));
      } finally {
        for (const socket of sockets) socket.close();
      }
    }
    assert.ok(await refusalCount(ctx.server.url, 'subject_connections') >= before + 3);
  });

  it('refuses a subscribe past the limit per socket with rate_limited', async () => {
    // Each write by a subject of its own, far from the write rate.
    const producer = () => api(ctx.server.url, token(`producer-${randomUUID()}`));
    const jobs = [];
    for (let i = 0; i < 4; i += 1) {
      const created = await producer().createJob({ workspaceId, type: 'build' });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      jobs.push(created.body.id);
    }
    const before = await refusalCount(ctx.server.url, 'subscriptions');
    const socket = await connect(ctx.server.url, token('subscriber'));
    const other = await connect(ctx.server.url, token('subscriber'));
    try {
      for (const jobId of jobs.slice(0, PER_SOCKET)) {
        assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
      }
      assertAckError(await emitAck(socket, 'subscribe:job', { jobId: jobs[3] }), 'rate_limited');
      assertAckError(await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId }), 'rate_limited');
      // Subscribing again to a job the socket has is not one more.
      assert.equal((await emitAck(socket, 'subscribe:job', { jobId: jobs[1], since: 0 })).ok, true);
      // Another socket has its own count.
      assert.equal((await emitAck(other, 'subscribe:job', { jobId: jobs[3] })).ok, true);
      // An unsubscribe makes room.
      assert.equal((await emitAck(socket, 'unsubscribe:job', { jobId: jobs[0] })).ok, true);
      assert.equal((await emitAck(socket, 'subscribe:job', { jobId: jobs[3] })).ok, true);
      assertAckError(await emitAck(socket, 'subscribe:job', { jobId: jobs[0] }), 'rate_limited');
      // A refused subscribe delivers nothing; the subscribed jobs still deliver.
      const seen = [];
      socket.on('job:status', (event) => seen.push(event.jobId));
      for (const jobId of [jobs[0], jobs[3]]) {
        assert.equal((await producer().setStatus(jobId, { status: 'queued' })).status, 200);
      }
      const until = Date.now() + 10_000;
      while (!seen.includes(jobs[3])) {
        assert.ok(Date.now() < until, 'the subscribed job delivered nothing');
        await sleep(50);
      }
      assert.deepEqual(seen, [jobs[3]]);
    } finally {
      socket.close();
      other.close();
    }
    assert.ok(await refusalCount(ctx.server.url, 'subscriptions') >= before + 3);
  });

  it('answers 429 rate_limited with Retry-After to writes past the rate per token subject', async () => {
    const writer = api(ctx.server.url, token('writer'));
    const created = await writer.createJob({ workspaceId, type: 'build' });
    assert.equal(created.status, 201);
    const jobId = created.body.id;
    const before = await refusalCount(ctx.server.url, 'write_rate');
    // A burst twice the allowance: the rest of the burst passes, the others are refused.
    const answers = await Promise.all(Array.from({ length: 2 * BURST }, (_, i) => writer.setProgress(jobId, { progress: i })));
    const passed = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 429);
    assert.equal(passed.length + refused.length, answers.length, JSON.stringify(answers.map((a) => a.status)));
    assert.ok(passed.length >= BURST - 1 && passed.length <= BURST + 1, `${passed.length} passed`);
    assert.ok(refused.length >= BURST - 1, `${refused.length} refused`);
    for (const answer of refused) {
      assertHttpError(answer, 429, 'rate_limited');
      const retryAfter = answer.headers.get('retry-after');
      assert.match(retryAfter, /^[1-9][0-9]*$/, `Retry-After: ${retryAfter}`);
    }
    // A batch counts as one write, and is refused the same way.
    let batch = null;
    for (let i = 0; i < 50 && (!batch || batch.status !== 429); i += 1) {
      batch = await writer.batch({ events: [{ jobId, kind: 'progress', progress: 50 }] });
    }
    assertHttpError(batch, 429, 'rate_limited');
    assert.match(batch.headers.get('retry-after'), /^[1-9][0-9]*$/);
    // Reads are not limited, nor are other subjects.
    assert.equal((await writer.getJob(jobId)).status, 200);
    const other = api(ctx.server.url, token('another-writer'));
    assert.equal((await other.setProgress(jobId, { progress: 60 })).status, 200);
    // After Retry-After, writes pass again.
    await sleep(Number(refused[0].headers.get('retry-after')) * 1000);
    assert.equal((await writer.setProgress(jobId, { progress: 70 })).status, 200);
    assert.ok(await refusalCount(ctx.server.url, 'write_rate') >= before + refused.length + 1);
  });
});
