// The end of a job's SSE stream (CONTRACT §7): a stream that would start at or
// after the job's terminal status event answers 204 No Content, so that an
// EventSource stops reconnecting; a job that is not finished streams on. Both
// streams carry the headers that keep proxies from buffering or transforming
// them. Read with the `eventsource` package (a WHATWG EventSource for Node)
// and with plain fetch (sse-client.js).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before, after } = require('node:test');
const { EventSource } = require('eventsource');
const { EVENT_NAME_BY_TYPE, SERVER_EVENTS, api, assertHttpError, mintToken, skipReason, useServer } = require('./harness');
const { openStream } = require('./sse-client');

const WAIT_MS = 15_000;

describe('the end of an SSE stream', { skip: skipReason(), timeout: 120_000 }, () => {
  const closers = [];
  // Registered before useServer(), so that streams close before the server stops.
  after(() => closers.forEach((close) => close()));
  const ctx = useServer();
  const workspaceId = randomUUID();
  let token;
  let producer;

  const jobPath = (jobId) => `/api/v1/jobs/${jobId}/events/stream`;
  const workspacePath = (id) => `/api/v1/workspaces/${encodeURIComponent(id)}/events/stream`;
  const open = async (path, options) => {
    const stream = await openStream(ctx.server.url, path, options);
    closers.push(stream.close);
    return stream;
  };
  const ok = async (call, status = 200) => {
    const response = await call;
    assert.equal(response.status, status, JSON.stringify(response.body));
    return response.body;
  };
  const stored = async (jobId) => (await ok(producer.events(jobId, { limit: 10_000 }))).events;

  // A running job with a step and some output.
  const runningJob = async () => {
    const job = await ok(producer.createJob({ workspaceId, type: 'e2e.sse-end' }), 201);
    await ok(producer.setStatus(job.id, { status: 'queued' }));
    await ok(producer.setStatus(job.id, { status: 'running' }));
    const { step } = await ok(producer.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' }), 201);
    await ok(producer.stepOutput(job.id, step.id, { chunk: 'compiling\n' }));
    return { id: job.id, stepId: step.id };
  };
  const finishedJob = async (status = 'completed') => {
    const job = await runningJob();
    await ok(producer.completeStep(job.id, job.stepId, { status: 'completed' }));
    await ok(producer.setStatus(job.id, status === 'failed' ? { status, error: 'broken' } : { status }));
    return { ...job, events: await stored(job.id) };
  };

  before(() => {
    token = mintToken(ctx.server.secret, { sub: 'reader', workspaces: [workspaceId], scope: 'subscribe' });
    producer = api(ctx.server.url, mintToken(ctx.server.secret, { sub: 'producer', workspaces: [workspaceId] }));
  });

  it('an EventSource on a finished job gets its history, then 204 on its reconnect, and stops', async () => {
    const job = await finishedJob();
    const requests = [];   // what the EventSource asked for and what it got
    const received = [];
    const url = new URL(jobPath(job.id), ctx.server.url);
    url.searchParams.set('token', token);
    const source = new EventSource(url, {
      fetch: async (input, init) => {
        const response = await fetch(input, init);
        requests.push({ lastEventId: new Headers(init.headers).get('last-event-id'), status: response.status });
        return response;
      },
    });
    closers.push(() => source.close());
    for (const name of SERVER_EVENTS) {
      source.addEventListener(name, (message) => received.push({ name, id: message.lastEventId, data: JSON.parse(message.data) }));
    }
    // The first answer streams the history and ends; the EventSource then
    // reconnects by itself with Last-Event-ID, gets 204 and closes for good.
    const error = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no final error: ${JSON.stringify(requests)}`)), WAIT_MS);
      source.addEventListener('error', (event) => {
        if (source.readyState === EventSource.CLOSED) { clearTimeout(timer); resolve(event); }
      });
    });

    const terminal = job.events.at(-1);
    assert.equal(terminal.type, 'job.completed');
    assert.equal(error.code, 204);
    assert.deepEqual(requests, [
      { lastEventId: null, status: 200 },
      { lastEventId: String(terminal.seq), status: 204 },
    ]);
    assert.deepEqual(received.map((e) => e.data), job.events);
    assert.deepEqual(received.map((e) => e.name), job.events.map((e) => EVENT_NAME_BY_TYPE[e.type]));
    assert.deepEqual(received.map((e) => e.id), job.events.map((e) => String(e.seq)));
  });

  it('answers 204 to a resume at, or beyond, the terminal event, by Last-Event-ID or since=', async () => {
    for (const status of ['completed', 'failed', 'cancelled']) {
      const job = status === 'cancelled'
        ? await (async () => {
          const created = await ok(producer.createJob({ workspaceId, type: 'e2e.sse-end' }), 201);
          await ok(producer.setStatus(created.id, { status: 'cancelled', error: 'not needed' }));
          return { id: created.id, events: await stored(created.id) };
        })()
        : await finishedJob(status);
      const end = job.events.at(-1).seq;
      const asks = [
        { headers: { 'last-event-id': String(end) } },
        { headers: { 'last-event-id': String(end + 1) } },
        { headers: { 'last-event-id': String(end + 1000) } },
        { query: { since: String(end) } },
        { query: { since: String(end + 7) } },
      ];
      for (const ask of asks) {
        const stream = await open(jobPath(job.id), {
          query: { token, ...(ask.query || {}) }, headers: ask.headers || {},
        });
        const what = `${status} job, ${JSON.stringify(ask)}`;
        assert.equal(stream.status, 204, what);
        assert.equal(stream.body, '', what);
      }
      // Just before the end: the terminal event, then the end of the stream.
      const before = await open(jobPath(job.id), { query: { token, since: String(end - 1) } });
      await before.untilEnd();
      assert.equal(before.status, 200);
      assert.deepEqual(before.frames.map((f) => f.data), [job.events.at(-1)]);
    }
  });

  it('ends a finished job\'s stream at its terminal event, and answers 204 after it, with job:events written later',
    async () => {
      const job = await finishedJob();
      const end = job.events.at(-1).seq;
      await ok(producer.addEvent(job.id, { type: 'gate.passed', payload: { gate: 'review' } }), 201);
      await ok(producer.addEvent(job.id, { type: 'ai.tokens_used', payload: { input: 10, output: 3 } }), 201);
      const all = await stored(job.id);
      assert.equal(all.length, end + 2);

      const whole = await open(jobPath(job.id), { query: { token } });
      await whole.untilEnd();
      assert.equal(whole.status, 200);
      assert.deepEqual(whole.frames.map((f) => f.data), all.slice(0, end), 'the stream is the events up to the terminal one');

      for (const since of [end, end + 1, end + 2, end + 3]) {
        const stream = await open(jobPath(job.id), { query: { token, since: String(since) } });
        assert.equal(stream.status, 204, `since ${since} (terminal ${end}, last ${end + 2})`);
      }
      // The events after the end are still readable, as a list.
      assert.deepEqual((await stored(job.id)).slice(end).map((e) => e.type), ['gate.passed', 'ai.tokens_used']);
    });

  it('streams on for a job that is not finished, also resumed at its newest event', async () => {
    const job = await runningJob();
    const newest = (await stored(job.id)).at(-1).seq;
    const stream = await open(jobPath(job.id), { headers: { authorization: `Bearer ${token}`, 'last-event-id': String(newest) } });
    assert.equal(stream.status, 200);

    await ok(producer.stepOutput(job.id, job.stepId, { chunk: 'linking\n' }));
    await stream.waitFor((s) => s.frames.length === 1, 'the next event');
    await ok(producer.completeStep(job.id, job.stepId, { status: 'completed' }));
    await ok(producer.setStatus(job.id, { status: 'completed' }));
    await stream.untilEnd();
    assert.deepEqual(stream.frames.map((f) => f.data.seq), [newest + 1, newest + 2, newest + 3]);
    assert.equal(stream.frames.at(-1).data.type, 'job.completed');
    // Once finished, a resume at its end is over.
    const again = await open(jobPath(job.id), { headers: { authorization: `Bearer ${token}`, 'last-event-id': String(newest + 3) } });
    assert.equal(again.status, 204);
  });

  it('refuses a resume beyond the newest event of a job that is not finished (422 invalid_cursor)', async () => {
    const job = await runningJob();
    const newest = (await stored(job.id)).at(-1).seq;
    const stream = await open(jobPath(job.id), { query: { token, since: String(newest + 1) } });

    assertHttpError({ status: stream.status, body: stream.body }, 422, 'invalid_cursor');
  });

  it('sends Cache-Control: no-cache, no-transform and X-Accel-Buffering: no on both streams', async () => {
    const job = await runningJob();
    const jobStream = await open(jobPath(job.id), { query: { token } });
    const workspaceStream = await open(workspacePath(workspaceId), { query: { token } });
    for (const [what, stream] of [['job stream', jobStream], ['workspace stream', workspaceStream]]) {
      assert.equal(stream.status, 200, what);
      assert.match(stream.headers.get('content-type'), /^text\/event-stream/, what);
      assert.equal(stream.headers.get('cache-control'), 'no-cache, no-transform', what);
      assert.equal(stream.headers.get('x-accel-buffering'), 'no', what);
    }
    await workspaceStream.waitFor((s) => s.frames.length >= 1, 'the workspace snapshot');
  });
});
