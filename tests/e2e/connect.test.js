// Socket.IO connection tests: token checks at connect (CONTRACT §3, §4) and
// the polling / websocket transports.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it } = require('node:test');
const { io } = require('socket.io-client');
const { connect, emitAck, mintToken, skipReason, useServer } = require('./harness');

// Resolves with the connect_error of a connection that must be refused.
async function refusal(url, token, opts) {
  let socket;
  try {
    socket = await connect(url, token, opts);
  } catch (err) {
    return err;
  }
  socket.close();
  assert.fail('the connection was accepted');
}

describe('connecting to the Socket.IO endpoint', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  const token = (claims) => mintToken(ctx.server.secret, { workspaces: [workspaceId], scope: 'subscribe', ...claims });

  // A connected socket must be usable: a subscribe to its workspace succeeds.
  async function assertUsable(socket) {
    try {
      const ack = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId });
      assert.equal(ack.ok, true, JSON.stringify(ack));
    } finally {
      socket.close();
    }
  }

  it('refuses a socket without a token with an unauthorized connect_error', async () => {
    const err = await refusal(ctx.server.url, null);
    assert.match(err.message, /^unauthorized/);
  });

  it('refuses a token that is not a JWT', async () => {
    const err = await refusal(ctx.server.url, 'not-a-jwt');
    assert.match(err.message, /^unauthorized/);
  });

  it('refuses a token with a bad signature', async () => {
    const forged = mintToken('some-other-secret', { workspaces: [workspaceId], scope: 'subscribe' });
    const err = await refusal(ctx.server.url, forged);
    assert.match(err.message, /^unauthorized/);
  });

  it('refuses an expired token', async () => {
    const err = await refusal(ctx.server.url, token({ expiresIn: -120 }));
    assert.match(err.message, /^unauthorized/);
  });

  it('refuses a bad token in the query parameter and in the header too', async () => {
    const forged = mintToken('some-other-secret', { workspaces: [workspaceId] });
    const viaQuery = await refusal(ctx.server.url, null, { query: { token: forged } });
    const viaHeader = await refusal(ctx.server.url, null, { extraHeaders: { Authorization: `Bearer ${forged}` } });
    assert.match(viaQuery.message, /^unauthorized/);
    assert.match(viaHeader.message, /^unauthorized/);
  });

  it('accepts a token given in auth.token', async () => {
    const socket = await connect(ctx.server.url, token());
    await assertUsable(socket);
  });

  it('accepts a token written after Bearer in auth.token and in the query parameter', async () => {
    const viaAuth = await connect(ctx.server.url, `Bearer ${token()}`);
    await assertUsable(viaAuth);
    const viaQuery = await connect(ctx.server.url, null, { query: { token: `bearer ${token()}` } });
    await assertUsable(viaQuery);
  });

  it('reads the next source when auth.token is empty, and names an auth payload it cannot read', async () => {
    const viaQuery = await connect(ctx.server.url, '', { query: { token: token() } });
    await assertUsable(viaQuery);
    const unreadable = await refusal(ctx.server.url, null, { auth: { token: token(), note: 'cut \ud83d' } });
    assert.match(unreadable.message, /^unauthorized: missing token: the auth payload holds half of a UTF-16 surrogate pair/);
  });

  it('accepts a token given in the token query parameter', async () => {
    const socket = await connect(ctx.server.url, null, { query: { token: token() } });
    await assertUsable(socket);
  });

  it('accepts a token given in an Authorization Bearer header over polling', async () => {
    const socket = await connect(ctx.server.url, null, {
      transports: ['polling'],
      extraHeaders: { Authorization: `Bearer ${token()}` },
    });
    await assertUsable(socket);
  });

  it('accepts a token given in an Authorization Bearer header over websocket', async () => {
    const socket = await connect(ctx.server.url, null, {
      transports: ['websocket'],
      extraHeaders: { Authorization: `Bearer ${token()}` },
    });
    await assertUsable(socket);
  });

  it('accepts a token without a scope claim as a subscribe token', async () => {
    const socket = await connect(ctx.server.url, token({ scope: null }));
    await assertUsable(socket);
  });

  it('works over websocket only', async () => {
    const socket = await connect(ctx.server.url, token(), { transports: ['websocket'] });
    assert.equal(socket.io.engine.transport.name, 'websocket');
    await assertUsable(socket);
  });

  it('starts on polling and upgrades to websocket by default', async () => {
    const socket = io(ctx.server.url, { forceNew: true, reconnection: false, auth: { token: token() } });
    try {
      const firstTransport = socket.io.engine.transport.name;
      const connected = new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', reject);
      });
      const upgraded = new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
      const timeout = new Promise((_, reject) => {
        setTimeout(() => reject(new Error('not connected and upgraded within 10 s')), 10_000).unref();
      });

      await Promise.race([Promise.all([connected, upgraded]), timeout]);

      assert.equal(firstTransport, 'polling');
      assert.equal(socket.io.engine.transport.name, 'websocket');
      const ack = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId });
      assert.equal(ack.ok, true, JSON.stringify(ack));
    } finally {
      socket.close();
    }
  });
});
