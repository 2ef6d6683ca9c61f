// Tokens from an identity provider (CONTRACT §4, docs/operations.md "Tokens"):
// a server started with a JWKS file, an issuer and audiences verifies RS256 and
// ES256 tokens by `kid`, signed here with node:crypto, and refuses a wrong
// `aud` or `iss`, an `nbf` in the future, any `crit` header, an unknown `kid`,
// `alg: none` and an HS256 token signed with a public key. `?token=` is taken
// by the two SSE streams only. A server with public keys and no secret makes
// no random secret and prints no demo token.
'use strict';

const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { describe, it, after } = require('node:test');
const {
  api, assertHttpError, collect, connect, createDatabase, emitAck, mintToken, skipReason, startProcess,
  stopProcess, useServer,
} = require('./harness');
const { openStream } = require('./sse-client');

const ISSUER = 'https://idp.e2e.example';
const AUDIENCE = 'jobstream-e2e';
const PREVIOUS_SECRET = crypto.randomBytes(24).toString('hex');

// Keys of the identity provider, made for this run, and the JWKS file that
// publishes their public halves (the EC key without `alg`: its algorithm comes
// from `kty`/`crv`).
const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const stranger = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-jwt-'));
const jwksFile = path.join(keyDir, 'jwks.json');
fs.writeFileSync(jwksFile, JSON.stringify({
  keys: [
    { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'e2e-rsa', alg: 'RS256', use: 'sig' },
    { ...ec.publicKey.export({ format: 'jwk' }), kid: 'e2e-ec', use: 'sig' },
  ],
}));
after(() => fs.rmSync(keyDir, { recursive: true, force: true }));

const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

// A JWT with `header` and `claims`, signed for its `alg` with `key` (a
// KeyObject, or the HMAC secret); `alg: none` gets an empty signature.
function signJwt(header, claims, key) {
  const input = Buffer.from(`${part(header)}.${part(claims)}`);
  let signature;
  switch (header.alg) {
    case 'RS256': signature = crypto.sign('sha256', input, key); break;
    case 'ES256': signature = crypto.sign('sha256', input, { key, dsaEncoding: 'ieee-p1363' }); break;
    case 'HS256': signature = crypto.createHmac('sha256', key).update(input).digest(); break;
    case 'none': signature = Buffer.alloc(0); break;
    default: throw new Error(`no signer for ${header.alg}`);
  }
  return `${input}.${signature.toString('base64url')}`;
}

// Claims the server accepts, for an hour; `undefined` in `changes` removes a claim.
function claimsFor(workspaceId, changes = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: 'idp-user', iss: ISSUER, aud: AUDIENCE, iat: now, exp: now + 3600,
    workspaces: [workspaceId], scope: 'subscribe publish', ...changes,
  };
  for (const [name, value] of Object.entries(claims)) if (value === undefined) delete claims[name];
  return claims;
}

const rs256 = (claims, header = {}) => signJwt({ alg: 'RS256', typ: 'JWT', kid: 'e2e-rsa', ...header }, claims, rsa.privateKey);
const es256 = (claims, header = {}) => signJwt({ alg: 'ES256', typ: 'JWT', kid: 'e2e-ec', ...header }, claims, ec.privateKey);

// Resolves with the connect_error of a connection that must be refused.
async function refusal(url, token, opts) {
  let socket;
  try {
    socket = await connect(url, token, opts);
  } catch (err) {
    return err;
  }
  socket.close();
  return assert.fail('the connection was accepted');
}

function binaryPath() {
  return process.env.JOBSTREAM_BIN || path.join(__dirname, '..', '..', 'target', 'debug', 'jobstream');
}

