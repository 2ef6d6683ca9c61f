// The largest incoming Socket.IO message (JOBSTREAM_MAX_MESSAGE_BYTES, 64 KiB
// by default): a client that sends more, before or after CONNECT, over
// WebSocket (one frame or fragments) or long-polling, is disconnected, and the
// server does not hold what it sent (its RSS does not grow by the message).
// Raw engine.io clients (the `ws` package and fetch) send what socket.io-client
// never would.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { describe, it } = require('node:test');
const WebSocket = require('ws');
const { mintToken, skipReason, useServer } = require('./harness');

const BOUND = 64 * 1024;
const HUGE = 60 * 1024 * 1024;
const CLOSE_WITHIN_MS = 15_000;

// The server's resident memory, in KiB.
function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)[1]);
}

// A raw engine.io v4 WebSocket: next() resolves with the next text message,
// closed with the close code.
function engineSocket(url) {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, {
    perMessageDeflate: false,
  });
  const inbox = [];
  let waiting = null;
  ws.on('message', (data) => {
    const text = data.toString();
    if (text === '2') { ws.send('3'); return; } // engine.io ping
    inbox.push(text);
    if (waiting) { const w = waiting; waiting = null; w(); }
  });
  ws.on('error', () => {}); // writes after the server closed; `closed` tells the outcome
  const closed = new Promise((resolve) => ws.on('close', (code) => {
    resolve(code);
    if (waiting) { const w = waiting; waiting = null; w(); }
  }));
  const next = async (timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (inbox.length === 0) {
      if (ws.readyState === WebSocket.CLOSED) throw new Error('closed while waiting for a message');
      if (Date.now() > deadline) throw new Error('no message in time');
      await new Promise((resolve) => { waiting = resolve; setTimeout(resolve, 200); });
    }
    return inbox.shift();
  };
  return { ws, next, closed };
}

// Resolves with the close code, or rejects if the server keeps the connection.
function closedWithin(socket, ms = CLOSE_WITHIN_MS) {
  return Promise.race([
    socket.closed,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms)),
  ]);
}

