// The stock socket.io-client browser bundle, loaded by a plain page on another
// origin, connects to jobstream (allowed by --cors-origins), subscribes to a
// job and receives its events in seq order; the page checks them itself.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { describe, test, before, after } = require('node:test');
const { launchBrowser, mintToken, producer, reportAndCleanUp, screenshot, startServer } = require('./support');

const BUNDLE = path.join(__dirname, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js');
const WS = 'cross-origin';

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
    site = http.createServer((req, res) => {
      const route = req.url.split('?')[0];
      if (route === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(PAGE);
      } else if (route === '/socket.io.min.js') {
        res.writeHead(200, { 'content-type': 'text/javascript' });
        fs.createReadStream(BUNDLE).pipe(res);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
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
});
