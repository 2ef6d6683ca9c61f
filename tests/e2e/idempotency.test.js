// Idempotent writes (CONTRACT §7): every write route and batch item takes an
// optional client-chosen `eventId`. The same eventId with the same write
// answers 200 with the stored event and appends nothing (also after a restart,
// and under concurrent retries); with another write it is 409 `conflict`.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const {
  api, connect, emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

describe('idempotent writes', { skip: skipReason(), timeout: 120_000 }, () => {
  const ctx = useServer();
  const workspace = randomUUID();
  let token;
  let producer;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspace] });
    producer = api(ctx.server.url, token);
  });

  async function runningJobWithStep() {
    const jobId = (await producer.createJob({ workspaceId: workspace, type: 'x' })).body.id;
    await producer.setStatus(jobId, { status: 'queued' });
    await producer.setStatus(jobId, { status: 'running' });
    const stepId = (await producer.startStep(jobId, { name: 's', phase: 'execution', stepType: 'command' })).body.step.id;
    return { jobId, stepId };
  }

  const lastSeq = async (jobId) => (await producer.getJob(jobId)).body.lastSeq;

  it('answers a repeated write on every route with the stored event and appends nothing', async () => {
    const { jobId, stepId } = await runningJobWithStep();
    const newStep = randomUUID();
    const writes = [
      ['progress', () => producer.setProgress(jobId, { progress: 10, message: 'm', eventId: ids.progress }), 200],
      ['output', () => producer.stepOutput(jobId, stepId, { chunk: 'a\n', eventId: ids.output }), 200],
      ['step progress', () => producer.stepProgress(jobId, stepId, { progress: 5, eventId: ids.stepProgress }), 200],
      ['event', () => producer.addEvent(jobId, { type: 'ai.tool_called', payload: { t: 1 }, eventId: ids.event }), 201],
      ['step', () => producer.startStep(jobId, {
        id: newStep, name: 'n', phase: 'execution', stepType: 'command', eventId: ids.step,
      }), 201],
      ['complete', () => producer.completeStep(jobId, newStep, { status: 'completed', eventId: ids.complete }), 200],
      ['status', () => producer.setStatus(jobId, { status: 'completed', result: { ok: 1 }, eventId: ids.status }), 200],
    ];
    const ids = {};
    for (const key of ['progress', 'output', 'stepProgress', 'event', 'step', 'complete', 'status']) ids[key] = randomUUID();
    for (const [what, call, status] of writes) {
      const first = await call();
      assert.equal(first.status, status, `${what}: ${JSON.stringify(first.body)}`);
      const before = await lastSeq(jobId);
      const again = await call();
      assert.equal(again.status, 200, `${what} repeated: ${JSON.stringify(again.body)}`);
      assert.deepEqual(again.body.event, first.body.event, `${what}: the stored event`);
      if (first.body.step) assert.equal(again.body.step.id, first.body.step.id);
      assert.equal(await lastSeq(jobId), before, `${what}: nothing appended`);
    }
    // After the terminal status a repeat is still a repeat, not a 409 invalid_transition.
    const repeatedStatus = await writes[6][1]();
    assert.equal(repeatedStatus.status, 200);
  });

  it('refuses the same eventId with another write (409) and a malformed eventId (422)', async () => {
    const { jobId, stepId } = await runningJobWithStep();
    const eventId = randomUUID();
    assert.equal((await producer.stepOutput(jobId, stepId, { chunk: 'one', eventId })).status, 200);
    const other = await producer.stepOutput(jobId, stepId, { chunk: 'two', eventId });
    assert.equal(other.status, 409);
    assert.equal(other.body.error.code, 'conflict');
    const elsewhere = await producer.setProgress(jobId, { progress: 1, eventId });
    assert.equal(elsewhere.status, 409);
    const bad = await producer.setProgress(jobId, { progress: 1, eventId: 'abc' });
    assert.equal(bad.status, 422);
    assert.match(bad.body.error.message, /^eventId: /);
  });

  it('repeats batch items one by one, and refuses an eventId used twice in one batch', async () => {
    const { jobId, stepId } = await runningJobWithStep();
    const [a, b] = [randomUUID(), randomUUID()];
    const first = await producer.batch({ events: [
      { jobId, kind: 'output', stepId, chunk: 'a', eventId: a },
      { jobId, kind: 'output', stepId, chunk: 'b', eventId: b },
    ] });
    assert.equal(first.status, 200);
    const before = await lastSeq(jobId);
    const again = await producer.batch({ events: [
      { jobId, kind: 'output', stepId, chunk: 'a', eventId: a },
      { jobId, kind: 'output', stepId, chunk: 'c' },
      { jobId, kind: 'output', stepId, chunk: 'b', eventId: b },
    ] });
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.deepEqual(again.body.events[0], first.body.events[0]);
    assert.deepEqual(again.body.events[2], first.body.events[1]);
    assert.equal(again.body.events[1].seq, before + 1, 'only the new item is appended');
    assert.equal(await lastSeq(jobId), before + 1);
    const twice = randomUUID();
    const dup = await producer.batch({ events: [
      { jobId, kind: 'output', stepId, chunk: 'x', eventId: twice },
      { jobId, kind: 'output', stepId, chunk: 'x', eventId: twice },
    ] });
    assert.equal(dup.status, 422);
    assert.match(dup.body.error.message, /^events\[1\][.:] ?eventId: /);
  });

  it('appends once under concurrent retries, delivers once, and still knows the eventId after a restart', async () => {
    const { jobId, stepId } = await runningJobWithStep();
    const socket = await connect(ctx.server.url, token);
    const seen = [];
    socket.on('step:output', (e) => seen.push(e.seq));
    assert.equal((await emitAck(socket, 'subscribe:job', { jobId })).ok, true);
    const eventId = randomUUID();
    const before = await lastSeq(jobId);
    const answers = await Promise.all(Array.from({ length: 10 },
      () => producer.stepOutput(jobId, stepId, { chunk: 'once', eventId })));
    for (const answer of answers) assert.ok(answer.status === 200, JSON.stringify(answer.body));
    assert.equal(new Set(answers.map((a) => a.body.event.seq)).size, 1, 'every retry answers the same event');
    assert.equal(await lastSeq(jobId), before + 1);
    const sentinel = await producer.stepOutput(jobId, stepId, { chunk: 'sentinel' });
    while (!seen.includes(sentinel.body.event.seq)) await sleep(20);
    assert.deepEqual(seen, [before + 1, before + 2], 'delivered once');
    socket.close();

    await ctx.server.restart();
    producer = api(ctx.server.url, token);
    const afterRestart = await producer.stepOutput(jobId, stepId, { chunk: 'once', eventId });
    assert.equal(afterRestart.status, 200);
    assert.equal(afterRestart.body.event.seq, before + 1);
    assert.equal(await lastSeq(jobId), before + 2);
  });
});
