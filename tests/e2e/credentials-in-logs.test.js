// No credential in any log: a server started with RUST_LOG=trace (every
// target at its most verbose) is given tokens every way a client can send
// one — Socket.IO `auth`, the `token` query parameter and an Authorization
// header, over long-polling and WebSocket; SSE with ?token= and with Bearer;
// HTTP API calls with Bearer; expired and badly signed tokens — and then all
// of its output (stdout and stderr) is searched for each token and for the
// JWT secrets (current and previous), also in the encodings a log could show
// them in.
'use strict';

const assert = require('node:assert/strict');
const { randomBytes, randomUUID } = require('node:crypto');
const { describe, it } = require('node:test');
const {
  api, collect, connect, emitAck, mintToken, skipReason, useServer,
} = require('./harness');
const { openStream } = require('./sse-client');

// The forms of a secret value worth searching a log for.
function encodings(value) {
  const bytes = Buffer.from(value);
  const forms = new Map([
    ['as is', value],
    ['percent-encoded', encodeURIComponent(value)],
    ['base64', bytes.toString('base64')],
    ['base64url', bytes.toString('base64url')],
    ['hex', bytes.toString('hex')],
    ['JSON string', JSON.stringify(value).slice(1, -1)],
  ]);
  return [...forms].filter(([, form]) => form.length >= 16);
}

describe('credentials never appear in the server output', { skip: skipReason(), timeout: 120_000 }, () => {
  const previousSecret = randomBytes(32).toString('hex');
  // Every target at trace, and the libraries that see raw traffic named explicitly too.
  const ctx = useServer({
    env: {
      RUST_LOG: 'trace,socketioxide=trace,engineioxide=trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace',
      JOBSTREAM_JWT_SECRET_PREVIOUS: previousSecret,
    },
  });

  it('with RUST_LOG=trace, after connections, subscriptions, streams and API calls of every kind', async () => {
    const { url, secret } = ctx.server;
    const workspaceId = randomUUID();
    const tokens = {
      'Socket.IO auth token': mintToken(secret, { sub: 'auth', workspaces: [workspaceId], scope: 'subscribe' }),
      'Socket.IO query token': mintToken(secret, { sub: 'query', workspaces: [workspaceId], scope: 'subscribe' }),
      'Socket.IO Authorization header': mintToken(secret, { sub: 'header', workspaces: [workspaceId], scope: 'subscribe' }),
      'WebSocket-only auth token': mintToken(secret, { sub: 'ws', workspaces: [workspaceId], scope: 'subscribe' }),
      'SSE ?token=': mintToken(secret, { sub: 'sse', workspaces: [workspaceId], scope: 'subscribe' }),
      'SSE Bearer': mintToken(secret, { sub: 'sse-bearer', workspaces: [workspaceId], scope: 'subscribe' }),
      'HTTP API Bearer': mintToken(secret, { sub: 'producer', workspaces: [workspaceId] }),
      'expired token': mintToken(secret, { sub: 'late', workspaces: [workspaceId], expiresIn: -60 }),
      'badly signed token': mintToken(`${secret}-not`, { sub: 'forged', workspaces: [workspaceId] }),
      'token of the previous secret': mintToken(previousSecret, { sub: 'rotated', workspaces: [workspaceId] }),
    };
    const producer = api(url, tokens['HTTP API Bearer']);
    const job = (await producer.createJob({ workspaceId, type: 'e2e.logs' })).body;
    assert.ok(job && job.id, 'job created');
    await producer.setStatus(job.id, { status: 'queued' });

    // Socket.IO, every way of giving the token, both transports (and the upgrade).
    const sockets = [
      await connect(url, tokens['Socket.IO auth token']),
      await connect(url, null, { query: { token: tokens['Socket.IO query token'] }, transports: ['polling'] }),
      await connect(url, null, {
        extraHeaders: { authorization: `Bearer ${tokens['Socket.IO Authorization header']}` },
      }),
      await connect(url, tokens['WebSocket-only auth token'], { transports: ['websocket'] }),
    ];
    const received = sockets.map((socket) => collect(socket));
    for (const socket of sockets) {
      const ack = await emitAck(socket, 'subscribe:job', { jobId: job.id, since: 0 });
      assert.equal(ack.ok, true, JSON.stringify(ack));
    }
    // Refused connections: their tokens are credentials too.
    await assert.rejects(connect(url, tokens['expired token']), /unauthorized/);
    await assert.rejects(connect(url, tokens['badly signed token'], { transports: ['websocket'] }), /unauthorized/);

    // SSE with ?token= and with Bearer, and refused ones.
    const path = `/api/v1/jobs/${job.id}/events/stream`;
    const byQuery = await openStream(url, path, { query: { token: tokens['SSE ?token='] } });
    const byHeader = await openStream(url, path, { headers: { authorization: `Bearer ${tokens['SSE Bearer']}` } });
    const refused = await openStream(url, path, { query: { token: tokens['expired token'] } });
    assert.equal(refused.status, 401);
    const forged = await openStream(url, path, { headers: { authorization: `Bearer ${tokens['badly signed token']}` } });
    assert.equal(forged.status, 401);

    // Traffic on all of them, up to the job's end.
    await producer.setStatus(job.id, { status: 'running' });
    const step = (await producer.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' })).body.step;
    await producer.stepOutput(job.id, step.id, { chunk: 'output line\n' });
    await producer.completeStep(job.id, step.id, { status: 'completed' });
    const done = await producer.setStatus(job.id, { status: 'completed' });
    assert.equal(done.status, 200);
    const lastSeq = done.body.event.seq;
    await Promise.all(received.map((r) => r.waitFor(lastSeq)));
    await byQuery.untilEnd();
    await byHeader.untilEnd();
    assert.equal(byQuery.frames.length, lastSeq);
    assert.equal(byHeader.frames.length, lastSeq);
    assert.equal((await producer.getJob(job.id)).status, 200);
    assert.equal((await api(url, tokens['expired token']).getJob(job.id)).status, 401);
    assert.equal((await api(url, tokens['token of the previous secret']).getJob(job.id)).status, 200);
    sockets.forEach((socket) => socket.close());

    // Stop the server so that everything it wrote is in.
    await ctx.server.stop();
    const output = ctx.server.output();
    // RUST_LOG=trace took effect: trace lines, and the debug lines of these connections.
    assert.match(output, /TRACE/);
    assert.match(output, /connection refused.*token expired/);
    assert.match(output, /connection refused.*invalid token signature/);

    const leaks = [];
    const search = (what, value) => {
      for (const [form, text] of encodings(value)) {
        const at = output.indexOf(text);
        if (at !== -1) leaks.push(`${what} (${form}) at ${at}: …${output.slice(Math.max(0, at - 120), at + 40)}…`);
      }
    };
    for (const [what, token] of Object.entries(tokens)) {
      search(what, token);
      search(`${what}: its signature`, token.split('.')[2]);
    }
    search('the JWT secret', secret);
    search('the previous JWT secret', previousSecret);
    assert.deepEqual(leaks, []);
  });
});