describe('tokens of an identity provider (JWKS, iss, aud)', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer({
    env: {
      JOBSTREAM_JWT_JWKS_FILE: jwksFile,
      JOBSTREAM_JWT_ISSUER: ISSUER,
      JOBSTREAM_JWT_AUDIENCE: `other-service, ${AUDIENCE}`,
      JOBSTREAM_JWT_SECRET_PREVIOUS: PREVIOUS_SECRET,
    },
  });
  const workspaceId = crypto.randomUUID();
  const claims = (changes) => claimsFor(workspaceId, changes);

  it('RS256 and ES256 tokens picked by kid connect, subscribe, publish and receive events', async () => {
    const producer = api(ctx.server.url, rs256(claims()));
    const created = await producer.createJob({ workspaceId, type: 'e2e.jwt' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const job = created.body;

    for (const transports of [['websocket'], ['polling']]) {
      const socket = await connect(ctx.server.url, es256(claims({ scope: 'subscribe' })), { transports });
      try {
        const events = collect(socket);
        const workspaceAck = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId });
        assert.equal(workspaceAck.ok, true, JSON.stringify(workspaceAck));
        assert.ok(workspaceAck.jobs.some((j) => j.id === job.id));
        const jobAck = await emitAck(socket, 'subscribe:job', { jobId: job.id });
        assert.equal(jobAck.ok, true, JSON.stringify(jobAck));
        const progress = await producer.setProgress(job.id, { progress: transports[0] === 'websocket' ? 10 : 20 });
        assert.equal(progress.status, 200, JSON.stringify(progress.body));
        const [{ event, data }] = await events.waitFor(1);
        assert.equal(event, 'job:progress');
        assert.equal(data.seq, progress.body.event.seq);
      } finally {
        socket.close();
      }
    }

    // An RS256 token without a kid is checked against every RS256 key.
    const noKid = signJwt({ alg: 'RS256', typ: 'JWT' }, claims(), rsa.privateKey);
    const socket = await connect(ctx.server.url, noKid);
    socket.close();
  });

  it('HS256 tokens pass the same iss and aud checks, with the current or the previous secret', async () => {
    const withClaims = claims({ aud: ['other-service'] });
    for (const secret of [ctx.server.secret, PREVIOUS_SECRET]) {
      const socket = await connect(ctx.server.url, signJwt({ alg: 'HS256', typ: 'JWT' }, withClaims, secret));
      socket.close();
    }
    // The harness's tokens carry no iss or aud: refused here.
    const bare = mintToken(ctx.server.secret, { workspaces: [workspaceId] });
    // Both are missing; which of the two is reported first is not specified.
    assert.match((await refusal(ctx.server.url, bare)).message,
      /^unauthorized: wrong token (issuer \(iss\)|audience \(aud\))$/);
    const unknown = signJwt({ alg: 'HS256' }, withClaims, 'not-a-secret-of-this-server');
    assert.equal((await refusal(ctx.server.url, unknown)).message, 'unauthorized: invalid token signature');
  });

  it('`jobstream token` puts the configured iss and aud in what it mints', async () => {
    const token = execFileSync(binaryPath(), [
      'token', '--sub', 'cli', '--workspace', workspaceId, '--scope', 'subscribe', '--ttl', '5m',
    ], {
      env: {
        ...process.env,
        JOBSTREAM_JWT_SECRET: ctx.server.secret,
        JOBSTREAM_JWT_ISSUER: ISSUER,
        JOBSTREAM_JWT_AUDIENCE: AUDIENCE,
        RUST_LOG: 'warn',
      },
      encoding: 'utf8',
    }).trim();
    const payload = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    assert.equal(payload.iss, ISSUER);
    assert.equal(payload.aud, AUDIENCE);
    const socket = await connect(ctx.server.url, token);
    socket.close();
  });

  it('`jobstream token` refuses an empty subject or a workspace that is no workspace id, and `jobstream prune` such a workspace, with a clear message', () => {
    for (const workspace of ['', '   ', 'a\tb']) {
      const run = spawnSync(binaryPath(), ['token', '--sub', 'cli', '--workspace', 'fine', '--workspace', workspace], {
        env: { ...process.env, JOBSTREAM_JWT_SECRET: ctx.server.secret, RUST_LOG: 'warn' },
        encoding: 'utf8',
      });
      assert.notEqual(run.status, 0, JSON.stringify(workspace));
      assert.equal(run.stdout, '', 'nothing minted');
      assert.match(run.stderr, /--workspace .* must not (be empty|contain control characters); name a workspace, or "\*" for all/);
    }
    for (const sub of ['', '   ']) {
      const run = spawnSync(binaryPath(), ['token', '--sub', sub, '--workspace', 'fine'], {
        env: { ...process.env, JOBSTREAM_JWT_SECRET: ctx.server.secret, RUST_LOG: 'warn' },
        encoding: 'utf8',
      });
      assert.notEqual(run.status, 0, JSON.stringify(sub));
      assert.equal(run.stdout, '', 'nothing minted');
      assert.match(run.stderr, /--sub must name who the token is for/);
    }
    for (const workspace of ['*', '', ' ']) {
      const run = spawnSync(binaryPath(), ['prune', '--finished-before', '1d', '--workspace', workspace, '--dry-run',
        '--database-url', 'sqlite::memory:'], { env: { ...process.env, RUST_LOG: 'warn' }, encoding: 'utf8' });
      assert.notEqual(run.status, 0, JSON.stringify(workspace));
      assert.match(run.stderr, /--workspace .* must not be .*; leave it out to prune every workspace/);
    }
    const all = spawnSync(binaryPath(), ['token', '--sub', 'cli', '--workspace', '*'], {
      env: { ...process.env, JOBSTREAM_JWT_SECRET: ctx.server.secret, RUST_LOG: 'warn' },
      encoding: 'utf8',
    });
    assert.equal(all.status, 0, all.stderr);
    assert.match(all.stdout.trim(), /^[\w-]+\.[\w-]+\.[\w-]+$/);
  });

  it('refuses a wrong aud or iss, an nbf in the future, a crit header, an unknown kid, alg none and key confusion', async () => {
    const now = Math.floor(Date.now() / 1000);
    const publicPem = rsa.publicKey.export({ type: 'spki', format: 'pem' });
    const cases = [
      ['wrong aud', rs256(claims({ aud: 'someone-else' })), 'wrong token audience (aud)'],
      ['aud list without ours', es256(claims({ aud: ['a', 'b'] })), 'wrong token audience (aud)'],
      ['no aud', rs256(claims({ aud: undefined })), 'wrong token audience (aud)'],
      ['wrong iss', rs256(claims({ iss: 'https://evil.example' })), 'wrong token issuer (iss)'],
      ['nbf in the future', es256(claims({ nbf: now + 300 })), 'token not yet valid (nbf)'],
      ['crit header', rs256(claims(), { crit: ['exp'], exp: now + 60 }), 'unsupported critical header parameter (crit)'],
      ['empty crit header', es256(claims(), { crit: [] }), 'unsupported critical header parameter (crit)'],
      ['unknown kid', rs256(claims(), { kid: 'e2e-rsa-2' }), 'unknown token key id (kid)'],
      ['kid of the EC key on an RS256 token', rs256(claims(), { kid: 'e2e-ec' }), 'unknown token key id (kid)'],
      ['another RSA key', signJwt({ alg: 'RS256', kid: 'e2e-rsa' }, claims(), stranger.privateKey), 'invalid token signature'],
      ['alg none', signJwt({ alg: 'none', typ: 'JWT' }, claims(), null), 'unsupported token algorithm'],
      ['HS256 signed with the public key', signJwt({ alg: 'HS256', typ: 'JWT' }, claims(), publicPem), 'invalid token signature'],
      ['expired', es256(claims({ exp: now - 1 })), 'token expired'],
    ];
    for (const [what, token, reason] of cases) {
      const err = await refusal(ctx.server.url, token);
      assert.equal(err.message, `unauthorized: ${reason}`, what);
      const answer = await api(ctx.server.url, token).listJobs({ workspaceId });
      assertHttpError(answer, 401, 'unauthorized');
      assert.equal(answer.body.error.message, `unauthorized: ${reason}`, `${what} over HTTP`);
    }
  });

  it('takes ?token= on the two SSE streams only: a write or read elsewhere is 401 missing token', async () => {
    const token = rs256(claims());
    const producer = api(ctx.server.url, token);
    const job = (await producer.createJob({ workspaceId, type: 'e2e.jwt' })).body;
    const anonymous = api(ctx.server.url, null);
    const q = `?token=${encodeURIComponent(token)}`;

    const write = await anonymous.request('POST', `/api/v1/jobs/${job.id}/progress${q}`, { body: { progress: 5 } });
    assertHttpError(write, 401, 'unauthorized');
    assert.match(write.body.error.message, /^missing token/);
    assert.match(write.body.error.message, /SSE streams/);
    const create = await anonymous.request('POST', `/api/v1/jobs${q}`, { body: { workspaceId, type: 'x' } });
    assertHttpError(create, 401, 'unauthorized');
    const batch = await anonymous.request('POST', `/api/v1/events/batch${q}`, {
      body: { events: [{ jobId: job.id, kind: 'progress', progress: 6 }] },
    });
    assertHttpError(batch, 401, 'unauthorized');
    for (const route of [`/api/v1/jobs/${job.id}`, `/api/v1/jobs/${job.id}/events`, '/api/v1/jobs']) {
      assertHttpError(await anonymous.request('GET', `${route}${q}`), 401, 'unauthorized');
    }
    // Nothing was written by the refused requests.
    const events = await producer.events(job.id);
    assert.deepEqual(events.body.events.map((e) => e.type), ['job.created']);
    // The same token as a bearer header writes.
    assert.equal((await producer.setProgress(job.id, { progress: 5 })).status, 200);

    for (const streamPath of [`/api/v1/jobs/${job.id}/events/stream`, `/api/v1/workspaces/${workspaceId}/events/stream`]) {
      const stream = await openStream(ctx.server.url, streamPath, { query: { token } });
      try {
        assert.equal(stream.status, 200, `${streamPath}: ${JSON.stringify(stream.body)}`);
        await stream.waitFor((s) => s.frames.length > 0, `a first frame of ${streamPath}`);
      } finally {
        stream.close();
      }
      // The stream's refusals over ?token= are the token's.
      const late = await openStream(ctx.server.url, streamPath, { query: { token: es256(claims({ nbf: Math.floor(Date.now() / 1000) + 300 })) } });
      late.close();
      assert.equal(late.status, 401);
      assert.equal(late.body.error.message, 'unauthorized: token not yet valid (nbf)');
    }
  });
});

