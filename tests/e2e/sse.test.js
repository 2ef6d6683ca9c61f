// Server-Sent Events (CONTRACT §5): the job stream and the workspace stream,
// read with a plain HTTP client (fetch and a streaming body, sse-client.js).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const {
  EVENT_NAME_BY_TYPE, api, assertHttpError, assertJobSnapshot, mintToken, skipReason, sleep, useServer,
} = require('./harness');
const { openStream } = require('./sse-client');

const eventFrames = (stream) => stream.frames.filter((f) => f.event !== 'snapshot');
const seqsOf = (frames, jobId) => frames.filter((f) => f.data.jobId === jobId).map((f) => f.data.seq);
const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

describe('Server-Sent Events streams', { skip: skipReason(), timeout: 120_000 }, () => {
  const streams = [];
  // Registered before useServer(), so the streams are closed before the server stops.
  after(() => streams.forEach((s) => s.close()));
  const ctx = useServer();
  const workspaceId = randomUUID();
  const otherWorkspace = randomUUID();
  let token;
  let producer;
  let finished;        // a completed job: { id, events }

  const open = async (path, options) => {
    const stream = await openStream(ctx.server.url, path, options);
    streams.push(stream);
    return stream;
  };
  const jobPath = (jobId) => `/api/v1/jobs/${jobId}/events/stream`;
  const workspacePath = (id) => `/api/v1/workspaces/${encodeURIComponent(id)}/events/stream`;
  const bearer = () => ({ authorization: `Bearer ${token}` });
  const stored = async (jobId, client = producer) => {
    const response = await client.events(jobId, { limit: 10_000 });
    assert.equal(response.status, 200, JSON.stringify(response.body));
    return response.body.events;
  };
  const ok = async (call, status = 200) => {
    const response = await call;
    assert.equal(response.status, status, JSON.stringify(response.body));
    return response.body;
  };

  // A job with a few events of each kind, left running.
  const runningJob = async (client = producer, workspace = workspaceId) => {
    const job = await ok(client.createJob({ workspaceId: workspace, type: 'e2e.sse' }), 201);
    await ok(client.setStatus(job.id, { status: 'queued' }));
    await ok(client.setStatus(job.id, { status: 'running' }));
    const { step } = await ok(
      client.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' }), 201);
    await ok(client.stepOutput(job.id, step.id, { chunk: 'first line\nsecond line: "quoted"\n' }));
    await ok(client.stepOutput(job.id, step.id, { chunk: 'warning\r\n', stream: 'stderr' }));
    await ok(client.addEvent(job.id, { type: 'ai.tool_called', stepId: step.id, payload: { tool: 'grep' } }), 201);
    await ok(client.setProgress(job.id, { progress: 40, message: 'building' }));
    return { id: job.id, stepId: step.id };
  };

  // Every frame of a job stream: id is the seq, event the Socket.IO name, data the stored event.
  const assertJobFrames = (frames, events) => {
    assert.deepEqual(frames.map((f) => f.id), events.map((e) => String(e.seq)), 'ids');
    assert.deepEqual(frames.map((f) => f.event), events.map((e) => EVENT_NAME_BY_TYPE[e.type]), 'event names');
    assert.deepEqual(frames.map((f) => f.data), events, 'data');
  };

  before(async () => {
    const { secret, url } = ctx.server;
    token = mintToken(secret, { sub: 'reader', workspaces: [workspaceId], scope: 'subscribe' });
    producer = api(url, mintToken(secret, { sub: 'producer', workspaces: [workspaceId, otherWorkspace] }));

    const job = await runningJob();
    await ok(producer.completeStep(job.id, job.stepId, { status: 'completed' }));
    await ok(producer.setStatus(job.id, { status: 'completed', result: { artifacts: 2 } }));
    finished = { id: job.id, events: await stored(job.id) };
    assert.equal(finished.events.length, 10);
  });

  describe('the job stream', () => {
    it('sends the whole history of a finished job with ?token= and then ends', async () => {
      const stream = await open(jobPath(finished.id), { query: { token } });
      await stream.untilEnd();

      assert.equal(stream.status, 200);
      assert.match(stream.headers.get('content-type'), /^text\/event-stream/);
      assertJobFrames(stream.frames, finished.events);
      assert.equal(stream.frames.at(-1).data.type, 'job.completed');
    });

    it('takes ?token= when the browser also sends its own Authorization (Basic), and a token after Bearer in it', async () => {
      for (const [query, headers] of [
        [{ token }, { authorization: 'Basic dXNlcjpwYXNz' }],
        [{ token: `Bearer ${token}` }, {}],
      ]) {
        const stream = await open(jobPath(finished.id), { query, headers });
        await stream.untilEnd();
        assert.equal(stream.status, 200, JSON.stringify(headers));
        assertJobFrames(stream.frames, finished.events);
      }
    });

    it('sends the whole history with Authorization: Bearer and then ends', async () => {
      const stream = await open(jobPath(finished.id), { headers: bearer() });
      await stream.untilEnd();

      assert.equal(stream.status, 200);
      assertJobFrames(stream.frames, finished.events);
    });

    it('resumes after Last-Event-ID with exactly the events after it', async () => {
      const stream = await open(jobPath(finished.id), { headers: { ...bearer(), 'last-event-id': '4' } });
      await stream.untilEnd();

      assert.equal(stream.status, 200);
      assertJobFrames(stream.frames, finished.events.slice(4));
    });

    it('resumes after ?since= with exactly the events after it', async () => {
      const stream = await open(jobPath(finished.id), { query: { token, since: '7' } });
      await stream.untilEnd();

      assertJobFrames(stream.frames, finished.events.slice(7));
    });

    it('answers 204 No Content for a finished job resumed at its last seq', async () => {
      const lastSeq = finished.events.at(-1).seq;
      const stream = await open(jobPath(finished.id), { headers: { ...bearer(), 'last-event-id': String(lastSeq) } });

      assert.equal(stream.status, 204);
      assert.equal(stream.body, '');
      assert.deepEqual(stream.frames, []);
    });

    it('sends live events while the job runs and ends after its terminal status event', async () => {
      const job = await runningJob();
      const history = await stored(job.id);
      const stream = await open(jobPath(job.id), { query: { token } });
      await stream.waitFor((s) => s.frames.length === history.length, 'the history');

      // Each write must show up on the open stream before the next one.
      const writes = [
        () => producer.stepOutput(job.id, job.stepId, { chunk: 'live 1\n' }),
        () => producer.stepProgress(job.id, job.stepId, { progress: 80 }),
        () => producer.completeStep(job.id, job.stepId, { status: 'completed' }),
        () => producer.setProgress(job.id, { progress: 100 }),
        () => producer.setStatus(job.id, { status: 'failed', error: 'tests failed' }),
      ];
      for (const [i, write] of writes.entries()) {
        await ok(write());
        const seq = history.length + i + 1;
        await stream.waitFor((s) => s.frames.some((f) => f.id === String(seq)), `live event #${seq}`);
      }
      await stream.untilEnd(5000);
      await ok(producer.addEvent(job.id, { type: 'gate.failed', payload: { after: 'the end' } }), 201);

      const events = await stored(job.id);
      assert.equal(events.length, history.length + writes.length + 1);
      assertJobFrames(stream.frames, events.slice(0, -1));
      assert.equal(stream.frames.at(-1).data.type, 'job.failed');
    });

    it('answers 401 without a token', async () => {
      const stream = await open(jobPath(finished.id));

      assertHttpError({ status: stream.status, body: stream.body }, 401, 'unauthorized');
    });

    it('answers 404 for an unknown job', async () => {
      const stream = await open(jobPath(randomUUID()), { query: { token } });

      assertHttpError({ status: stream.status, body: stream.body }, 404, 'not_found');
    });

    it('answers 404 for a job of a workspace the token does not name', async () => {
      const job = await ok(producer.createJob({ workspaceId: otherWorkspace, type: 'e2e.sse' }), 201);
      const stream = await open(jobPath(job.id), { headers: bearer() });

      assertHttpError({ status: stream.status, body: stream.body }, 404, 'not_found');
    });
  });

  describe('the workspace stream', () => {
    it('sends a snapshot, then every event of every job of the workspace, per job in seq order, each once',
      async () => {
        const workspace = randomUUID();
        const wsToken = mintToken(ctx.server.secret, { sub: 'reader', workspaces: [workspace], scope: 'subscribe' });
        const wsProducer = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspace] }));
        const early = await runningJob(wsProducer, workspace);
        const earlySeq = (await stored(early.id, wsProducer)).length;

        const stream = await open(workspacePath(workspace), { query: { token: wsToken } });
        await stream.waitFor((s) => s.frames.length >= 1, 'the snapshot');
        // Two producers at once: one keeps writing to the early job, the other
        // creates a job after the stream opened and writes to it.
        let late;
        await Promise.all([
          (async () => {
            for (let i = 0; i < 30; i += 1) {
              await ok(wsProducer.stepOutput(early.id, early.stepId, { chunk: `early ${i}\n` }));
            }
            await ok(wsProducer.completeStep(early.id, early.stepId, { status: 'completed' }));
            await ok(wsProducer.setStatus(early.id, { status: 'completed' }));
          })(),
          (async () => {
            late = await runningJob(wsProducer, workspace);
            await ok(wsProducer.batch({ events: Array.from({ length: 30 }, (_, i) => ({
              jobId: late.id, kind: 'output', stepId: late.stepId, chunk: `late ${i}\n`,
            })) }));
            await ok(wsProducer.setStatus(late.id, { status: 'cancelled', error: 'stopped' }));
          })(),
        ]);
        const earlyEvents = await stored(early.id, wsProducer);
        const lateEvents = await stored(late.id, wsProducer);
        const total = earlyEvents.length - earlySeq + lateEvents.length;
        await stream.waitFor((s) => eventFrames(s).length >= total, `${total} events`);
        await sleep(300); // time for a repeat to show up

        const [snapshot, ...rest] = stream.frames;
        assert.equal(stream.status, 200);
        assert.equal(snapshot.event, 'snapshot');
        assert.deepEqual(Object.keys(snapshot.data), ['jobs']);
        assert.deepEqual(snapshot.data.jobs.map((j) => j.id), [early.id]);
        assertJobSnapshot(snapshot.data.jobs[0], { id: early.id, workspaceId: workspace, lastSeq: earlySeq });
        assert.equal(rest.length, total);
        assert.deepEqual(seqsOf(rest, early.id), range(earlySeq + 1, earlyEvents.length));
        assert.deepEqual(seqsOf(rest, late.id), range(1, lateEvents.length));
        for (const f of rest) {
          assert.equal(f.event, EVENT_NAME_BY_TYPE[f.data.type], `event name of ${f.data.type}`);
          assert.equal(f.id, undefined, 'workspace frames carry no id');
        }
        assert.deepEqual(rest.filter((f) => f.data.jobId === early.id).map((f) => f.data), earlyEvents.slice(earlySeq));
        assert.deepEqual(rest.filter((f) => f.data.jobId === late.id).map((f) => f.data), lateEvents);
        assert.equal(stream.ended, false, 'the workspace stream stays open');
      });

    it('answers 401 without a token', async () => {
      const stream = await open(workspacePath(workspaceId));

      assertHttpError({ status: stream.status, body: stream.body }, 401, 'unauthorized');
    });

    it('answers 403 for a workspace the token does not name', async () => {
      const stream = await open(workspacePath(otherWorkspace), { query: { token } });

      assertHttpError({ status: stream.status, body: stream.body }, 403, 'forbidden');
    });
  });
});
