// Cluster mode: several jobstream nodes on one PostgreSQL database with a
// Redis bus between them (or PostgreSQL LISTEN/NOTIFY, JOBSTREAM_BUS=postgres). Sockets on every node get a job written through
// another node, in order, once each — also when a node is killed with SIGKILL
// mid-stream (its clients resume through another node with `since`) and when
// Redis restarts mid-stream (the gap is repaired from the database). On SQLite
// the bus is refused at start. Each test starts a private redis-server on a
// free port, so restarting it touches nothing else.
'use strict';

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const net = require('node:net');
const { io } = require('socket.io-client');
const {
  api, createDatabase, mintToken, requestedDatabase, sleep, startProcess, stopProcess, TEST_TIMEOUT_MS,
} = require('./harness');

const postgres = requestedDatabase() === 'postgres';
const haveRedis = (() => {
  try { execFileSync('redis-server', ['--version'], { stdio: 'ignore' }); return true; } catch { return false; }
})();

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(port)); });
    server.on('error', reject);
  });
}

async function startRedis(port) {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; i < 100; i += 1) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.end(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (up) return child;
    await sleep(50);
  }
  throw new Error(`redis-server did not start on port ${port}`);
}

function killRedis(child) {
  return new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGKILL'); });
}

// A logical client: a socket that follows one job, moves to another node when
// its node dies, and resubscribes with `since` = the last seq it saw.
function follower(name, url, token, jobId) {
  const state = { name, seqs: [], socket: null, moved: false };
  const attach = (target) => new Promise((resolve, reject) => {
    const socket = io(target, { auth: { token }, transports: ['websocket'], reconnection: false, forceNew: true });
    state.socket = socket;
    socket.on('step:output', (event) => state.seqs.push(event.seq));
    for (const name of ['job:status', 'step:completed', 'job:progress']) socket.on(name, (event) => state.seqs.push(event.seq));
    socket.on('connect', async () => {
      const since = state.seqs.length ? state.seqs[state.seqs.length - 1] : undefined;
      const ack = await socket.timeout(10_000).emitWithAck('subscribe:job', since === undefined ? { jobId } : { jobId, since });
      if (!ack.ok) reject(new Error(`${name}: subscribe refused: ${JSON.stringify(ack)}`));
      if (state.first === undefined) state.first = ack.job.lastSeq;
      resolve();
    });
    socket.on('connect_error', reject);
  });
  state.attach = attach;
  state.ready = attach(url);
  return state;
}

describe('a cluster of jobstream nodes', { skip: !haveRedis && 'redis-server is not installed' }, () => {
  it('refuses a cluster bus on SQLite with a clear message', { skip: postgres && 'SQLite only' }, async () => {
    const database = createDatabase();
    const log = [];
    await assert.rejects(
      startProcess({ databaseUrl: database.url, secret: 'x', log, env: { JOBSTREAM_REDIS_URL: 'redis://127.0.0.1:1' } }),
      /PostgreSQL/,
    );
    await database.drop();
  });

  for (const bus of ['redis', 'postgres']) describe(`on PostgreSQL with the ${bus === 'redis' ? 'Redis' : 'LISTEN/NOTIFY'} bus`, { skip: !postgres && 'PostgreSQL only' }, () => {
    const ctx = {};
    before(async () => {
      ctx.database = createDatabase();
      ctx.secret = crypto.randomBytes(16).toString('hex');
      ctx.log = [];
      let env = { JOBSTREAM_BUS: 'postgres' };
      if (bus === 'redis') {
        ctx.redisPort = await freePort();
        ctx.redis = await startRedis(ctx.redisPort);
        env = { JOBSTREAM_REDIS_URL: `redis://127.0.0.1:${ctx.redisPort}` };
      }
      ctx.nodes = [];
      for (let i = 0; i < 3; i += 1) {
        ctx.nodes.push(await startProcess({ databaseUrl: ctx.database.url, secret: ctx.secret, log: ctx.log, env }));
      }
    }, { timeout: 60_000 });
    after(async () => {
      for (const node of ctx.nodes || []) await stopProcess(node.child);
      if (ctx.redis) await killRedis(ctx.redis);
      if (ctx.database) await ctx.database.drop();
    }, { timeout: 30_000 });

    it('delivers a job written through one node to sockets on every node, through a node kill and a bus restart', { timeout: TEST_TIMEOUT_MS }, async (t) => {
      // Arrange: a running job, written through node B; two followers on each node.
      const [a, b, c] = ctx.nodes;
      const token = mintToken(ctx.secret, { workspaces: ['cluster'] });
      const producer = api(b.url, token);
      const job = await producer.createJob({ workspaceId: 'cluster', type: 'build' });
      assert.equal(job.status, 201, JSON.stringify(job.body));
      const jobId = job.body.id;
      await producer.setStatus(jobId, { status: 'queued' });
      await producer.setStatus(jobId, { status: 'running' });
      const step = await producer.startStep(jobId, { name: 'compile', phase: 'execution', stepType: 'command' });
      const stepId = step.body.step.id;
      const followers = [];
      for (const [i, node] of ctx.nodes.entries()) {
        for (let k = 0; k < 2; k += 1) followers.push(follower(`node${i}-${k}`, node.url, token, jobId));
      }
      await Promise.all(followers.map((f) => f.ready));

      // Act: 90 writes through B; kill A after 30 (its followers move to C); restart Redis after 60.
      for (let i = 0; i < 90; i += 1) {
        const res = await producer.stepOutput(jobId, stepId, { chunk: `line ${i}\n` });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        if (i === 30) {
          a.child.stopping = true; // killed on purpose
          a.child.kill('SIGKILL');
          for (const f of followers.filter((f) => f.name.startsWith('node0'))) {
            f.socket.close();
            f.moved = true;
            await f.attach(c.url);
          }
        }
        if (i === 60 && ctx.redis) {
          await killRedis(ctx.redis);
          await sleep(300);
          ctx.redis = await startRedis(ctx.redisPort);
        }
        await sleep(5);
      }
      await producer.completeStep(jobId, stepId, { status: 'completed' });
      const done = await producer.setStatus(jobId, { status: 'completed' });
      const lastSeq = done.body.event.seq;

      // Assert: every follower ends with exactly (first, lastSeq], in order, once.
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && followers.some((f) => f.seqs[f.seqs.length - 1] !== lastSeq)) await sleep(100);
      for (const f of followers) {
        const expected = [];
        for (let s = f.first + 1; s <= lastSeq; s += 1) expected.push(s);
        assert.deepEqual(f.seqs, expected, `${f.name}${f.moved ? ' (moved to another node)' : ''}`);
      }
      t.diagnostic(`${bus} bus: 6 followers on 3 nodes, ${lastSeq} events; node killed at write 30${ctx.redis ? ', Redis restarted at write 60' : ''}`);
      for (const f of followers) f.socket.close();
    });
  });
});
