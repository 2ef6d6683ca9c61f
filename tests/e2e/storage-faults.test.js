// Storage faults never break "2xx means committed" (CONTRACT §3, §5): writes
// that fail while the disk is full, or while the database drops connections
// mid-transaction, are refused with 503 `unavailable` and Retry-After; every
// acknowledged event is stored exactly once with its acknowledged seq, a live
// subscriber gets exactly the committed events, and all of it is still there
// after a restart.
//
// Disk full: the database lives on a small tmpfs (SQLite: the database file;
// PostgreSQL: a tablespace). Mounting needs root; elsewhere the test is skipped.
'use strict';

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { describe, it, before, after } = require('node:test');
const {
  api, connect, emitAck, mintToken, requestedDatabase, skipReason, sleep, spawnServer,
} = require('./harness');

const WORKSPACE = 'ws-storage';
const CHUNK = 'x'.repeat(60 * 1024);

function tryMountTmpfs(dir, size) {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function mountSkipReason() {
  if (skipReason()) return skipReason();
  if (process.getuid && process.getuid() !== 0) return 'mounting a tmpfs needs root';
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-mount-probe-'));
  const ok = tryMountTmpfs(probe, '1m');
  if (ok) execFileSync('umount', [probe]);
  fs.rmSync(probe, { recursive: true, force: true });
  return ok ? false : 'this machine does not allow mounting a tmpfs';
}

// Fills the file system at `dir` with a file until `keepBytes` are left free.
function fill(dir, keepBytes) {
  const file = path.join(dir, 'filler');
  const block = Buffer.alloc(64 * 1024, 1);
  const fd = fs.openSync(file, 'w');
  try {
    for (;;) {
      const { bavail, bsize } = fs.statfsSync(dir);
      if (bavail * bsize <= keepBytes) break;
      fs.writeSync(fd, block);
    }
  } catch (err) {
    if (err.code !== 'ENOSPC') throw err;
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

// The live subscriber's view: every event of the job, in arrival order.
async function follow(url, token, jobId) {
  const socket = await connect(url, token);
  const seqs = [];
  socket.on('step:output', (e) => seqs.push(e.seq));
  for (const name of ['job:created', 'job:status', 'step:started', 'step:completed', 'job:event']) {
    socket.on(name, (e) => { if (e.jobId === jobId) seqs.push(e.seq); });
  }
  const ack = await emitAck(socket, 'subscribe:job', { jobId, since: 0 });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  return { socket, seqs };
}

// Writes output chunks, `parallel` at a time, until `stop()` says so. Records
// each acknowledged seq with its eventId, and every refusal's status and code.
async function writeUntil(client, jobId, stepId, { parallel, stop, acked, refusals }) {
  const worker = async () => {
    while (!stop()) {
      let response;
      try {
        response = await client.stepOutput(jobId, stepId, { chunk: CHUNK });
      } catch (err) {
        refusals.push({ status: 'network', code: err.message });
        continue;
      }
      if (response.status === 200) {
        acked.push({ seq: response.body.event.seq, eventId: response.body.event.eventId });
      } else {
        const retryAfter = response.headers.get('retry-after');
        refusals.push({ status: response.status, code: response.body && response.body.error && response.body.error.code,
          message: response.body && response.body.error && response.body.error.message, retryAfter });
        await sleep(20);
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
}

function assertAckedOnce(acked) {
  const bySeq = new Map();
  for (const a of acked) {
    assert.ok(!bySeq.has(a.seq), `seq ${a.seq} was acknowledged twice`);
    bySeq.set(a.seq, a.eventId);
  }
  return bySeq;
}

// Every acknowledged event is stored with its seq and eventId, the stored
// events are 1..lastSeq without a gap, and GET /jobs answers the same every time.
async function assertStored(client, jobId, bySeq) {
  const snapshots = new Set();
  for (let i = 0; i < 8; i += 1) {
    const job = await client.getJob(jobId);
    assert.equal(job.status, 200);
    snapshots.add(job.body.lastSeq);
  }
  assert.equal(snapshots.size, 1, `GET /jobs/{id} answered different lastSeq values: ${[...snapshots]}`);
  const [lastSeq] = snapshots;
  const stored = [];
  for (let since = 0; ;) {
    const page = await client.events(jobId, { since, limit: 1000 });
    assert.equal(page.status, 200);
    stored.push(...page.body.events);
    if (page.body.events.length < 1000) break;
    since = page.body.events.at(-1).seq;
  }
  assert.deepEqual(stored.map((e) => e.seq), Array.from({ length: lastSeq }, (_, i) => i + 1));
  const byStoredSeq = new Map(stored.map((e) => [e.seq, e.eventId]));
  let lost = 0;
  for (const [seq, eventId] of bySeq) if (byStoredSeq.get(seq) !== eventId) lost += 1;
  assert.equal(lost, 0, `${lost} of ${bySeq.size} acknowledged events are not stored as acknowledged`);
  return lastSeq;
}

function assertRefusalsAreClean(refusals) {
  for (const r of refusals) {
    if (r.status === 'network') continue;
    assert.equal(r.status, 503, `a storage fault was answered ${r.status} ${r.code}: ${r.message}`);
    assert.equal(r.code, 'unavailable');
    assert.equal(r.retryAfter, '1', 'a 503 carries Retry-After');
    assert.doesNotMatch(r.message, /disk|full|sqlite|postgres|sqlx|SQLSTATE|No space/i, 'internal error text leaked');
  }
}

async function jobWithRunningStep(client) {
  const job = await client.createJob({ workspaceId: WORKSPACE, type: 'build' });
  assert.equal(job.status, 201);
  assert.equal((await client.setStatus(job.body.id, { status: 'queued' })).status, 200);
  assert.equal((await client.setStatus(job.body.id, { status: 'running' })).status, 200);
  const step = await client.startStep(job.body.id, { name: 'compile', phase: 'execution', stepType: 'command' });
  assert.equal(step.status, 201);
  return { jobId: job.body.id, stepId: step.body.step.id };
}

// A private tmpfs holding the database (SQLite) or a tablespace (PostgreSQL).
function diskFullDatabase(mount) {
  if (requestedDatabase() === 'sqlite') {
    return { url: `sqlite://${mount}/jobstream.db?mode=rwc`, drop: async () => {} };
  }
  const adminUrl = process.env.JOBSTREAM_TEST_POSTGRES_URL;
  const name = `jobstream_full_${crypto.randomBytes(5).toString('hex')}`;
  const psql = (sql) => execFileSync('psql', [adminUrl, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const location = path.join(mount, 'ts');
  fs.mkdirSync(location);
  execFileSync('chown', ['postgres:postgres', location]);
  psql(`CREATE TABLESPACE ${name} LOCATION '${location}'`);
  psql(`CREATE DATABASE ${name} TABLESPACE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      psql(`DROP TABLESPACE IF EXISTS ${name}`);
    },
  };
}

describe('a full disk', { skip: mountSkipReason(), timeout: 180_000 }, () => {
  let mount;
  let database;
  let server;

  before(async () => {
    mount = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-full-'));
    const size = requestedDatabase() === 'sqlite' ? '16m' : '48m';
    assert.ok(tryMountTmpfs(mount, size), 'mount a tmpfs');
    database = diskFullDatabase(mount);
    server = await spawnServer({ databaseUrl: database.url });
  });

  after(async () => {
    if (server) {
      await server.stop();
      if (process.exitCode) process.stderr.write(`--- server output ---\n${server.output()}\n`);
    }
    if (database) await database.drop().catch((err) => process.stderr.write(`drop: ${err.message}\n`));
    if (mount) {
      try { execFileSync('umount', [mount]); } catch { /* already gone */ }
      fs.rmSync(mount, { recursive: true, force: true });
    }
  });

  it('refuses writes with 503 while full, loses no acknowledged event, and recovers when space is freed', async () => {
    const token = mintToken(server.secret, { workspaces: [WORKSPACE] });
    const client = api(server.url, token);
    const { jobId, stepId } = await jobWithRunningStep(client);
    const live = await follow(server.url, token, jobId);

    const acked = [];
    const refusals = [];
    const filler = fill(mount, 1536 * 1024);
    // Write until the disk has been full for a while (many refusals in a row).
    let refusedBefore = 0;
    await writeUntil(client, jobId, stepId, {
      parallel: 4,
      acked,
      refusals,
      stop: () => refusals.length >= 40 || acked.length >= 4000,
    });
    refusedBefore = refusals.length;
    assert.ok(refusedBefore >= 40, `the disk never filled up (${acked.length} writes acknowledged)`);

    // Free space: writes are accepted again, by every pooled connection.
    fs.rmSync(filler);
    const afterFree = acked.length;
    await writeUntil(client, jobId, stepId, {
      parallel: 4,
      acked,
      refusals,
      stop: () => acked.length >= afterFree + 20,
    });

    assertRefusalsAreClean(refusals);
    const bySeq = assertAckedOnce(acked);
    const lastSeq = await assertStored(client, jobId, bySeq);

    // A sentinel event: once it arrives, the subscriber has all it will get.
    const sentinel = await client.addEvent(jobId, { type: 'gate.passed', payload: { sentinel: true } });
    assert.equal(sentinel.status, 201);
    const deadline = Date.now() + 20_000;
    while (!live.seqs.includes(sentinel.body.event.seq) && Date.now() < deadline) await sleep(50);
    assert.deepEqual(live.seqs, Array.from({ length: lastSeq + 1 }, (_, i) => i + 1),
      'the live subscriber got exactly the committed events, in order');
    live.socket.close();

    // After a restart, everything acknowledged is still there.
    await server.restart();
    const again = api(server.url, token);
    assert.equal(await assertStored(again, jobId, bySeq), lastSeq + 1);
  });
});

describe('connections dropped in the middle of writes', { skip: skipReason() || requestedDatabase() !== 'postgres'
  ? 'PostgreSQL only: the server drops the connections' : false, timeout: 120_000 }, () => {
  let server;
  before(async () => { server = await spawnServer(); });
  after(async () => { if (server) await server.close(); });

  it('never acknowledges a write twice or loses one', async () => {
    const token = mintToken(server.secret, { workspaces: [WORKSPACE] });
    const client = api(server.url, token);
    const { jobId, stepId } = await jobWithRunningStep(client);
    const live = await follow(server.url, token, jobId);
    const adminUrl = process.env.JOBSTREAM_TEST_POSTGRES_URL;
    const dbName = new URL(server.databaseUrl).pathname.slice(1);

    const acked = [];
    const refusals = [];
    let done = false;
    const writing = writeUntil(client, jobId, stepId, {
      parallel: 6, acked, refusals, stop: () => done,
    });
    // Terminate every server connection to the database, 25 times, while writes run.
    for (let i = 0; i < 25; i += 1) {
      await sleep(40 + Math.floor(Math.random() * 60));
      execFileSync('psql', [adminUrl, '-X', '-q', '-c',
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${dbName}' AND pid <> pg_backend_pid()`],
      { stdio: 'ignore' });
    }
    await sleep(500);
    const before = acked.length;
    while (acked.length < before + 20) await sleep(20);
    done = true;
    await writing;

    assertRefusalsAreClean(refusals);
    const bySeq = assertAckedOnce(acked);
    const lastSeq = await assertStored(client, jobId, bySeq);
    const sentinel = await client.addEvent(jobId, { type: 'gate.passed', payload: { sentinel: true } });
    assert.equal(sentinel.status, 201);
    const deadline = Date.now() + 20_000;
    while (!live.seqs.includes(sentinel.body.event.seq) && Date.now() < deadline) await sleep(50);
    assert.deepEqual(live.seqs, Array.from({ length: lastSeq + 1 }, (_, i) => i + 1));
    live.socket.close();
  });
});

describe('clients that hang up in the middle of writes', { skip: skipReason(), timeout: 120_000 }, () => {
  let server;
  before(async () => { server = await spawnServer(); });
  after(async () => { if (server) await server.close(); });

  it('leave every write whole: what committed is stored and delivered, in order', async () => {
    const token = mintToken(server.secret, { workspaces: [WORKSPACE] });
    const client = api(server.url, token);
    const { jobId, stepId } = await jobWithRunningStep(client);
    const live = await follow(server.url, token, jobId);
    const route = `${server.url}/api/v1/jobs/${jobId}/steps/${stepId}/output`;
    const acked = [];
    let aborted = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let i = 0; i < 40; i += 1) {
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), Math.floor(Math.random() * 4));
        try {
          const response = await fetch(route, {
            method: 'POST',
            headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
            body: JSON.stringify({ chunk: `line ${i}\n`.repeat(200) }),
            signal: controller.signal,
          });
          const body = await response.json();
          if (response.status === 200) acked.push({ seq: body.event.seq, eventId: body.event.eventId });
        } catch {
          aborted += 1;
        } finally {
          clearTimeout(timer);
        }
      }
    }));
    assert.ok(aborted > 0, 'some requests were cut short');
    // Writes the server had received go on after their client left: wait until they are done.
    for (let last = -1, same = 0; same < 3; await sleep(200)) {
      const { lastSeq } = (await client.getJob(jobId)).body;
      same = lastSeq === last ? same + 1 : 0;
      last = lastSeq;
    }
    const bySeq = assertAckedOnce(acked);
    const lastSeq = await assertStored(client, jobId, bySeq);
    const sentinel = await client.addEvent(jobId, { type: 'gate.passed', payload: { sentinel: true } });
    assert.equal(sentinel.status, 201);
    const deadline = Date.now() + 20_000;
    while (!live.seqs.includes(sentinel.body.event.seq) && Date.now() < deadline) await sleep(50);
    assert.deepEqual(live.seqs, Array.from({ length: lastSeq + 1 }, (_, i) => i + 1),
      'events of writes whose client hung up were still delivered, in order');
    live.socket.close();
  });
});
