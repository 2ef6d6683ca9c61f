// Socket.IO subscription tests: refused subscriptions and their error codes,
// and unsubscribing (CONTRACT §3).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const WebSocket = require('ws');
const {
  api, assertAckError, collect, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

describe('subscribing over Socket.IO', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const ownWorkspace = randomUUID();
  const otherWorkspace = randomUUID();
  let socket;
  let producer;
  let ownJob;
  let otherJob;

  before(async () => {
    const { secret, url } = ctx.server;
    producer = api(url, mintToken(secret, { workspaces: [ownWorkspace, otherWorkspace] }));
    ownJob = (await producer.createJob({ workspaceId: ownWorkspace, type: 'e2e.subscribe' })).body;
    otherJob = (await producer.createJob({ workspaceId: otherWorkspace, type: 'e2e.subscribe' })).body;
    socket = await connect(url, mintToken(secret, { workspaces: [ownWorkspace], scope: 'subscribe' }));
  });

  after(() => socket && socket.close());

  it('refuses a workspace the token does not name with forbidden', async () => {
    const ack = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: otherWorkspace });
    assertAckError(ack, 'forbidden');
  });

  it('refuses an unknown job with not_found', async () => {
    const ack = await emitAck(socket, 'subscribe:job', { jobId: randomUUID() });
    assertAckError(ack, 'not_found');
  });

  it('refuses a job of a workspace the token cannot read with not_found', async () => {
    const ack = await emitAck(socket, 'subscribe:job', { jobId: otherJob.id });
    assertAckError(ack, 'not_found');
  });

  it('names why a payload it cannot read as JSON is refused', async () => {
    let deep = {};
    for (let i = 0; i < 300; i += 1) deep = { a: deep };
    for (const [args, why] of [
      [[], /^body: must be a JSON object; none was sent$/],
      [[Buffer.from('x')], /^body: holds binary data/],
      [[{ jobId: ownJob.id, extra: Buffer.from('x') }], /^body: holds binary data/],
      [[deep], /^body: is nested too deep to read$/],
      [[{ jobId: `${ownJob.id}\ud83d` }], /^body: holds half of a UTF-16 surrogate pair/],
    ]) {
      const ack = await socket.timeout(5000).emitWithAck('subscribe:job', ...args);
      assertAckError(ack, 'invalid_payload');
      assert.match(ack.error.message, why);
    }
    assert.equal(socket.connected, true);
  });

  const badPayloads = [
    ['subscribe:job', 'a payload without jobId', () => ({})],
    ['subscribe:job', 'a jobId that is not a string', () => ({ jobId: 42 })],
    ['subscribe:job', 'since: -1', () => ({ jobId: ownJob.id, since: -1 })],
    ['subscribe:job', "since: 'x'", () => ({ jobId: ownJob.id, since: 'x' })],
    ['subscribe:job', 'since: 1.5', () => ({ jobId: ownJob.id, since: 1.5 })],
    ['subscribe:workspace:jobs', 'a payload without workspaceId', () => ({})],
    ['subscribe:workspace:jobs', 'a workspaceId that is not a string', () => ({ workspaceId: 7 })],
  ];
  for (const [event, description, payload] of badPayloads) {
    it(`refuses ${event} with ${description} as invalid_payload`, async () => {
      const ack = await emitAck(socket, event, payload());
      assertAckError(ack, 'invalid_payload');
    });
  }

  it('refuses since greater than the last seq with invalid_cursor', async () => {
    const ack = await emitAck(socket, 'subscribe:job', { jobId: ownJob.id, since: ownJob.lastSeq + 1 });
    assertAckError(ack, 'invalid_cursor');
  });

  it('acks an unknown event sent with an ack not_found, ignores one sent without, and the socket goes on', async () => {
    const { secret, url } = ctx.server;
    const other = await connect(url, mintToken(secret, { workspaces: [ownWorkspace], scope: 'subscribe' }));
    try {
      const misspelt = await emitAck(other, 'subscribe:jobs', { jobId: ownJob.id });
      assertAckError(misspelt, 'not_found');
      assert.match(misspelt.error.message, /^unknown event "subscribe:jobs": the requests are /);
      other.emit('no:such:event', { jobId: ownJob.id });
      const long = await emitAck(other, `x${'\u00e9'.repeat(10_000)}`, {});
      assertAckError(long, 'not_found');
      assert.ok(Buffer.byteLength(long.error.message) <= 482, `${Buffer.byteLength(long.error.message)} bytes`);
      // Names JSON must escape: refused by name, the connection kept.
      for (const name of ['a"b', 'a\\b', 'line\nbreak', '\u0001']) {
        const refused = await emitAck(other, name, {});
        assertAckError(refused, 'not_found');
        assert.ok(refused.error.message.startsWith(`unknown event ${JSON.stringify(name)}:`), refused.error.message);
      }
      other.emit('no"such\\event', {});
      // socket.io-client sends a number as an event name as it is.
      const numbered = await emitAck(other, 123, {});
      assertAckError(numbered, 'not_found');
      assert.ok(numbered.error.message.startsWith('unknown event "123":'), numbered.error.message);
      other.emit(42, {});
      const subscribed = await emitAck(other, 'subscribe:job', { jobId: ownJob.id });
      assert.equal(subscribed.ok, true, JSON.stringify(subscribed));
      assert.equal(subscribed.job.id, ownJob.id);
      assert.equal(other.connected, true);
    } finally {
      other.close();
    }
  });

  it('reads a request name written with JSON escapes as the name it spells', async () => {
    const { secret, url } = ctx.server;
    const token = mintToken(secret, { workspaces: [ownWorkspace], scope: 'subscribe' });
    const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    const messages = [];
    let arrived = () => {};
    ws.on('message', (data) => { messages.push(String(data)); arrived(); });
    const next = async (prefix) => {
      for (;;) {
        const found = messages.findIndex((m) => m.startsWith(prefix));
        if (found >= 0) return messages.splice(found, 1)[0];
        await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${prefix} packet in 5 s: ${messages}`)), 5000);
          arrived = () => { clearTimeout(timer); resolve(); };
        });
      }
    };
    try {
      await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
      ws.send(`40${JSON.stringify({ token })}`);
      await next('40');
      ws.send(`421["subscribe:jo\\u0062",${JSON.stringify({ jobId: ownJob.id })}]`);
      const ack = JSON.parse((await next('431')).slice(3))[0];
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal(ack.room, `job:${ownJob.id}`);
    } finally {
      ws.close();
    }
  });

  it('accepts the job and workspace the token can read', async () => {
    const jobAck = await emitAck(socket, 'subscribe:job', { jobId: ownJob.id });
    const workspaceAck = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId: ownWorkspace });
    assert.equal(jobAck.ok, true, JSON.stringify(jobAck));
    assert.equal(jobAck.room, `job:${ownJob.id}`);
    assert.equal(workspaceAck.ok, true, JSON.stringify(workspaceAck));
    assert.deepEqual(workspaceAck.jobs.map((job) => job.id), [ownJob.id]);
  });

  it('gives a socket that comes back with since the events it missed, then live ones, each once', async () => {
    const { secret, url } = ctx.server;
    const token = mintToken(secret, { workspaces: [ownWorkspace], scope: 'subscribe' });
    const job = (await producer.createJob({ workspaceId: ownWorkspace, type: 'e2e.resume' })).body;
    const first = await connect(url, token);
    const before = collect(first);
    assert.equal((await emitAck(first, 'subscribe:job', { jobId: job.id })).ok, true);
    assert.equal((await producer.setStatus(job.id, { status: 'queued' })).status, 200);
    await before.waitFor(1);
    first.close();
    const lastSeen = before.events[0].data.seq;
    assert.equal((await producer.setStatus(job.id, { status: 'running' })).status, 200);
    assert.equal((await producer.setProgress(job.id, { progress: 30 })).status, 200);

    const second = await connect(url, token);
    try {
      const after = collect(second);
      const ack = await emitAck(second, 'subscribe:job', { jobId: job.id, since: lastSeen });
      await after.waitFor(2);
      assert.equal((await producer.setProgress(job.id, { progress: 60 })).status, 200);
      await after.waitFor(3);
      await sleep(300);

      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal(lastSeen, 2);
      assert.deepEqual(after.events.map((e) => [e.event, e.data.seq]),
        [['job:status', 3], ['job:progress', 4], ['job:progress', 5]]);
    } finally {
      second.close();
    }
  });

  it('stops delivering a job after unsubscribe:job and unsubscribe:workspace:jobs', async () => {
    const { secret, url } = ctx.server;
    const token = mintToken(secret, { workspaces: [ownWorkspace], scope: 'subscribe' });
    const leaving = await connect(url, token);
    const staying = await connect(url, token);
    try {
      const job = (await producer.createJob({ workspaceId: ownWorkspace, type: 'e2e.unsubscribe' })).body;
      for (const s of [leaving, staying]) {
        assert.equal((await emitAck(s, 'subscribe:job', { jobId: job.id })).ok, true);
        assert.equal((await emitAck(s, 'subscribe:workspace:jobs', { workspaceId: ownWorkspace })).ok, true);
      }
      const left = collect(leaving);
      const stayed = collect(staying);

      const jobAck = await emitAck(leaving, 'unsubscribe:job', { jobId: job.id });
      const workspaceAck = await emitAck(leaving, 'unsubscribe:workspace:jobs', { workspaceId: ownWorkspace });
      assert.equal((await producer.setStatus(job.id, { status: 'queued' })).status, 200);
      await stayed.waitFor(1);
      await sleep(300);

      assert.deepEqual(jobAck, { ok: true });
      assert.deepEqual(workspaceAck, { ok: true });
      assert.equal(stayed.events.length, 1);
      assert.deepEqual(left.events, []);
    } finally {
      leaving.close();
      staying.close();
    }
  });
});