// An engine.io socket that has completed the handshake, and (with a token) the Socket.IO CONNECT.
async function openSocket(url, token) {
  const socket = engineSocket(url);
  const open = await socket.next();
  assert.match(open, /^0\{/, open);
  if (token) {
    socket.ws.send(`40${JSON.stringify({ token })}`);
    const connected = await socket.next();
    assert.match(connected, /^40\{"sid"/, connected);
  }
  return { socket, handshake: JSON.parse(open.slice(1)) };
}

// The head of a client frame (masked, with a zero key: the payload goes as is).
function frameHead(length, { fin = true, opcode = 1 } = {}) {
  const head = Buffer.alloc(14);
  head[0] = (fin ? 0x80 : 0) | opcode;
  head[1] = 0x80 | 127;
  head.writeBigUInt64BE(BigInt(length), 2);
  return head; // bytes 10..13: the zero mask key
}

// A WebSocket over a plain TCP socket, so that a test can send part of a frame
// and keep the connection open, as a client that wants the server to hold
// memory would. With a token, it completes the Socket.IO CONNECT first.
async function rawSocket(url, token) {
  const { port } = new URL(url);
  const socket = net.connect(Number(port), '127.0.0.1');
  socket.on('error', () => {});
  const closed = new Promise((resolve) => socket.on('close', resolve));
  let buffered = Buffer.alloc(0);
  const waitFor = async (check, what) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const found = check(buffered);
      if (found) return found;
      if (socket.destroyed || Date.now() > deadline) throw new Error(`no ${what}`);
      await new Promise((resolve) => { socket.once('data', resolve); setTimeout(resolve, 100); });
    }
  };
  socket.on('data', (data) => { buffered = Buffer.concat([buffered, data]); });
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n'
    + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n'
    + 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  await waitFor((b) => b.includes('\r\n\r\n'), 'upgrade');
  buffered = buffered.subarray(buffered.indexOf('\r\n\r\n') + 4);
  // Server frames are unmasked; the ones awaited here are short text frames.
  const nextText = () => waitFor((b) => {
    if (b.length < 2) return null;
    let length = b[1] & 0x7f;
    let offset = 2;
    if (length === 126) { if (b.length < 4) return null; length = b.readUInt16BE(2); offset = 4; }
    if (b.length < offset + length) return null;
    const text = b.subarray(offset, offset + length).toString();
    buffered = b.subarray(offset + length);
    return text;
  }, 'frame');
  const send = (text) => socket.write(Buffer.concat([frameHead(Buffer.byteLength(text)), Buffer.from(text)]));
  // The next message other than an engine.io ping (answered).
  const nextMessage = async () => {
    for (;;) {
      const text = await nextText();
      if (text !== '2') return text;
      send('3');
    }
  };
  assert.match(await nextMessage(), /^0\{/);
  if (token) {
    send(`40${JSON.stringify({ token })}`);
    assert.match(await nextMessage(), /^40\{"sid"/);
  }
  return { socket, closed };
}

// Writes `chunks` in order; resolves once all are handed to the kernel or the connection is closed.
async function writeAll(socket, chunks) {
  for (const chunk of chunks) {
    if (socket.destroyed) return;
    const flushed = socket.write(chunk);
    if (!flushed) {
      await new Promise((resolve) => { socket.once('drain', resolve); socket.once('close', resolve); });
    }
  }
}

// What a client sends to make the server hold a message: all of it but its last
// byte, as one frame or as 15 MiB fragments (each under the old 16 MiB frame limit).
function heldMessage(prefix, { fragments }) {
  const payload = Buffer.concat([Buffer.from(prefix), Buffer.alloc(HUGE - prefix.length, 'x')]);
  if (!fragments) return [frameHead(payload.length), payload.subarray(0, payload.length - 1)];
  const size = 15 * 1024 * 1024;
  const chunks = [];
  for (let at = 0; at < payload.length; at += size) {
    const part = payload.subarray(at, Math.min(at + size, payload.length));
    const last = at + size >= payload.length;
    chunks.push(frameHead(part.length, { fin: last, opcode: at === 0 ? 1 : 0 }));
    chunks.push(last ? part.subarray(0, part.length - 1) : part);
  }
  return chunks;
}

describe('the largest incoming message', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const token = () => mintToken(ctx.server.secret, { workspaces: ['w'], scope: 'subscribe' });

  // Four clients at once send all but the last byte of a 60 MiB message and
  // keep their connection open: the server closes each, and holds nothing.
  async function attack(t, what, { token: withToken, fragments, prefix }) {
    const pid = ctx.server.pid();
    const before = rssKiB(pid);
    const sockets = await Promise.all([0, 1, 2, 3].map(() => rawSocket(ctx.server.url, withToken ? token() : null)));
    await Promise.all(sockets.map(({ socket }) => writeAll(socket, heldMessage(prefix, { fragments }))));
    const after = rssKiB(pid);
    for (const socket of sockets) await closedWithin(socket);
    t.diagnostic(`${what}: server RSS ${(before / 1024).toFixed(1)} MiB -> ${(after / 1024).toFixed(1)} MiB `
      + `while 4 connections sent ${HUGE / 1024 / 1024} MiB each`);
    assert.ok(after - before < 16 * 1024, `RSS grew by ${after - before} KiB`);
  }

  it('announces the bound in the engine.io handshake', async () => {
    const { socket, handshake } = await openSocket(ctx.server.url, null);
    assert.equal(handshake.maxPayload, BOUND);
    socket.ws.close();
  });

  it('closes a WebSocket that sends a huge frame before CONNECT, without holding it', async (t) => {
    await attack(t, 'one frame, before CONNECT', { token: false, fragments: false, prefix: '4' });
  });

  it('closes a WebSocket whose fragments add up to more than the bound, before CONNECT', async (t) => {
    await attack(t, 'fragments, before CONNECT', { token: false, fragments: true, prefix: '4' });
  });

  it('closes a connected socket that sends a huge event, without holding it', async (t) => {
    const prefix = '42["subscribe:job",{"jobId":"';
    await attack(t, 'one frame, after CONNECT', { token: true, fragments: false, prefix });
    await attack(t, 'fragments, after CONNECT', { token: true, fragments: true, prefix });
  });

  it('still takes an event just under the bound, and keeps the socket', async () => {
    const { socket } = await openSocket(ctx.server.url, token());
    const jobId = 'x'.repeat(BOUND - 100);
    socket.ws.send(`421["subscribe:job",{"jobId":"${jobId}"}]`);
    const ack = await socket.next();
    assert.match(ack, /^431\[/, ack.slice(0, 80));
    assert.equal(JSON.parse(ack.slice(3))[0].error.code, 'invalid_payload');
    assert.equal(socket.ws.readyState, WebSocket.OPEN);
    socket.ws.close();
  });

  it('refuses a long-polling POST over the bound and ends its session, before and after CONNECT', async () => {
    const base = `${ctx.server.url}/socket.io/?EIO=4&transport=polling`;
    for (const connectFirst of [false, true]) {
      const open = await (await fetch(base)).text();
      const { sid, maxPayload } = JSON.parse(open.slice(1));
      assert.equal(maxPayload, BOUND);
      const session = `${base}&sid=${sid}`;
      const post = (body) => fetch(session, {
        method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' },
      });
      if (connectFirst) {
        assert.equal((await post(`40${JSON.stringify({ token: token() })}`)).status, 200);
        // Poll as a client does: the session's first ping may come back alone,
        // before the CONNECT's answer.
        let polled = '';
        for (let i = 0; i < 5 && !/(^|\x1e)40\{"sid"/.test(polled); i += 1) {
          polled = await (await fetch(session)).text();
        }
        assert.match(polled, /(^|\x1e)40\{"sid"/);
      }
      // The answer is 413, unless the server closed the connection while the body was still being sent.
      const status = await post(Buffer.alloc(4 * 1024 * 1024, 'x')).then((r) => r.status, () => 'closed');
      assert.ok(status === 413 || status === 'closed', `status ${status}`);
      // The session is gone: its next poll is refused as unknown.
      const poll = await fetch(session);
      assert.equal(poll.status, 400);
      assert.match(await poll.text(), /Session ID unknown/);
    }
  });
});
