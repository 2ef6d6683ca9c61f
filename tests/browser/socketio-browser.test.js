// The stock socket.io-client browser bundle, loaded by a plain page on another
// origin, connects to jobstream (allowed by --cors-origins), subscribes to a
// job and receives its events in seq order; the page checks them itself.
// Listed origins may send credentials (withCredentials in socket.io-client
// and EventSource, preflighted requests included); with `*` any origin may
// call, without credentials.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { describe, test, before, after } = require('node:test');
const { launchBrowser, mintToken, producer, reportAndCleanUp, screenshot, startServer } = require('./support');

const BUNDLE = path.join(__dirname, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js');
const WS = 'cross-origin';

// A page with only the bundle: tests run their code in it (page.evaluate).
const BLANK = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blank</title>'
  + '<script src="/socket.io.min.js"></script></head><body></body></html>';

// The test site: PAGE at /, BLANK at /blank, the bundle.
function startSite() {
  const site = http.createServer((req, res) => {
    const route = req.url.split('?')[0];
    if (route === '/' || route === '/blank') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(route === '/' ? PAGE : BLANK);
    } else if (route === '/socket.io.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      fs.createReadStream(BUNDLE).pipe(res);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => site.listen(0, '127.0.0.1', () => resolve(site)));
}

// In the page: connects with socket.io-client (options as given, plus
// reconnection off), replays the job from seq 0 and resolves with what
// happened: { error, transport, ack, seqs }.
function socketInPage({ server, options, jobId, count }) {
  return new Promise((resolve) => {
    const socket = io(server, { ...options, reconnection: false, forceNew: true });
    const seqs = [];
    let ack = null;
    // Events seen when the ack arrived (0: the ack came first).
    let eventsBeforeAck = null;
    const done = (error) => {
      socket.close();
      resolve({ error, transport: socket.io.engine && socket.io.engine.transport.name, ack, eventsBeforeAck, seqs });
    };
    const timer = setTimeout(() => done('timed out'), 10000);
    socket.on('connect_error', (err) => { clearTimeout(timer); done(err.message); });
    socket.onAny((name, event) => {
      if (event && event.seq) seqs.push(event.seq);
      if (seqs.length === count) { clearTimeout(timer); done(null); }
    });
    // A callback, not `await emitWithAck`: one long-polling answer may carry
    // the ack and every event, and an awaited ack would be seen only after
    // the events handled in the same turn.
    socket.on('connect', () => {
      socket.timeout(5000).emit('subscribe:job', { jobId, since: 0 }, (err, answer) => {
        ack = err ? { error: err.message } : answer;
        eventsBeforeAck = seqs.length;
      });
    });
  });
}

// In the page: an EventSource on the job's stream; resolves with the seqs up to
// the terminal event, or the error.
function eventSourceInPage({ url, withCredentials, count }) {
  return new Promise((resolve) => {
    const source = new EventSource(url, { withCredentials });
    const seqs = [];
    const done = (error) => { source.close(); resolve({ error, seqs, withCredentials: source.withCredentials }); };
    const timer = setTimeout(() => done('timed out'), 10000);
    source.onerror = () => { if (seqs.length < count) { clearTimeout(timer); done('error event'); } };
    for (const name of ['job:created', 'job:status', 'job:progress', 'step:started', 'step:output', 'step:completed']) {
      source.addEventListener(name, (message) => {
        seqs.push(Number(message.lastEventId));
        if (seqs.length === count) { clearTimeout(timer); done(null); }
      });
    }
  });
}

// A finished job with `count` events, for replays.
async function finishedJob(server) {
  const pub = producer(server, mintToken(server.secret, { workspaces: [WS], scope: 'subscribe publish' }));
  const job = await pub.createJob({ workspaceId: WS, type: 'report' });
  await pub.status(job.id, 'queued');
  await pub.status(job.id, 'running');
  const step = await pub.startStep(job.id, { name: 'render', phase: 'execution', stepType: 'command' });
  await pub.output(job.id, step.id, 'page 1\n');
  await pub.completeStep(job.id, step.id);
  await pub.status(job.id, 'completed');
  return { id: job.id, count: 7 };
}

// The CORS headers of an answer, for assertions.
async function corsOf(url, { method = 'GET', origin, headers = {} } = {}) {
  const response = await fetch(url, { method, headers: { origin, ...headers }, signal: AbortSignal.timeout(5000) });
  await response.arrayBuffer();
  const h = response.headers;
  return {
    status: response.status,
    allowOrigin: h.get('access-control-allow-origin'),
    allowCredentials: h.get('access-control-allow-credentials'),
    allowMethods: h.get('access-control-allow-methods'),
    allowHeaders: h.get('access-control-allow-headers'),
    vary: (h.get('vary') || '').toLowerCase(),
  };
}

// The page: no framework, only the bundle. It subscribes to the job given in
// its query, keeps what arrives, and exposes verify() for the test.
const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>socket.io-client in a browser</title>
<style>
  body { font: 14px/1.5 system-ui, sans-serif; background: #0d1117; color: #e6edf3; margin: 24px; }
  h1 { font-size: 18px; } code, li { font-family: ui-monospace, monospace; font-size: 13px; }
  #status { color: #3fb950; } li span { color: #9aa4af; }
</style>
<script src="/socket.io.min.js"></script>
</head>
<body>
<h1>socket.io-client (browser bundle) → jobstream on another origin</h1>
<p>Status: <b id="status">connecting…</b> · transport: <code id="transport">–</code></p>
<ol id="events"></ol>
<script>
  const params = new URLSearchParams(location.search);
  const jobId = params.get('job');
  const received = [];
  let lastSeq = 0;
  let duplicates = 0;
  const socket = io(params.get('server'), { auth: { token: params.get('token') } });
  const engine = socket.io.engine;
  window.state = { received, ack: null, error: null, firstTransport: engine.transport.name, upgradedTo: null };
  document.getElementById('transport').textContent = engine.transport.name;
  engine.on('upgrade', (transport) => {
    window.state.upgradedTo = transport.name;
    document.getElementById('transport').textContent = engine.transport.name + ' (upgraded)';
  });
  socket.on('connect', async () => {
    document.getElementById('status').textContent = 'connected';
    const ack = await socket.timeout(5000).emitWithAck('subscribe:job', { jobId, since: lastSeq });
    window.state.ack = ack;
    document.getElementById('status').textContent = ack.ok ? 'subscribed to ' + ack.room : 'refused: ' + ack.error.code;
  });
  socket.on('connect_error', (err) => { window.state.error = err.message; document.getElementById('status').textContent = err.message; });
  for (const name of ['job:created', 'job:status', 'job:progress', 'step:started', 'step:progress',
                      'step:output', 'step:completed', 'job:event']) {
    socket.on(name, (event) => {
      if (event.seq <= lastSeq) { duplicates += 1; return; }
      lastSeq = event.seq;
      received.push({ name, seq: event.seq, type: event.type, jobId: event.jobId });
      const li = document.createElement('li');
      const detail = document.createElement('span');
      detail.textContent = ' ' + event.type + (event.status ? ' → ' + event.status : '') + (event.chunk ? ' ' + JSON.stringify(event.chunk) : '');
      li.append('#' + event.seq + ' ' + name, detail);
      document.getElementById('events').append(li);
    });
  }
  // What the page itself finds wrong with what it received.
  window.verify = (expectedTypes) => {
    const problems = [];
    if (!window.state.ack || !window.state.ack.ok) problems.push('no ok ack: ' + JSON.stringify(window.state.ack));
    if (duplicates) problems.push(duplicates + ' duplicate events');
    received.forEach((e, i) => {
      if (e.seq !== i + 1) problems.push('event ' + i + ' has seq ' + e.seq);
      if (e.jobId !== jobId) problems.push('event ' + i + ' is for job ' + e.jobId);
    });
    const types = received.map((e) => e.type);
    if (JSON.stringify(types) !== JSON.stringify(expectedTypes)) problems.push('types ' + JSON.stringify(types));
    return problems;
  };
</script>
</body>
</html>`;

describe('socket.io-client browser bundle across origins', () => {
  let server;
  let site;
  let siteUrl;
  let browser;

  before(async () => {
    assert.ok(fs.existsSync(BUNDLE), `${BUNDLE} is missing: run npm ci`);
    site = await startSite();
    siteUrl = `http://127.0.0.1:${site.address().port}`;
    server = await startServer({ extraArgs: ['--cors-origins', siteUrl] });
    browser = await launchBrowser({ viewport: { width: 1000, height: 640 } });
  });
  reportAndCleanUp(() => ({ browser, server }));
  after(async () => {
    if (site) await new Promise((resolve) => site.close(resolve));
  });

  test('subscribes to a job and receives its events in order', async () => {
    const pub = producer(server, mintToken(server.secret, { workspaces: [WS], scope: 'subscribe publish' }));
    const token = mintToken(server.secret, { workspaces: [WS] });
    const job = await pub.createJob({ workspaceId: WS, type: 'report' });
    await pub.status(job.id, 'queued');

    const { page } = browser;
    const query = new URLSearchParams({ server: server.url, token, job: job.id });
    await page.goto(`${siteUrl}/?${query}`);
    assert.notEqual(new URL(page.url()).origin, new URL(server.url).origin);
    await page.waitForFunction(() => window.state.ack || window.state.error, null, { timeout: 10_000 });
    assert.equal(await page.evaluate(() => window.state.error), null);
    assert.equal(await page.evaluate(() => window.state.ack.ok), true);

    // Live events after the replay of the first two.
    await pub.status(job.id, 'running');
    const step = await pub.startStep(job.id, { name: 'render', phase: 'execution', stepType: 'command' });
    for (const line of ['page 1\n', 'page 2\n', 'page 3\n']) await pub.output(job.id, step.id, line);
    await pub.completeStep(job.id, step.id);
    await pub.progress(job.id, 100);
    await pub.status(job.id, 'completed', { result: { pages: 3 } });

    const expected = ['job.created', 'job.queued', 'job.started', 'step.started', 'step.output', 'step.output',
      'step.output', 'step.completed', 'job.progress', 'job.completed'];
    await page.waitForFunction((n) => window.state.received.length >= n, expected.length, { timeout: 10_000 });
    assert.deepEqual(await page.evaluate((types) => window.verify(types), expected), []);
    // It connected over long-polling (cross-origin requests, allowed by CORS),
    // then upgraded to WebSocket.
    assert.equal(await page.evaluate(() => window.state.firstTransport), 'polling');
    await page.waitForFunction(() => window.state.upgradedTo === 'websocket', null, { timeout: 10_000 });
    await screenshot(page, 'socketio-cross-origin.png');
  });

  test('a listed origin may send credentials: polling and EventSource with withCredentials', async () => {
    const job = await finishedJob(server);
    const token = mintToken(server.secret, { workspaces: [WS] });
    const { page } = browser;
    await page.goto(`${siteUrl}/blank`);

    const polling = await page.evaluate(socketInPage, {
      server: server.url, jobId: job.id, count: job.count,
      options: { withCredentials: true, transports: ['polling'], auth: { token } },
    });
    assert.equal(polling.error, null);
    assert.equal(polling.transport, 'polling');
    assert.equal(polling.ack && polling.ack.ok, true, JSON.stringify(polling.ack));
    assert.equal(polling.eventsBeforeAck, 0, 'the ack comes before the events it announces');
    assert.deepEqual(polling.seqs, [1, 2, 3, 4, 5, 6, 7]);

    // A preflighted one: a custom header on every long-polling request.
    const preflighted = await page.evaluate(socketInPage, {
      server: server.url, jobId: job.id, count: job.count,
      options: { withCredentials: true, transports: ['polling'], extraHeaders: { authorization: `Bearer ${token}` } },
    });
    assert.equal(preflighted.error, null);
    assert.deepEqual(preflighted.seqs, [1, 2, 3, 4, 5, 6, 7]);

    // The default: polling, then the upgrade to WebSocket, with credentials.
    const upgraded = await page.evaluate(socketInPage, {
      server: server.url, jobId: job.id, count: job.count, options: { withCredentials: true, auth: { token } },
    });
    assert.equal(upgraded.error, null);
    assert.deepEqual(upgraded.seqs, [1, 2, 3, 4, 5, 6, 7]);

    const stream = await page.evaluate(eventSourceInPage, {
      url: `${server.url}/api/v1/jobs/${job.id}/events/stream?token=${encodeURIComponent(token)}`,
      withCredentials: true,
      count: job.count,
    });
    assert.deepEqual(stream, { error: null, seqs: [1, 2, 3, 4, 5, 6, 7], withCredentials: true });
  });

  test('CORS answers on /socket.io/ and the API: the origin echoed, credentials allowed, Vary: Origin', async () => {
    const job = await finishedJob(server);
    const token = mintToken(server.secret, { workspaces: [WS] });
    const polling = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const preflight = await corsOf(polling, {
      method: 'OPTIONS',
      origin: siteUrl,
      headers: { 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    assert.ok(preflight.status === 200 || preflight.status === 204, `preflight status ${preflight.status}`);
    assert.equal(preflight.allowOrigin, siteUrl);
    assert.equal(preflight.allowCredentials, 'true');
    assert.match(preflight.allowMethods, /POST/);
    assert.match(preflight.allowHeaders, /authorization/i);
    assert.match(preflight.vary, /origin/);
    // A preflight from an origin that is not listed learns nothing of the settings.
    const stranger = await corsOf(polling, {
      method: 'OPTIONS',
      origin: 'https://elsewhere.example',
      headers: { 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
    });
    for (const key of ['allowOrigin', 'allowCredentials', 'allowMethods', 'allowHeaders']) {
      assert.equal(stranger[key], null, key);
    }

    // The API takes its token as a bearer header; `?token=` is for the SSE streams only.
    const requests = [
      [polling, {}],
      [`${server.url}/api/v1/jobs/${job.id}`, { authorization: `Bearer ${token}` }],
      [`${server.url}/api/v1/jobs/${job.id}/events/stream?token=${token}`, {}],
    ];
    for (const [url, headers] of requests) {
      const answer = await corsOf(url, { origin: siteUrl, headers });
      assert.equal(answer.status, 200, url);
      assert.equal(answer.allowOrigin, siteUrl, url);
      assert.equal(answer.allowCredentials, 'true', url);
      assert.match(answer.vary, /origin/, url);
      // An origin that is not listed gets no Access-Control-Allow-Origin, so
      // its browser hands the answer to no script, with or without credentials.
      const other = await corsOf(url, { origin: 'https://elsewhere.example', headers });
      assert.equal(other.allowOrigin, null, url);
      assert.equal(other.allowCredentials, null, url);
      assert.match(other.vary, /origin/, url);
    }
  });
});

describe('CORS with --cors-origins "*"', () => {
  let server;
  let site;
  let siteUrl;
  let browser;

  before(async () => {
    site = await startSite();
    siteUrl = `http://127.0.0.1:${site.address().port}`;
    server = await startServer({ extraArgs: ['--cors-origins', '*'] });
    browser = await launchBrowser({ viewport: { width: 800, height: 600 } });
  });
  reportAndCleanUp(() => ({ browser, server }));
  after(async () => {
    if (site) await new Promise((resolve) => site.close(resolve));
  });

  test('any origin may call without credentials; credentialed requests are refused', async () => {
    const job = await finishedJob(server);
    const token = mintToken(server.secret, { workspaces: [WS] });
    const answer = await corsOf(`${server.url}/socket.io/?EIO=4&transport=polling`, { origin: siteUrl });
    assert.equal(answer.allowOrigin, '*');
    assert.equal(answer.allowCredentials, null);

    const { page } = browser;
    await page.goto(`${siteUrl}/blank`);
    const plain = await page.evaluate(socketInPage, {
      server: server.url, jobId: job.id, count: job.count, options: { transports: ['polling'], auth: { token } },
    });
    assert.equal(plain.error, null);
    assert.deepEqual(plain.seqs, [1, 2, 3, 4, 5, 6, 7]);
    // The browser refuses a wildcard answer to a request with credentials.
    const credentialed = await page.evaluate(socketInPage, {
      server: server.url, jobId: job.id, count: job.count,
      options: { withCredentials: true, transports: ['polling'], auth: { token } },
    });
    assert.notEqual(credentialed.error, null);
    assert.deepEqual(credentialed.seqs, []);
  });
});
