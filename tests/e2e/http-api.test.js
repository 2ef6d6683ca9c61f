// HTTP API tests: health checks, authentication, refused writes and their error
// codes, batches and idempotent job creation (CONTRACT §5).
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const {
  api, assertEvent, assertHttpError, assertJobSnapshot, mintToken, skipReason, useServer,
} = require('./harness');

const CHUNK_LIMIT = 64 * 1024;
const CONFLICT = /^(invalid_transition|conflict)$/;

describe('the HTTP API', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  const otherWorkspace = randomUUID();
  let producer;

  before(() => {
    producer = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId] }));
  });

  const newJob = async (extra = {}) => {
    const response = await producer.createJob({ workspaceId, type: 'e2e.http', ...extra });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  };
  const ok = async (call, status = 200) => {
    const response = await call;
    assert.equal(response.status, status, JSON.stringify(response.body));
    return response.body;
  };
  const runningJobWithStep = async () => {
    const job = await newJob();
    await ok(producer.setStatus(job.id, { status: 'queued' }));
    await ok(producer.setStatus(job.id, { status: 'running' }));
    const { step } = await ok(producer.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' }), 201);
    return { job, step };
  };
  const snapshot = async (jobId) => ok(producer.getJob(jobId));

  // Runs a write that must be refused and checks that the job did not change.
  const refusedWithoutChange = async (jobId, call, status, code) => {
    const before = await snapshot(jobId);
    const eventsBefore = await ok(producer.events(jobId));

    const response = await call();

    assertHttpError(response, status, code);
    assert.deepEqual(await snapshot(jobId), before, 'the job changed');
    assert.deepEqual(await ok(producer.events(jobId)), eventsBefore, 'events were written');
  };

  it('answers GET /healthz with status ok', async () => {
    const response = await api(ctx.server.url).healthz();
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { status: 'ok' });
  });

  it('answers GET /readyz with 200 while the database answers', async () => {
    const response = await api(ctx.server.url).readyz();
    assert.equal(response.status, 200);
  });

  it('refuses a request without a token with 401', async () => {
    const job = await newJob();
    const anonymous = api(ctx.server.url);
    assertHttpError(await anonymous.getJob(job.id), 401, 'unauthorized');
    assertHttpError(await anonymous.createJob({ workspaceId, type: 'e2e.http' }), 401, 'unauthorized');
  });

  it('refuses a badly signed or expired token with 401', async () => {
    const job = await newJob();
    const forged = api(ctx.server.url, mintToken('some-other-secret', { workspaces: [workspaceId] }));
    const expired = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId], expiresIn: -120 }));
    assertHttpError(await forged.getJob(job.id), 401, 'unauthorized');
    assertHttpError(await expired.getJob(job.id), 401, 'unauthorized');
  });

  it('refuses a write with a subscribe-only token with 403 and writes nothing', async () => {
    const job = await newJob();
    const reader = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId], scope: 'subscribe' }));
    assertHttpError(await reader.createJob({ workspaceId, type: 'e2e.http' }), 403, 'forbidden');
    await refusedWithoutChange(job.id, () => reader.setStatus(job.id, { status: 'queued' }), 403, 'forbidden');
  });

  it('lets a subscribe-only token read', async () => {
    const job = await newJob();
    const reader = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [workspaceId], scope: 'subscribe' }));
    assertJobSnapshot(await ok(reader.getJob(job.id)), { id: job.id, steps: [] });
  });

  it('refuses to create a job in a workspace the token does not name with 403', async () => {
    const response = await producer.createJob({ workspaceId: otherWorkspace, type: 'e2e.http' });
    assertHttpError(response, 403, 'forbidden');
  });

  it('answers an unknown job with 404', async () => {
    const unknown = randomUUID();
    assertHttpError(await producer.getJob(unknown), 404, 'not_found');
    assertHttpError(await producer.setStatus(unknown, { status: 'queued' }), 404, 'not_found');
    assertHttpError(await producer.events(unknown), 404, 'not_found');
  });

  it('refuses malformed JSON with 400 and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id,
      () => producer.request('POST', `/api/v1/jobs/${job.id}/status`, { rawBody: '{"status": "que' }),
      400, 'bad_request');
  });

  it('refuses valid JSON with a number no double holds (1e400) with 422 naming the field, and writes nothing', async () => {
    const job = await newJob();
    for (const raw of ['{"progress": 1e400}', '{"progress": 50, "message": "x", "extra": -1E+999}']) {
      await refusedWithoutChange(job.id,
        () => producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: raw }),
        422, 'invalid_payload');
    }
    const response = await producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: '{"progress": 1e400}' });
    assert.match(response.body.error.message, /^progress: /);
  });

  it('refuses half a surrogate pair in a string (an emoji cut in two) with 422 naming the field, and writes nothing', async () => {
    const { job, step: { id: stepId } } = await runningJobWithStep();
    for (const [route, body, where] of [
      [`steps/${stepId}/output`, { chunk: 'build ok \u{1F600}'.slice(0, 10) }, /^chunk: the text holds \\ud83d, half of a UTF-16 surrogate pair/],
      ['events', { type: 'gate.started', payload: { note: '\udc00 alone' } }, /^payload\.note: /],
      ['events', { type: 'gate.started', payload: { ['k\ud800']: 1 } }, /^payload: a key holds /],
      ['batch', { events: [{ jobId: job.id, kind: 'progress', progress: 5, message: 'x\udbff' }] }, /^events\[0\]\.message: /],
    ]) {
      const raw = JSON.stringify(body);
      await refusedWithoutChange(job.id,
        () => producer.request('POST', route === 'batch' ? '/api/v1/events/batch' : `/api/v1/jobs/${job.id}/${route}`, { rawBody: raw }),
        422, 'invalid_payload');
      const response = await producer.request('POST', route === 'batch' ? '/api/v1/events/batch' : `/api/v1/jobs/${job.id}/${route}`, { rawBody: raw });
      assert.match(response.body.error.message, where, `${route} ${raw}`);
    }
    // A whole pair is a character like any other.
    await ok(producer.request('POST', `/api/v1/jobs/${job.id}/steps/${stepId}/output`, { body: { chunk: 'ok \u{1F600}\n' } }));
  });

  it('refuses a body in a charset other than UTF-8, or compressed, with 400 naming it, and writes nothing', async () => {
    const job = await newJob();
    const raw = '{"progress": 10}';
    for (const [headers, named] of [
      [{ 'content-type': 'application/json; charset=latin1' }, /^charset "latin1" is not taken/],
      [{ 'content-type': 'application/json; charset="ISO-8859-1"' }, /^charset "ISO-8859-1" is not taken/],
      [{ 'content-encoding': 'gzip' }, /^Content-Encoding "gzip" is not taken/],
      [{ 'content-encoding': 'br' }, /^Content-Encoding "br" is not taken/],
    ]) {
      await refusedWithoutChange(job.id,
        () => producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: raw, headers }),
        400, 'bad_request');
      const response = await producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: raw, headers });
      assert.match(response.body.error.message, named, JSON.stringify(headers));
    }
    // Two codings (as two headers are read): any but identity is refused.
    await refusedWithoutChange(job.id,
      () => producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: raw, headers: { 'content-encoding': 'identity, gzip' } }),
      400, 'bad_request');
    for (const headers of [{ 'content-type': 'application/json; charset=UTF-8' }, { 'content-type': 'application/json; charset=us-ascii' }, { 'content-encoding': 'identity' }]) {
      await ok(producer.request('POST', `/api/v1/jobs/${job.id}/progress`, { rawBody: raw, headers }));
    }
  });

  it('refuses a body that repeats a key in one object with 422 naming the object, and writes nothing', async () => {
    const job = await newJob();
    await ok(producer.setStatus(job.id, { status: 'queued' }));
    await ok(producer.setStatus(job.id, { status: 'running' }));
    for (const [route, raw, where] of [
      ['progress', '{"progress": 10, "progress": 90}', /^body: /],
      ['events', '{"type": "gate.started", "payload": {"a": 1, "a": 2}}', /^payload: /],
      ['events', '{"type": "gate.started", "payload": {"a": 1, "\\u0061": 2}}', /^payload: /],
    ]) {
      await refusedWithoutChange(job.id,
        () => producer.request('POST', `/api/v1/jobs/${job.id}/${route}`, { rawBody: raw }),
        422, 'invalid_payload');
      const response = await producer.request('POST', `/api/v1/jobs/${job.id}/${route}`, { rawBody: raw });
      assert.match(response.body.error.message, where, raw);
    }
    // The same key in two objects is no repeat.
    await ok(producer.request('POST', `/api/v1/jobs/${job.id}/events`,
      { rawBody: '{"type": "gate.started", "payload": {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}}' }), 201);
  });

  it('answers a route asked with a method it does not take with 405, the error body and Allow', async () => {
    const job = await newJob();
    const response = await producer.request('DELETE', `/api/v1/jobs/${job.id}`);
    assertHttpError(response, 405, 'method_not_allowed');
    assert.match(response.headers.get('allow') ?? '', /GET/);
    await ok(producer.getJob(job.id));
  });

  it('names Last-Event-ID, not since, when the SSE resume header is not a seq', async () => {
    const job = await newJob();
    const response = await producer.request('GET', `/api/v1/jobs/${job.id}/events/stream`,
      { headers: { 'last-event-id': 'banana' } });
    assertHttpError(response, 422, 'invalid_payload');
    assert.match(response.body.error.message, /^Last-Event-ID: /);
    const bySince = await producer.request('GET', `/api/v1/jobs/${job.id}/events/stream?since=banana`);
    assertHttpError(bySince, 422, 'invalid_payload');
    assert.match(bySince.body.error.message, /^since: /);
    // Beyond the job's newest event: invalid_cursor, naming what was sent too.
    const beyond = await producer.request('GET', `/api/v1/jobs/${job.id}/events/stream`,
      { headers: { 'last-event-id': '999999' } });
    assertHttpError(beyond, 422, 'invalid_cursor');
    assert.match(beyond.body.error.message, /^Last-Event-ID 999999 /);
    const beyondSince = await producer.request('GET', `/api/v1/jobs/${job.id}/events/stream?since=999999`);
    assertHttpError(beyondSince, 422, 'invalid_cursor');
    assert.match(beyondSince.body.error.message, /^since 999999 /);
  });

  it('refuses a body that is not sent as JSON with 400', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id,
      () => producer.request('POST', `/api/v1/jobs/${job.id}/status`, {
        rawBody: JSON.stringify({ status: 'queued' }), headers: { 'content-type': 'text/plain' },
      }),
      400, 'bad_request');
  });

  it('refuses job progress 101 with 422 invalid_payload and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id, () => producer.setProgress(job.id, { progress: 101 }), 422, 'invalid_payload');
  });

  it('refuses an unknown status with 422 invalid_payload and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id, () => producer.setStatus(job.id, { status: 'done' }), 422, 'invalid_payload');
  });

  it('refuses a step with an unknown phase with 422 invalid_payload and writes nothing', async () => {
    const { job } = await runningJobWithStep();
    await refusedWithoutChange(job.id,
      () => producer.startStep(job.id, { name: 'deploy', phase: 'build', stepType: 'command' }),
      422, 'invalid_payload');
  });

  it('refuses a job without a type with 422 invalid_payload', async () => {
    assertHttpError(await producer.createJob({ workspaceId }), 422, 'invalid_payload');
  });

  it('refuses pending to completed with 409 invalid_transition and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id,
      () => producer.setStatus(job.id, { status: 'completed', result: {} }), 409, 'invalid_transition');
  });

  it('refuses writes to a terminal job with 409 but still takes job:event types', async () => {
    const { job, step } = await runningJobWithStep();
    await ok(producer.setStatus(job.id, { status: 'failed', error: 'boom' }));

    await refusedWithoutChange(job.id, () => producer.setStatus(job.id, { status: 'cancelled' }), 409, 'invalid_transition');
    await refusedWithoutChange(job.id, () => producer.setProgress(job.id, { progress: 50 }), 409, CONFLICT);
    await refusedWithoutChange(job.id,
      () => producer.startStep(job.id, { name: 'late', phase: 'cleanup', stepType: 'command' }), 409, CONFLICT);
    const { event } = await ok(producer.addEvent(job.id, { type: 'ai.tool_called', stepId: step.id, payload: { tool: 'grep' } }), 201);
    assertEvent(event, { type: 'ai.tool_called', stepId: step.id, payload: { tool: 'grep' } });
  });

  it('carries the error of a failed job in its status event', async () => {
    const job = await newJob();

    const { event } = await ok(producer.setStatus(job.id, { status: 'failed', error: 'runner lost' }));

    assertEvent(event, { type: 'job.failed', status: 'failed', previousStatus: 'pending', error: 'runner lost', result: undefined });
    assertJobSnapshot(await snapshot(job.id), { status: 'failed', error: 'runner lost' });
  });

  it('refuses output on a completed step with 409 and writes nothing', async () => {
    const { job, step } = await runningJobWithStep();
    await ok(producer.completeStep(job.id, step.id, { status: 'completed' }));

    await refusedWithoutChange(job.id, () => producer.stepOutput(job.id, step.id, { chunk: 'late\n' }), 409, CONFLICT);
    await refusedWithoutChange(job.id, () => producer.stepProgress(job.id, step.id, { progress: 10 }), 409, CONFLICT);
    await refusedWithoutChange(job.id, () => producer.completeStep(job.id, step.id, { status: 'failed' }), 409, CONFLICT);
  });

  it('refuses an output chunk over 64 KiB with 413 and writes nothing', async () => {
    const { job, step } = await runningJobWithStep();
    await refusedWithoutChange(job.id,
      () => producer.stepOutput(job.id, step.id, { chunk: 'x'.repeat(CHUNK_LIMIT + 1) }), 413, 'payload_too_large');
  });

  it('takes an output chunk of exactly 64 KiB', async () => {
    const { job, step } = await runningJobWithStep();
    const chunk = 'y'.repeat(CHUNK_LIMIT);

    const { event } = await ok(producer.stepOutput(job.id, step.id, { chunk, stream: 'stderr' }));

    assertEvent(event, { type: 'step.output', stepId: step.id, chunk, stream: 'stderr' });
  });

  it('refuses an unknown output stream with 422 invalid_payload', async () => {
    const { job, step } = await runningJobWithStep();
    await refusedWithoutChange(job.id,
      () => producer.stepOutput(job.id, step.id, { chunk: 'x', stream: 'stdlog' }), 422, 'invalid_payload');
  });

  it('commits a batch of several kinds and answers its events in request order', async () => {
    const job = await newJob();
    const other = await newJob();
    const stepId = randomUUID();

    const { events } = await ok(producer.batch({
      events: [
        { jobId: job.id, kind: 'status', status: 'queued' },
        { jobId: other.id, kind: 'status', status: 'cancelled', error: 'superseded' },
        { jobId: job.id, kind: 'status', status: 'running' },
        { jobId: job.id, kind: 'step', id: stepId, name: 'compile', phase: 'execution', stepType: 'command' },
        { jobId: job.id, kind: 'output', stepId, chunk: 'cc -c main.c\n' },
        { jobId: job.id, kind: 'step_progress', stepId, progress: 60 },
        { jobId: job.id, kind: 'step_complete', stepId, status: 'completed' },
        { jobId: job.id, kind: 'event', type: 'ai.tokens_used', payload: { input: 10, output: 5 } },
        { jobId: job.id, kind: 'progress', progress: 80, message: 'compiled' },
      ],
    }));

    const expected = [
      { jobId: job.id, seq: 2, type: 'job.queued' },
      { jobId: other.id, seq: 2, type: 'job.cancelled', error: 'superseded' },
      { jobId: job.id, seq: 3, type: 'job.started' },
      { jobId: job.id, seq: 4, type: 'step.started', stepId, name: 'compile' },
      { jobId: job.id, seq: 5, type: 'step.output', stepId, stream: 'stdout' },
      { jobId: job.id, seq: 6, type: 'step.progress', stepId, progress: 60 },
      { jobId: job.id, seq: 7, type: 'step.completed', stepId, status: 'completed' },
      { jobId: job.id, seq: 8, type: 'ai.tokens_used', payload: { input: 10, output: 5 } },
      { jobId: job.id, seq: 9, type: 'job.progress', progress: 80, message: 'compiled' },
    ];
    assert.equal(events.length, expected.length);
    events.forEach((event, index) => assertEvent(event, expected[index]));
    const stored = await ok(producer.events(job.id, { since: 1 }));
    assert.deepEqual(stored.events, events.filter((e) => e.jobId === job.id));
    assert.equal(stored.lastSeq, 9);
  });

  it('refuses a whole batch with one invalid item and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id, () => producer.batch({
      events: [
        { jobId: job.id, kind: 'status', status: 'queued' },
        { jobId: job.id, kind: 'progress', progress: 101 },
      ],
    }), 422, 'invalid_payload');
  });

  it('refuses a whole batch with one invalid transition and writes nothing', async () => {
    const job = await newJob();
    await refusedWithoutChange(job.id, () => producer.batch({
      events: [
        { jobId: job.id, kind: 'status', status: 'queued' },
        { jobId: job.id, kind: 'progress', progress: 10 },
        { jobId: job.id, kind: 'status', status: 'completed' },
      ],
    }), 409, 'invalid_transition');
  });

  it('answers a second create with the same id with 200 and the same job', async () => {
    const id = randomUUID();
    const body = { id, workspaceId, type: 'e2e.idempotent', metadata: { attempt: 1 } };

    const first = await producer.createJob(body);
    const second = await producer.createJob(body);

    assert.equal(first.status, 201, JSON.stringify(first.body));
    assert.equal(second.status, 200, JSON.stringify(second.body));
    assertJobSnapshot(first.body, { id, lastSeq: 1, priority: 0 });
    assert.deepEqual(second.body, first.body);
    assert.equal((await ok(producer.events(id))).events.length, 1);
  });

  it('answers a job id taken in another workspace exactly as one taken here with another body', async () => {
    const otherWorkspace = randomUUID();
    const other = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [otherWorkspace] }));
    const takenElsewhere = randomUUID();
    await ok(other.createJob({ id: takenElsewhere, workspaceId: otherWorkspace, type: 'e2e.oracle' }), 201);
    const takenHere = randomUUID();
    await ok(producer.createJob({ id: takenHere, workspaceId, type: 'e2e.oracle' }), 201);

    const elsewhere = await producer.createJob({ id: takenElsewhere, workspaceId, type: 'e2e.oracle' });
    const here = await producer.createJob({ id: takenHere, workspaceId, type: 'e2e.oracle', metadata: { x: 1 } });
    assertHttpError(elsewhere, 409, 'conflict');
    assertHttpError(here, 409, 'conflict');
    const generic = (r, id) => r.body.error.message.replace(id, '<id>');
    assert.equal(generic(elsewhere, takenElsewhere), generic(here, takenHere));
    assert.doesNotMatch(elsewhere.body.error.message, /workspace/i);
    assert.equal((await other.getJob(takenElsewhere)).body.lastSeq, 1, 'the other job is untouched');
  });

  it('lists the jobs of a workspace, filtered by status and limited', async () => {
    const listWorkspace = randomUUID();
    const lister = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [listWorkspace] }));
    const ids = [];
    for (let i = 0; i < 3; i += 1) {
      ids.push((await ok(lister.createJob({ workspaceId: listWorkspace, type: 'e2e.list' }), 201)).id);
    }
    await ok(lister.setStatus(ids[1], { status: 'queued' }));

    const all = await ok(lister.listJobs({ workspaceId: listWorkspace }));
    const queued = await ok(lister.listJobs({ workspaceId: listWorkspace, status: 'queued' }));
    const limited = await ok(lister.listJobs({ workspaceId: listWorkspace, limit: 2 }));

    assert.deepEqual(all.jobs.map((j) => j.id).sort(), [...ids].sort());
    all.jobs.forEach((job) => assertJobSnapshot(job, { workspaceId: listWorkspace }));
    const created = all.jobs.map((j) => j.createdAt);
    assert.deepEqual(created, [...created].sort().reverse(), 'newest first');
    assert.deepEqual(queued.jobs.map((j) => j.id), [ids[1]]);
    assert.equal(limited.jobs.length, 2);
  });
});