describe('a server with public keys and no secret', { skip: skipReason(), timeout: 60_000 }, () => {
  it('makes no random secret, prints no demo token, refuses HS256 and accepts the keys\' tokens', async (t) => {
    const database = createDatabase();
    const log = [];
    const started = await startProcess({
      databaseUrl: database.url, secret: '', log, env: { JOBSTREAM_JWT_JWKS_FILE: jwksFile },
    });
    t.after(async () => { await stopProcess(started.child); await database.drop(); });
    const output = log.join('\n');
    assert.doesNotMatch(output, /demo workspace tokens/);
    assert.doesNotMatch(output, /random secret/);
    const workspaceId = crypto.randomUUID();
    // Without iss/aud settings they are not looked at.
    const token = rs256(claimsFor(workspaceId, { iss: undefined, aud: 'anyone' }));
    const socket = await connect(started.url, token);
    socket.close();
    const hs256 = mintToken('any-secret', { workspaces: [workspaceId] });
    assert.equal((await refusal(started.url, hs256)).message, 'unauthorized: unsupported token algorithm');
  });

  it('refuses to start with a JWKS file without a usable key', async () => {
    const database = createDatabase();
    const unusable = path.join(keyDir, 'unusable.json');
    fs.writeFileSync(unusable, JSON.stringify({ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }));
    const log = [];
    await assert.rejects(
      startProcess({ databaseUrl: database.url, secret: '', log, env: { JOBSTREAM_JWT_JWKS_FILE: unusable } }),
      /exited before it was ready/,
    );
    assert.match(log.join('\n'), /has no key this server can verify tokens with/);
    await database.drop();
  });
});
