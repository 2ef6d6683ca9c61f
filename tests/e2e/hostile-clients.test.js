// Clients that stop reading (docs/behaviour.md "Reads and streams"): what the
// server holds for one client is bounded in bytes, and a client that reads
// nothing while data waits for it is closed after the stall timeout, with all
// it held freed. Raw WebSocket and TCP clients are used because the stock
// clients always read.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const WebSocket = require('ws');
const {
  api, mintToken, skipReason, sleep, useServer,
} = require('./harness');

const STALL = '3s';

function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : NaN;
}

async function until(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// A Socket.IO client over a raw WebSocket that connects, then stops reading.
async function nonReadingSocket(url, token) {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const connected = new Promise((resolve) => {
    ws.on('message', (data) => { if (String(data).startsWith('40')) resolve(); });
  });
  ws.send(`40${JSON.stringify({ token })}`);
  await connected;
  return ws;
}

// A Socket.IO client over raw long-polling requests: connects, then polls
// only when told to.
async function pollingSocket(url, token) {
  const base = `${url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base)).text();
  const { sid } = JSON.parse(open.slice(1));
  const at = `${base}&sid=${sid}`;
  const post = async (packets) => {
    const response = await fetch(at, { method: 'POST', body: packets.join('\x1e'), headers: { 'content-type': 'text/plain' } });
    assert.equal(response.status, 200);
    await response.text();
  };
  const poll = async () => (await (await fetch(at)).text()).split('\x1e');
  await post([`40${JSON.stringify({ token })}`]);
  // A ping may come first (the server pings once the session opens).
  for (let i = 0; i < 5; i += 1) {
    const packets = await poll();
    if (packets.includes('2')) await post(['3']);
    if (packets.some((p) => p.startsWith('40'))) return { post, poll };
  }
  throw new Error('no CONNECT packet in five polls');
}

describe('clients that stop reading', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer({ env: { JOBSTREAM_STALL_TIMEOUT: STALL } });
  const workspace = randomUUID();
  let token;
  let producer;
  let bigJob;

  before(async () => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
    // 900 kB of metadata: every subscribe ack carries it.
    const created = await producer.createJob({ workspaceId: workspace, type: 'big', metadata: { blob: 'x'.repeat(900_000) } });
    assert.equal(created.status, 201);
    bigJob = created.body.id;
  });

  it('holds a bounded number of bytes for a socket that sends 300 subscribes and reads nothing, then closes it', async (t) => {
    const pid = ctx.server.pid();
    const before = rssKiB(pid);
    const ws = await nonReadingSocket(ctx.server.url, token);
    ws._socket.pause(); // stop reading: the server's writes pile up
    for (let i = 0; i < 300; i += 1) {
      ws.send(`42${i}["subscribe:job",{"jobId":"${bigJob}"}]`);
    }
    await sleep(1500);
    const grown = rssKiB(pid) - before;
    t.diagnostic(`server memory grew by ${grown} KiB for the non-reading socket`);
    assert.ok(grown < 64 * 1024, `the server holds ${grown} KiB for one non-reading socket (300 acks of 900 kB would be 270 MiB)`);
    // After the stall timeout the server ends the connection and frees what it held.
    await until(async () => (await metric(ctx.server.url, 'jobstream_connections')) === 0, 'the socket to be closed');
    ws.terminate();
  });

  it('holds one large ack at a time for a socket that repeats a large workspace subscribe and reads nothing', async (t) => {
    const ws2 = randomUUID();
    const token2 = mintToken(ctx.server.secret, { workspaces: [ws2] });
    const producer2 = api(ctx.server.url, token2);
    for (let i = 0; i < 12; i += 1) {
      const r = await producer2.createJob({ workspaceId: ws2, type: 'big', metadata: { blob: 'z'.repeat(900_000) } });
      assert.equal(r.status, 201);
    }
    const pid = ctx.server.pid();
    const before = rssKiB(pid);
    const ws = await nonReadingSocket(ctx.server.url, token2);
    ws._socket.pause();
    for (let i = 0; i < 100; i += 1) ws.send(`42${i}["subscribe:workspace:jobs",{"workspaceId":"${ws2}"}]`);
    await sleep(2000);
    const grown = rssKiB(pid) - before;
    t.diagnostic(`server memory grew by ${grown} KiB for 100 subscribes with 11 MB acks`);
    assert.ok(grown < 96 * 1024, `the server holds ${grown} KiB (100 acks of 11 MB would be 1 GiB)`);
    ws.terminate();
  });

  it('closes an SSE stream that reads nothing while events wait', async () => {
    const job = (await producer.createJob({ workspaceId: workspace, type: 'log' })).body.id;
    await producer.setStatus(job, { status: 'queued' });
    await producer.setStatus(job, { status: 'running' });
    const step = (await producer.startStep(job, { name: 's', phase: 'execution', stepType: 'command' })).body.step.id;
    const { port } = new URL(ctx.server.url);
    const socket = net.connect(Number(port), '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    let closed = false;
    socket.on('close', () => { closed = true; });
    socket.on('error', () => {});
    socket.write(`GET /api/v1/jobs/${job}/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    await sleep(200);
    socket.pause();
    // 10 MiB of output for a reader that reads nothing.
    const chunk = 'y'.repeat(60_000);
    for (let i = 0; i < 170; i += 1) {
      const r = await producer.stepOutput(job, step, { chunk });
      assert.equal(r.status, 200);
    }
    await sleep(4000); // past the stall timeout
    socket.resume(); // read what was sent; the server has ended the stream
    await until(() => closed, 'the stream to be closed by the server', 30_000);
  });

  it('holds a bounded number of bytes for long-polling sockets that stop polling during a replay, and serves one that polls again', async (t) => {
    // 500 chunks of 60 kB: a replay of 30 MB for each socket.
    const job = (await producer.createJob({ workspaceId: workspace, type: 'poll-replay' })).body.id;
    await producer.setStatus(job, { status: 'queued' });
    await producer.setStatus(job, { status: 'running' });
    const step = (await producer.startStep(job, { name: 's', phase: 'execution', stepType: 'command' })).body.step.id;
    const chunk = 'p'.repeat(60_000);
    for (let i = 0; i < 500; i += 1) {
      assert.equal((await producer.stepOutput(job, step, { chunk })).status, 200);
    }
    const total = (await producer.getJob(job)).body.lastSeq;
    const SOCKETS = 12;
    const pid = ctx.server.pid();
    const before = rssKiB(pid);
    const sockets = [];
    for (let i = 0; i < SOCKETS; i += 1) {
      const socket = await pollingSocket(ctx.server.url, token);
      await socket.post([`42${i}["subscribe:job",{"jobId":"${job}","since":0}]`]);
      sockets.push(socket);
    }
    await sleep(2000); // nobody polls
    const grown = rssKiB(pid) - before;
    t.diagnostic(`server memory grew by ${grown} KiB for ${SOCKETS} long-polling sockets that stopped polling`);
    assert.ok(grown < SOCKETS * 16 * 1024, `the server holds ${grown} KiB for ${SOCKETS} sockets that stopped polling (${SOCKETS} replays of 30 MB would be ${SOCKETS * 30} MB)`);

    // The first socket polls again (within the stall timeout of its worker) and gets everything, in order.
    const seqs = [];
    const deadline = Date.now() + 60_000;
    while (seqs.length < total && Date.now() < deadline) {
      for (const packet of await sockets[0].poll()) {
        if (packet.startsWith('42[')) seqs.push(JSON.parse(packet.slice(2))[1].seq);
        if (packet === '2') await sockets[0].post(['3']);
      }
    }
    assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1));
  });

  it('holds a bounded number of bytes for a long-polling socket that sends 300 subscribes and never polls', async (t) => {
    const pid = ctx.server.pid();
    const before = rssKiB(pid);
    const socket = await pollingSocket(ctx.server.url, token);
    await socket.post(Array.from({ length: 300 }, (_, i) => `42${i}["subscribe:job",{"jobId":"${bigJob}"}]`));
    await sleep(1500);
    const grown = rssKiB(pid) - before;
    t.diagnostic(`server memory grew by ${grown} KiB for the socket that never polls`);
    assert.ok(grown < 64 * 1024, `the server holds ${grown} KiB for one socket that never polls (300 acks of 900 kB would be 270 MiB)`);
  });

  it('still serves a client that reads slowly but steadily', async () => {
    const job = (await producer.createJob({ workspaceId: workspace, type: 'steady' })).body.id;
    for (let i = 0; i < 30; i += 1) await producer.setProgress(job, { progress: i });
    const ws = await nonReadingSocket(ctx.server.url, token);
    const seqs = [];
    ws.on('message', (data) => {
      const text = String(data);
      if (text.startsWith('42')) {
        const [name, event] = JSON.parse(text.slice(2));
        if (name === 'job:progress') seqs.push(event.seq);
      }
    });
    ws.send(`421["subscribe:job",{"jobId":"${job}","since":0}]`);
    // Read in short bursts with pauses shorter than the stall timeout.
    for (let i = 0; i < 4; i += 1) {
      ws._socket.pause();
      await sleep(1000);
      ws._socket.resume();
      await sleep(200);
    }
    await until(() => seqs.length === 30, 'every progress event');
    assert.deepEqual(seqs, Array.from({ length: 30 }, (_, i) => i + 2));
    assert.equal(ws.readyState, WebSocket.OPEN);
    ws.close();
  });
});
