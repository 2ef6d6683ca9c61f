// Step log routes (contract §7 "Raw step log", docs/contract.md "Step log"):
// the raw text equals the step's chunks concatenated in seq order, byte for
// byte (multi-byte text, escapes, CRLF, chunks cut inside characters'
// neighbours and lines); numbered lines from any line and from the tail; the
// search of lines not read yet; and the refusals.
'use strict';

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { describe, it, before } = require('node:test');
const { api, assertHttpError, mintToken, skipReason, useServer } = require('./harness');

describe('the step log routes', { skip: skipReason(), timeout: 180_000 }, () => {
  const ctx = useServer();
  const workspaceId = randomUUID();
  let producer;
  let token;

  before(() => {
    token = mintToken(ctx.server.secret, { workspaces: [workspaceId] });
    producer = api(ctx.server.url, token);
  });

  const ok = async (call, status = 200) => {
    const response = await call;
    assert.equal(response.status, status, JSON.stringify(response.body));
    return response.body;
  };
  const runningStep = async () => {
    const job = await ok(producer.createJob({ workspaceId, type: 'e2e.log' }), 201);
    await ok(producer.setStatus(job.id, { status: 'queued' }));
    await ok(producer.setStatus(job.id, { status: 'running' }));
    const { step } = await ok(producer.startStep(job.id, { name: 'build', phase: 'execution', stepType: 'command' }), 201);
    return { job, step };
  };
  const logPath = (job, step, rest = '') => `/api/v1/jobs/${job.id}/steps/${step.id}/log${rest}`;
  const raw = async (path) => {
    const response = await fetch(ctx.server.url + path, { headers: { authorization: `Bearer ${token}` } });
    return { status: response.status, type: response.headers.get('content-type'), bytes: Buffer.from(await response.arrayBuffer()) };
  };
  // Writes chunks through the batch route, 1000 at a time.
  const writeChunks = async (job, step, chunks) => {
    for (let i = 0; i < chunks.length; i += 1000) {
      const events = chunks.slice(i, i + 1000).map(([chunk, stream]) => ({
        kind: 'output', jobId: job.id, stepId: step.id, chunk, stream,
      }));
      await ok(producer.batch({ events }));
    }
  };

  const CHUNKS = [
    ['héllo ', 'stdout'],
    ['wörld — 漢字 😀\n', 'stdout'],
    ['\x1b[1;31merror\x1b[0m: boom\r\n', 'stderr'],
    ['progress 10%\rprogress 100%\n', 'stdout'],
    ['', 'stdout'],
    ['tab\tand \x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\\n', 'stdout'],
    ['no newline at the end', 'stderr'],
  ];

  it('answers the raw log as text/plain, equal byte for byte to the chunks in seq order', async () => {
    const { job, step } = await runningStep();
    await writeChunks(job, step, CHUNKS);
    const history = await ok(producer.events(job.id));
    const chunks = history.events.filter((e) => e.type === 'step.output' && e.stepId === step.id);
    const expected = Buffer.from(chunks.map((e) => e.chunk).join(''), 'utf8');

    const all = await raw(logPath(job, step));
    assert.equal(all.status, 200);
    assert.equal(all.type, 'text/plain; charset=utf-8');
    assert.ok(all.bytes.equals(expected), `${all.bytes.toString()} != ${expected.toString()}`);

    const stderr = await raw(logPath(job, step, '?stream=stderr'));
    assert.equal(stderr.bytes.toString('utf8'), chunks.filter((e) => e.stream === 'stderr').map((e) => e.chunk).join(''));
    const stdout = await raw(logPath(job, step, '?stream=stdout'));
    assert.equal(stdout.bytes.toString('utf8'), chunks.filter((e) => e.stream === 'stdout').map((e) => e.chunk).join(''));
  });

  it('streams a log of many pages whole and in order', async () => {
    const { job, step } = await runningStep();
    const chunks = [];
    for (let i = 1; i <= 3000; i += 1) chunks.push([`${i} ${'ß'.repeat(i % 7)}\n${i % 3 ? '' : 'x'}`, i % 5 ? 'stdout' : 'stderr']);
    await writeChunks(job, step, chunks);
    const all = await raw(logPath(job, step));
    assert.ok(all.bytes.equals(Buffer.from(chunks.map(([c]) => c).join(''), 'utf8')));
  });

  it('answers an empty body for a step with no output', async () => {
    const { job, step } = await runningStep();
    const all = await raw(logPath(job, step));
    assert.equal(all.status, 200);
    assert.equal(all.bytes.length, 0);
    const lines = await ok(producer.request('GET', logPath(job, step, '/lines?tail=10')));
    assert.deepEqual(lines.lines, []);
    assert.equal(lines.total, 0);
    assert.equal(lines.end, true);
  });

  it('numbers lines across chunks, from any line and from the tail', async () => {
    const { job, step } = await runningStep();
    const chunks = [];
    for (let i = 1; i <= 1200; i += 1) {
      // Lines cut across chunks, several lines in one chunk, and empty chunks.
      chunks.push([`line ${i} `, 'stdout'], [`é${i}\n`, i % 2 ? 'stdout' : 'stderr'], ['', 'stdout']);
    }
    chunks.push(['partial', 'stdout']);
    await writeChunks(job, step, chunks);
    const text = (n) => (n === 1201 ? 'partial' : `line ${n} é${n}`);

    const tail = await ok(producer.request('GET', logPath(job, step, '/lines?tail=3')));
    assert.deepEqual(tail.lines.map((l) => [l.n, l.text, l.ended]), [[1199, text(1199), true], [1200, text(1200), true], [1201, 'partial', false]]);
    assert.equal(tail.total, 1201);
    assert.equal(tail.end, true);
    const lastEvent = (await ok(producer.getJob(job.id))).lastSeq;
    assert.equal(tail.lastSeq, lastEvent);

    const middle = await ok(producer.request('GET', logPath(job, step, '/lines?from=500&limit=4')));
    assert.deepEqual(middle.lines.map((l) => [l.n, l.text]), [500, 501, 502, 503].map((n) => [n, text(n)]));
    assert.equal(middle.end, false);
    for (const line of middle.lines) {
      assert.equal(typeof line.seq, 'number');
      assert.ok(!Number.isNaN(Date.parse(line.timestamp)));
      assert.equal(line.stream, 'stdout');
    }

    const first = await ok(producer.request('GET', logPath(job, step, '/lines?from=1&limit=1')));
    assert.deepEqual(first.lines.map((l) => [l.n, l.text]), [[1, text(1)]]);

    // Every line read page by page equals the raw log split on \n.
    const rawText = (await raw(logPath(job, step))).bytes.toString('utf8');
    const read = [];
    for (let from = 1; ; from += 500) {
      const page = await ok(producer.request('GET', logPath(job, step, `/lines?from=${from}&limit=500`)));
      read.push(...page.lines.map((l) => l.text));
      if (page.end) break;
    }
    assert.deepEqual(read, rawText.split('\n'));

    // Past the end, and at the end of the range: the same total, no lines.
    for (const from of ['1201', '1202', '5000', '9223372036854775807']) {
      const past = await ok(producer.request('GET', logPath(job, step, `/lines?from=${from}&limit=5`)));
      assert.equal(past.total, 1201, `from=${from}`);
      assert.equal(past.end, true, `from=${from}`);
      assert.deepEqual(past.lines.map((l) => l.n), from === '1201' ? [1201] : [], `from=${from}`);
    }
  });

  it('finds lines anywhere in the log, ignoring case and escape sequences, and goes on from next', async () => {
    const { job, step } = await runningStep();
    const chunks = [];
    for (let i = 1; i <= 2000; i += 1) chunks.push([i % 700 === 0 ? `\x1b[31mNeedle\x1b[0m at ${i}\n` : `hay ${i}\n`, 'stdout']);
    await writeChunks(job, step, chunks);
    const search = (params) => ok(producer.request('GET', logPath(job, step, `/search?${new URLSearchParams(params)}`)));

    assert.deepEqual(await search({ q: 'needle at' }), { matches: [700, 1400], next: null });
    assert.deepEqual(await search({ q: 'NEEDLE', limit: '1' }), { matches: [700], next: 700 });
    assert.deepEqual(await search({ q: 'needle', after: '700' }), { matches: [1400], next: null });
    assert.deepEqual(await search({ q: 'not there' }), { matches: [], next: null });
    for (const after of ['2000', '2001', '9223372036854775806', '9223372036854775807']) {
      assert.deepEqual(await search({ q: 'needle', after }), { matches: [], next: null }, `after=${after}`);
    }
  });

  it('keeps a lines answer within its byte bound, from any line and from the tail, counting escaped control characters', async () => {
    const { job, step } = await runningStep();
    // 150 lines of 60,000 bytes (about 9 MB), then 60 lines of 30,000 control
    // characters (1.8 MB of text, 10.8 MB once escaped in JSON).
    const long = Array.from({ length: 150 }, (_, i) => [`${String(i + 1).padStart(6, '0')}${'x'.repeat(59_993)}\n`, 'stdout']);
    const control = Array.from({ length: 60 }, () => [`${'\x01'.repeat(30_000)}\n`, 'stdout']);
    for (let i = 0; i < long.length; i += 10) await writeChunks(job, step, long.slice(i, i + 10));
    for (let i = 0; i < control.length; i += 4) await writeChunks(job, step, control.slice(i, i + 4));
    const bound = 8 * 1024 * 1024 + 6 * 65_536;

    const forward = await ok(producer.request('GET', logPath(job, step, '/lines?from=1&limit=5000')));
    assert.equal(forward.end, false, 'the answer stops early');
    assert.ok(forward.lines.length < 150 && forward.lines.length > 100, String(forward.lines.length));
    assert.equal(forward.lines[0].n, 1);
    assert.ok(JSON.stringify(forward).length <= bound, String(JSON.stringify(forward).length));

    const tail = await ok(producer.request('GET', logPath(job, step, '/lines?tail=5000')));
    assert.equal(tail.lines.at(-1).n, 210, 'a tail answer keeps the last lines');
    assert.ok(tail.lines.length < 210, String(tail.lines.length));
    assert.ok(JSON.stringify(tail).length <= bound, String(JSON.stringify(tail).length));
  });

  it('refuses bad parameters with 422 and unknown jobs or steps with 404', async () => {
    const { job, step } = await runningStep();
    assertHttpError(await producer.request('GET', logPath(job, step, '?stream=both')), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, step, '/lines?tail=0')), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, step, '/lines?limit=5001')), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, step, '/lines?from=0')), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, step, '/search')), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, step, `/search?q=${'x'.repeat(201)}`)), 422, 'invalid_payload');
    assertHttpError(await producer.request('GET', logPath(job, { id: randomUUID() })), 404, 'not_found');
    assertHttpError(await producer.request('GET', logPath({ id: randomUUID() }, step)), 404, 'not_found');
    assertHttpError(await producer.request('GET', logPath({ id: 'nope' }, step)), 404, 'not_found');
    const other = api(ctx.server.url, mintToken(ctx.server.secret, { workspaces: [randomUUID()] }));
    assertHttpError(await other.request('GET', logPath(job, step)), 404, 'not_found');
    assertHttpError(await api(ctx.server.url).request('GET', logPath(job, step)), 401, 'unauthorized');
  });
});
