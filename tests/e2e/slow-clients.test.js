// Clients that hold connections without finishing their requests
// (docs/operations.md, "Limits and timeouts"): a request head must arrive
// within JOBSTREAM_HEADER_TIMEOUT (also how long an idle kept-alive connection
// stays open), a request body within JOBSTREAM_BODY_TIMEOUT, a head is at most
// JOBSTREAM_MAX_HEADER_BYTES; and at most JOBSTREAM_MAX_CONNECTIONS TCP
// connections are open, past which a new one is closed at once. Long-lived
// responses (SSE, long-polling, WebSocket) are not cut by these timeouts.
'use strict';

const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const { describe, it } = require('node:test');
const {
  api, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');
const { openStream } = require('./sse-client');

const HEADER_TIMEOUT_MS = 2000;
const BODY_TIMEOUT_MS = 2000;
// How late after its timeout a connection may be closed (timers, a loaded machine).
const SLACK_MS = 2500;

// GET on a fresh connection (no keep-alive pool): { status, body }.
function freshGet(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false, headers, timeout: 5000 }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, body }));
    });
    request.on('timeout', () => request.destroy(new Error('no answer within 5 s')));
    request.on('error', reject);
  });
}

// A raw TCP connection: { socket, received(), closedAt: Promise<ms since open> }.
async function rawConnection(url) {
  const { port } = new URL(url);
  const socket = net.connect(Number(port), '127.0.0.1');
  const opened = Date.now();
  let data = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => { data += chunk; });
  socket.on('error', () => {});
  const closedAt = new Promise((resolve) => socket.on('close', () => resolve(Date.now() - opened)));
  await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  return { socket, received: () => data, closedAt, opened };
}

// Resolves with the value of a Prometheus sample line, e.g. 'jobstream_timeouts_total{kind="header"}'.
async function metric(url, sample) {
  const { body } = await freshGet(`${url}/metrics`);
  const line = body.split('\n').find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : null;
}

describe('slow clients', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer({
    env: { JOBSTREAM_HEADER_TIMEOUT: `${HEADER_TIMEOUT_MS}ms`, JOBSTREAM_BODY_TIMEOUT: `${BODY_TIMEOUT_MS}ms` },
  });

  it('closes connections that trickle a request head, while /healthz keeps answering', async (t) => {
    const N = 200;
    const before = await metric(ctx.server.url, 'jobstream_timeouts_total{kind="header"}');
    const connections = await Promise.all(Array.from({ length: N }, () => rawConnection(ctx.server.url)));
    // One header line every 500 ms: each line is progress, none completes the head.
    let line = 0;
    const trickle = setInterval(() => {
      for (const c of connections) {
        if (!c.socket.destroyed) c.socket.write(line === 0 ? 'GET /healthz HTTP/1.1\r\n' : `X-Slow-${line}: 1\r\n`);
      }
      line += 1;
    }, 500);
    // /healthz answers all along on other connections.
    const health = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const started = Date.now();
        health.push(await freshGet(`${ctx.server.url}/healthz`).then((r) => [r.status, Date.now() - started], (e) => [e.message]));
        await sleep(200);
      }
    })();
    try {
      const closedAfter = await Promise.all(connections.map((c) => c.closedAt));
      const latest = Math.max(...closedAfter);
      const earliest = Math.min(...closedAfter);
      t.diagnostic(`${N} slow connections closed ${earliest}–${latest} ms after opening; `
        + `/healthz answered ${health.length} times meanwhile, slowest in ${Math.max(...health.map((h) => h[1] || 0))} ms`);
      assert.ok(earliest >= HEADER_TIMEOUT_MS - 200, `closed after ${earliest} ms, before the timeout`);
      assert.ok(latest <= HEADER_TIMEOUT_MS + SLACK_MS, `still open ${latest} ms after opening`);
      for (const c of connections) assert.equal(c.received(), '', 'a slow head gets no answer');
    } finally {
      clearInterval(trickle);
      polling = false;
      await poller;
    }
    assert.ok(health.length >= 5, `only ${health.length} health checks`);
    for (const h of health) assert.equal(h[0], 200, `a /healthz check failed: ${h}`);
    const after = await metric(ctx.server.url, 'jobstream_timeouts_total{kind="header"}');
    assert.ok(after - before >= N, `timeouts counted: ${before} -> ${after}`);
  });

  it('closes a kept-alive connection that sends no next request', async () => {
    const c = await rawConnection(ctx.server.url);
    c.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const answeredAt = Date.now();
    const closedAfter = await c.closedAt;
    assert.match(c.received(), /^HTTP\/1\.1 200 /);
    const idle = closedAfter - (answeredAt - c.opened);
    assert.ok(idle >= HEADER_TIMEOUT_MS - 300 && idle <= HEADER_TIMEOUT_MS + SLACK_MS, `closed after ${idle} ms idle`);
  });

  it('answers 408 request_timeout to a body that does not arrive in time', async () => {
    const token = mintToken(ctx.server.secret, { workspaces: ['slow'] });
    const c = await rawConnection(ctx.server.url);
    const body = JSON.stringify({ workspaceId: 'slow', type: 'x'.repeat(500) });
    c.socket.write(`POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n`
      + `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < body.length && !c.socket.destroyed) c.socket.write(body.slice(sent, sent += 5));
    }, 200);
    try {
      const closedAfter = await c.closedAt;
      assert.ok(sent < body.length, 'the body was cut before it was complete');
      assert.match(c.received(), /^HTTP\/1\.1 408 /);
      assert.match(c.received(), /"code":"request_timeout"/);
      assert.ok(closedAfter <= BODY_TIMEOUT_MS + SLACK_MS, `closed after ${closedAfter} ms`);
    } finally {
      clearInterval(trickle);
    }
    assert.ok(await metric(ctx.server.url, 'jobstream_timeouts_total{kind="body"}') >= 1);
  });

  it('answers 431 to a request head over the limit', async () => {
    const c = await rawConnection(ctx.server.url);
    c.socket.write(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'x'.repeat(100 * 1024)}\r\n\r\n`);
    await c.closedAt;
    assert.match(c.received(), /^HTTP\/1\.1 431 /);
  });

  it('keeps SSE streams, long-polling and WebSocket sockets open past the timeouts', async () => {
    const workspaceId = 'long-lived';
    const token = mintToken(ctx.server.secret, { workspaces: [workspaceId] });
    const client = api(ctx.server.url, token);
    const job = (await client.createJob({ workspaceId, type: 'build' })).body;
    const stream = await openStream(ctx.server.url, `/api/v1/jobs/${job.id}/events/stream`, { query: { token } });
    assert.equal(stream.status, 200);
    const polling = await connect(ctx.server.url, token, { transports: ['polling'] });
    const websocket = await connect(ctx.server.url, token, { transports: ['websocket'] });
    try {
      for (const socket of [polling, websocket]) {
        assert.equal((await emitAck(socket, 'subscribe:job', { jobId: job.id })).ok, true);
      }
      const got = [polling, websocket].map((socket) => new Promise((resolve) => socket.on('job:status', resolve)));
      await sleep(HEADER_TIMEOUT_MS + BODY_TIMEOUT_MS + 1000);
      assert.equal((await client.setStatus(job.id, { status: 'queued' })).status, 200);
      const events = await Promise.all(got);
      for (const event of events) assert.equal(event.status, 'queued');
      await stream.waitFor((s) => s.frames.some((f) => f.event === 'job:status' && f.data.status === 'queued'),
        'the job:status event');
      assert.equal(stream.ended, false);
      assert.equal(polling.connected && websocket.connected, true);
    } finally {
      polling.close();
      websocket.close();
      stream.close();
    }
  });
});

