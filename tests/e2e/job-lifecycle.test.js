// The main scenario: a producer drives a job from creation to completion over
// HTTP while three sockets watch it; then the stored events are read back over
// HTTP, replayed over Socket.IO, and checked again after a server restart.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const {
  EVENT_NAME_BY_TYPE, api, assertEvent, assertJobSnapshot, assertStepSnapshot, collect, connect,
  emitAck, mintToken, skipReason, sleep, useServer,
} = require('./harness');

const TOTAL_EVENTS = 15;
const ANSI_GREEN = '\u001b[32m';
const ANSI_RESET = '\u001b[0m';

// [from, from + 1, …, to]
const seqs = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('a job driven from creation to completion', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  const sockets = [];
  let subscriberToken;
  let producer;
  let created;           // 201 answer to POST /jobs
  let jobId;
  let steps;             // StepSnapshots answered by POST /steps
  let completedSteps;    // StepSnapshots answered by POST /complete
  let writes;            // { event } answers to the writes, in order
  let expected;          // fields expected of each event, by seq - 1
  let acks;              // acks of the three sockets
  let received;          // collectors of A, B and C

  const openSocket = async () => {
    const socket = await connect(ctx.server.url, subscriberToken);
    sockets.push(socket);
    return socket;
  };

  before(async () => {
    const { secret } = ctx.server;
    subscriberToken = mintToken(secret, { sub: 'watcher', workspaces: [workspaceId], scope: 'subscribe' });
    producer = api(ctx.server.url, mintToken(secret, { sub: 'ci', workspaces: [workspaceId] }));

    // A watches the workspace, B the job, C both; A and C subscribe before the job exists.
    const [a, b, c] = [await openSocket(), await openSocket(), await openSocket()];
    received = { a: collect(a), b: collect(b), c: collect(c) };
    acks = {};
    acks.a = await emitAck(a, 'subscribe:workspace:jobs', { workspaceId });
    acks.cWorkspace = await emitAck(c, 'subscribe:workspace:jobs', { workspaceId });

    created = await producer.createJob({
      workspaceId, type: 'ci.build', priority: 5, metadata: { repo: 'acme/web', ref: 'main' },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    jobId = created.body.id;
    acks.b = await emitAck(b, 'subscribe:job', { jobId });
    acks.cJob = await emitAck(c, 'subscribe:job', { jobId });

    // The producer drives the job; each write is checked and its event kept.
    writes = [];
    steps = [];
    completedSteps = [];
    expected = [{ type: 'job.created', stepId: null }];
    // fields: what the event must carry, or a function of the answer giving it.
    const write = async (call, status, fields) => {
      const response = await call;
      assert.equal(response.status, status, JSON.stringify(response.body));
      writes.push(response.body.event);
      expected.push(typeof fields === 'function' ? fields(response.body) : fields);
      return response.body;
    };
    const statusChange = (status, previousStatus, type, extra = {}) => write(
      producer.setStatus(jobId, { status, ...extra }), 200,
      { type, stepId: null, status, previousStatus, result: undefined, error: undefined, ...extra },
    );
    const startStep = async (body) => {
      const { step } = await write(producer.startStep(jobId, body), 201,
        (answer) => ({ type: 'step.started', stepId: answer.step.id, ...body }));
      steps.push(step);
      return step;
    };
    const output = (stepId, body) => write(
      producer.stepOutput(jobId, stepId, body), 200,
      { type: 'step.output', stepId, chunk: body.chunk, stream: body.stream || 'stdout' },
    );
    const completeStep = async (stepId) => {
      const { step } = await write(producer.completeStep(jobId, stepId, { status: 'completed' }), 200,
        { type: 'step.completed', stepId, status: 'completed' });
      completedSteps.push(step);
    };

    await statusChange('queued', 'pending', 'job.queued');
    await statusChange('running', 'queued', 'job.started');

    const install = await startStep({ name: 'install dependencies', phase: 'setup', stepType: 'command' });
    await output(install.id, { chunk: '$ npm ci\n' });
    await output(install.id, { chunk: 'added 312 packages in 4s\n', stream: 'stdout' });
    await output(install.id, { chunk: `${ANSI_GREEN}✔ dependencies installed${ANSI_RESET}\n`, stream: 'stdout' });
    await write(producer.stepProgress(jobId, install.id, { progress: 50, message: 'linking' }), 200,
      { type: 'step.progress', stepId: install.id, progress: 50, message: 'linking' });
    await completeStep(install.id);

    const tests = await startStep({ name: 'run tests', phase: 'validation', stepType: 'command' });
    await output(tests.id, { chunk: 'warning: 2 snapshots are obsolete\n', stream: 'stderr' });
    await write(producer.addEvent(jobId, { type: 'gate.passed', stepId: tests.id, payload: { gate: 'coverage', value: 91 } }),
      201, { type: 'gate.passed', stepId: tests.id, payload: { gate: 'coverage', value: 91 } });
    await completeStep(tests.id);

    await write(producer.setProgress(jobId, { progress: 100, message: 'all steps done' }), 200,
      { type: 'job.progress', stepId: null, progress: 100, message: 'all steps done' });
    await statusChange('completed', 'running', 'job.completed', { result: { passed: 42, failed: 0 } });

    assert.equal(expected.length, TOTAL_EVENTS);
    await Promise.all([
      received.a.waitFor(TOTAL_EVENTS), received.b.waitFor(TOTAL_EVENTS - 1), received.c.waitFor(TOTAL_EVENTS),
    ]);
    await sleep(300); // time for a duplicate to show up
  });

  after(() => sockets.forEach((socket) => socket.close()));

  const storedEvents = async () => {
    const response = await api(ctx.server.url, subscriberToken).events(jobId);
    assert.equal(response.status, 200, JSON.stringify(response.body));
    return response.body.events;
  };

  // Each received event travels under the Socket.IO name of its type.
  const payloadsOf = (collector) => collector.events.map(({ event, data }) => {
    assert.equal(event, EVENT_NAME_BY_TYPE[data.type], `Socket.IO event name of ${data.type} #${data.seq}`);
    return data;
  });

  it('creates the job as pending with lastSeq 1', () => {
    assertJobSnapshot(created.body, {
      workspaceId, type: 'ci.build', status: 'pending', priority: 5, progress: 0,
      metadata: { repo: 'acme/web', ref: 'main' }, result: null, error: null,
      startedAt: null, completedAt: null, lastSeq: 1,
    });
    assert.match(jobId, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a v7 UUID');
  });

  it('acks the workspace subscriptions with the room and the jobs of the workspace', () => {
    assert.deepEqual(acks.a, { ok: true, room: `workspace:${workspaceId}:jobs`, jobs: [] });
    assert.deepEqual(acks.cWorkspace, acks.a);
  });

  it('acks the job subscriptions with the room and a snapshot with steps', () => {
    for (const ack of [acks.b, acks.cJob]) {
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal(ack.room, `job:${jobId}`);
      assertJobSnapshot(ack.job, { id: jobId, status: 'pending', lastSeq: 1, steps: [] });
    }
  });

  it('answers every write with the event it committed, seq following on', () => {
    writes.forEach((event, index) => assertEvent(event, { seq: index + 2, jobId, workspaceId }));
  });

  it('gives every event the fields of its type', async () => {
    const events = await storedEvents();
    assert.equal(events.length, TOTAL_EVENTS);
    events.forEach((event, index) => assertEvent(event, { seq: index + 1, jobId, workspaceId, ...expected[index] }));
    assertJobSnapshot(events[0].job, { id: jobId, status: 'pending', lastSeq: 1 });
    assert.ok(!('steps' in events[0].job), 'job.created carries a JobSnapshot without steps');
    for (const event of events.filter((e) => e.type === 'step.completed')) {
      assert.ok(Number.isInteger(event.durationMs) && event.durationMs >= 0, `durationMs of #${event.seq}`);
    }
  });

  it('delivers every event of the job once and in order to the workspace subscriber (A)', async () => {
    const events = payloadsOf(received.a);
    assert.deepEqual(events.map((e) => e.seq), seqs(1, TOTAL_EVENTS));
    assert.deepEqual(events, await storedEvents());
  });

  it('delivers every event after its snapshot once and in order to the job subscriber (B)', async () => {
    const events = payloadsOf(received.b);
    assert.deepEqual(events.map((e) => e.seq), seqs(2, TOTAL_EVENTS));
    assert.deepEqual(events, (await storedEvents()).slice(1));
  });

  it('delivers each event once to a socket in both rooms (C)', async () => {
    const events = payloadsOf(received.c);
    assert.deepEqual(events.map((e) => e.seq), seqs(1, TOTAL_EVENTS));
    assert.deepEqual(events, await storedEvents());
  });

  it('sends the same event objects to sockets as to the producer', () => {
    assert.deepEqual(payloadsOf(received.a).slice(1), writes);
  });

  it('shows the finished job with its steps', async () => {
    const response = await producer.getJob(jobId);

    assert.equal(response.status, 200, JSON.stringify(response.body));
    const job = response.body;
    assertJobSnapshot(job, {
      id: jobId, status: 'completed', progress: 100, result: { passed: 42, failed: 0 }, error: null,
      lastSeq: TOTAL_EVENTS, startedAt: /Z$/, completedAt: /Z$/,
    });
    assert.equal(job.steps.length, 2);
    job.steps.forEach((step, index) => {
      assertStepSnapshot(step, {
        id: steps[index].id, jobId, name: steps[index].name, phase: steps[index].phase,
        stepType: 'command', status: 'completed', error: null, startedAt: /Z$/, completedAt: /Z$/,
      });
      assert.ok(Number.isInteger(step.durationMs) && step.durationMs >= 0);
      assert.deepEqual(completedSteps[index], step);
    });
  });

  it('answers a new step as running', () => {
    for (const step of steps) {
      assertStepSnapshot(step, { jobId, status: 'running', completedAt: null, durationMs: null, startedAt: /Z$/ });
    }
  });

  it('lists the stored events over HTTP with lastSeq', async () => {
    const response = await producer.events(jobId);

    assert.equal(response.status, 200, JSON.stringify(response.body));
    assert.equal(response.body.lastSeq, TOTAL_EVENTS);
    assert.deepEqual(response.body.events.map((e) => e.seq), seqs(1, TOTAL_EVENTS));
  });

  it('pages the stored events with since and limit', async () => {
    const all = await storedEvents();

    const response = await producer.events(jobId, { since: 3, limit: 2 });

    assert.equal(response.status, 200, JSON.stringify(response.body));
    assert.deepEqual(response.body.events, all.slice(3, 5));
    assert.deepEqual(response.body.events.map((e) => e.seq), [4, 5]);
  });

  it('replays every event in order to subscribe:job with since 0', async () => {
    const socket = await openSocket();
    const replay = collect(socket);

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since: 0 });
    await replay.waitFor(TOTAL_EVENTS);
    await sleep(300);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assertJobSnapshot(ack.job, { id: jobId, status: 'completed', lastSeq: TOTAL_EVENTS });
    assert.deepEqual(payloadsOf(replay), await storedEvents());
  });

  it('replays nothing to subscribe:job with since equal to lastSeq', async () => {
    const socket = await openSocket();
    const replay = collect(socket);

    const ack = await emitAck(socket, 'subscribe:job', { jobId, since: TOTAL_EVENTS });
    await sleep(500);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(replay.events, []);
  });

  it('lists the finished job in a later workspace snapshot and sends no earlier event', async () => {
    const socket = await openSocket();
    const late = collect(socket);

    const ack = await emitAck(socket, 'subscribe:workspace:jobs', { workspaceId });
    await sleep(500);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.jobs.length, 1);
    assertJobSnapshot(ack.jobs[0], { id: jobId, status: 'completed', lastSeq: TOTAL_EVENTS });
    assert.deepEqual(late.events, []);
  });

  it('keeps the job, its steps and its events across a server restart', async () => {
    const before = (await producer.getJob(jobId)).body;
    const eventsBefore = await storedEvents();
    sockets.forEach((socket) => socket.close());

    await ctx.server.restart();
    producer = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId] }));

    const job = await producer.getJob(jobId);
    assert.equal(job.status, 200, JSON.stringify(job.body));
    assert.deepEqual(job.body, before);
    assert.deepEqual(await storedEvents(), eventsBefore);
  });

  it('goes on from the stored lastSeq after a restart', async () => {
    const socket = await openSocket();
    const live = collect(socket);
    const ack = await emitAck(socket, 'subscribe:job', { jobId, since: TOTAL_EVENTS - 1 });

    const answer = await producer.addEvent(jobId, { type: 'ai.artifact_created', payload: { name: 'report.html' } });
    await live.waitFor(2);

    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(answer.status, 201, JSON.stringify(answer.body));
    assertEvent(answer.body.event, { seq: TOTAL_EVENTS + 1, type: 'ai.artifact_created', stepId: null });
    assert.deepEqual(payloadsOf(live).map((e) => e.seq), [TOTAL_EVENTS, TOTAL_EVENTS + 1]);
    assert.deepEqual(live.events[1].data, answer.body.event);
  });
});
