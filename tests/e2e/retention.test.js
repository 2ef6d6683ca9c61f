// Retention (CONTRACT §7): with JOBSTREAM_RETENTION set, finished jobs older
// than it are deleted with their steps and events, and are then `not_found`
// everywhere (HTTP, history, SSE, Socket.IO); running jobs stay, however old.
// `jobstream prune` does it once, and `--dry-run` only counts. A deleted
// job's id is never given to a new job.
'use strict';

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const {
  api, binaryPath, connect, emitAck, mintToken, requestedDatabase, skipReason, sleep, useServer,
} = require('./harness');

async function finishedJob(producer, workspace) {
  const id = (await producer.createJob({ workspaceId: workspace, type: 'old' })).body.id;
  await producer.setStatus(id, { status: 'queued' });
  await producer.setStatus(id, { status: 'running' });
  const step = (await producer.startStep(id, { name: 's', phase: 'execution', stepType: 'command' })).body.step.id;
  await producer.stepOutput(id, step, { chunk: 'line\n' });
  await producer.completeStep(id, step, { status: 'completed' });
  await producer.setStatus(id, { status: 'completed' });
  return id;
}

async function runningJob(producer, workspace) {
  const id = (await producer.createJob({ workspaceId: workspace, type: 'long' })).body.id;
  await producer.setStatus(id, { status: 'queued' });
  await producer.setStatus(id, { status: 'running' });
  return id;
}

async function assertGone(server, token, producer, id) {
  assert.equal((await producer.getJob(id)).status, 404);
  assert.equal((await producer.events(id, {})).status, 404);
  const stream = await fetch(`${server.url}/api/v1/jobs/${id}/events/stream`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(stream.status, 404);
  await stream.body?.cancel();
  const socket = await connect(server.url, token);
  const ack = await emitAck(socket, 'subscribe:job', { jobId: id, since: 0 });
  socket.close();
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, 'not_found');
}

describe('retention in the background', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer({ env: { JOBSTREAM_RETENTION: '1s' } });
  const workspace = randomUUID();
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
  });

  it('deletes finished jobs once they are older than the retention, and keeps running ones', async () => {
    const old = await finishedJob(producer, workspace);
    const running = await runningJob(producer, workspace);
    const deadline = Date.now() + 40_000;
    while ((await producer.getJob(old)).status === 200 && Date.now() < deadline) await sleep(500);
    await assertGone(ctx.server, token, producer, old);
    // The id stays taken: a new job under it would lose its first events to
    // every client that remembers the old job's seq.
    for (const ws of [workspace, randomUUID()]) {
      const again = await api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [ws] }))
        .createJob({ id: old, workspaceId: ws, type: 'old' });
      assert.equal(again.status, 409);
      assert.equal(again.body.error.code, 'conflict');
    }
    assert.equal((await producer.getJob(old)).status, 404);
    const kept = await producer.getJob(running);
    assert.equal(kept.status, 200);
    assert.equal(kept.body.status, 'running');
    const metrics = await (await fetch(`${ctx.server.url}/metrics`)).text();
    assert.match(metrics, /^jobstream_pruned_jobs_total [1-9]/m);
    assert.match(metrics, /^jobstream_pruned_events_total [1-9]/m);
  });
});

describe('jobstream prune', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  const other = randomUUID();
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace, other] });
    producer = api(ctx.server.url, token);
  });

  const prune = (...args) => execFileSync(binaryPath(), ['prune', '--database-url', ctx.server.databaseUrl, ...args], {
    encoding: 'utf8', env: { ...process.env, RUST_LOG: 'warn' },
  });

  it('counts with --dry-run, deletes one workspace with --workspace, then the rest', async () => {
    const mine = await finishedJob(producer, workspace);
    const theirs = await finishedJob(producer, other);
    const running = await runningJob(producer, workspace);
    await sleep(1500);
    // SQLite belongs to one process: the server stops while the command runs.
    const sqlite = requestedDatabase() === 'sqlite';
    if (sqlite) await ctx.server.stop();
    const dry = prune('--finished-before', '1s', '--dry-run');
    assert.match(dry, /would delete 2 finished jobs and 14 events/);
    assert.match(prune('--finished-before', '1s', '--workspace', other), /deleted 1 finished jobs and 7 events/);
    assert.match(prune('--finished-before', '1s'), /deleted 1 finished jobs and 7 events/);
    assert.match(prune('--finished-before', '1s'), /deleted 0 finished jobs and 0 events/);
    if (sqlite) {
      await ctx.server.restart();
      producer = api(ctx.server.url, token);
    }
    await assertGone(ctx.server, token, producer, mine);
    await assertGone(ctx.server, token, producer, theirs);
    assert.equal((await producer.getJob(running)).status, 200);
  });
});