describe('the connection limit', { skip: skipReason(), timeout: 60_000 }, () => {
  const LIMIT = 5;
  const ctx = useServer({ env: { JOBSTREAM_MAX_CONNECTIONS: String(LIMIT), JOBSTREAM_HEADER_TIMEOUT: '60s' } });

  it('closes a connection past the limit at once, and takes new ones when a place is free', async () => {
    const idle = await Promise.all(Array.from({ length: LIMIT - 1 }, () => rawConnection(ctx.server.url)));
    // The last place: a kept-alive connection that sees the server count them all.
    const last = await rawConnection(ctx.server.url);
    const deadline = Date.now() + 10_000;
    for (;;) {
      last.socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
      await sleep(200);
      if (/jobstream_tcp_connections 5\n/.test(last.received())) break;
      assert.ok(Date.now() < deadline, `the server did not count ${LIMIT} connections`);
    }
    // One more: accepted and closed at once, without an answer.
    const extra = await rawConnection(ctx.server.url);
    extra.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const closedAfter = await Promise.race([extra.closedAt, sleep(5000).then(() => null)]);
    assert.ok(closedAfter !== null, 'the connection past the limit stayed open');
    assert.equal(extra.received(), '');
    // A place comes free: new connections are served again.
    idle[0].socket.destroy();
    const retryUntil = Date.now() + 10_000;
    let health = null;
    while (!health) {
      health = await freshGet(`${ctx.server.url}/healthz`).catch(() => null);
      if (!health) {
        assert.ok(Date.now() < retryUntil, 'no connection was taken after a place came free');
        await sleep(100);
      }
    }
    assert.equal(health.status, 200);
    // A new connection may still find the limit full until the server has
    // counted the freed ones out: retry, as for /healthz.
    let refused = null;
    while (refused === null) {
      refused = await metric(ctx.server.url, 'jobstream_refusals_total{limit="connections"}').catch(() => null);
      if (refused === null) {
        assert.ok(Date.now() < retryUntil + 10_000, 'no connection was taken for /metrics');
        await sleep(100);
      }
    }
    assert.ok(refused >= 1, `refusals: ${refused}`);
    for (const c of [...idle, last]) c.socket.destroy();
  });
});
