// Helpers for the real-browser tests: start jobstream on a fresh SQLite
// database (on a port that survives a restart), mint JWTs, drive jobs over
// the HTTP API as a producer would, and launch Debian's Chromium headless.
'use strict';

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const ARTIFACTS = path.join(__dirname, 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const READY_TIMEOUT_MS = 20_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function binaryPath() {
  return process.env.JOBSTREAM_BIN || path.join(REPO_ROOT, 'target', 'debug', 'jobstream');
}

// A free TCP port on 127.0.0.1 (so that a restarted server comes back on it).
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// Starts `jobstream serve` on a fresh database. Returns
// { url, secret, stop(), restart(), close(), output() }; restart() keeps the
// port and the database.
async function startServer({ extraArgs = [] } = {}) {
  const bin = binaryPath();
  if (!fs.existsSync(bin)) throw new Error(`server binary not found at ${bin} (build it, or set JOBSTREAM_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-browser-'));
  const secret = crypto.randomBytes(32).toString('hex');
  const port = await freePort();
  const log = [];
  let child = null;

  const launch = () => new Promise((resolve, reject) => {
    const args = ['serve', '--listen', `127.0.0.1:${port}`, '--database-url', `sqlite://${dir}/j.db?mode=rwc`, ...extraArgs];
    child = spawn(bin, args, {
      env: { ...process.env, JOBSTREAM_JWT_SECRET: secret, RUST_LOG: process.env.RUST_LOG || 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = child;
    log.push(`--- ${bin} ${args.join(' ')} (pid ${proc.pid}) ---`);
    let pending = '';
    let ready = false;
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`server not ready\n${log.join('\n')}`)); },
      READY_TIMEOUT_MS);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (data) => {
      pending += data;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        const match = /^jobstream listening on (http:\/\/[^\s]+)\s*$/.exec(line.replace(/\x1b\[[0-9;]*m/g, ''));
        if (match && !ready) { ready = true; clearTimeout(timer); resolve(match[1]); }
      }
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (data) => log.push(data.replace(/\n$/, '')));
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
    proc.on('exit', (code, signal) => {
      log.push(`--- server exited (code ${code}, signal ${signal}) ---`);
      if (!ready) { clearTimeout(timer); reject(new Error(`server exited before it was ready\n${log.join('\n')}`)); }
    });
  });
  const stop = () => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      proc.once('exit', () => { clearTimeout(killer); resolve(); });
      proc.kill('SIGTERM');
    });
  };
  const server = {
    url: await launch(),
    secret,
    port,
    stop,
    restart: async () => { await stop(); server.url = await launch(); return server.url; },
    close: async () => { await stop(); fs.rmSync(dir, { recursive: true, force: true }); },
    output: () => log.join('\n'),
  };
  return server;
}

const base64url = (value) => Buffer.from(value).toString('base64url');

// An HS256 JWT for the server's secret.
function mintToken(secret, { sub = 'browser-test', workspaces = [], scope = 'subscribe', expiresIn = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now, exp: now + expiresIn, workspaces, scope };
  const unsigned = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  return `${unsigned}.${crypto.createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

// A producer over the HTTP API: every call throws unless the answer is 2xx.
function producer(server, token) {
  const call = async (method, route, body) => {
    const response = await fetch(server.url + route, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${route}: HTTP ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  const job = (id) => `/api/v1/jobs/${id}`;
  return {
    createJob: (body) => call('POST', '/api/v1/jobs', body),
    status: (jobId, status, extra = {}) => call('POST', `${job(jobId)}/status`, { status, ...extra }),
    progress: (jobId, progress, message) => call('POST', `${job(jobId)}/progress`, { progress, message }),
    startStep: (jobId, body) => call('POST', `${job(jobId)}/steps`, body).then((r) => r.step),
    output: (jobId, stepId, chunk, stream) => call('POST', `${job(jobId)}/steps/${stepId}/output`, { chunk, stream }),
    completeStep: (jobId, stepId, body = { status: 'completed' }) =>
      call('POST', `${job(jobId)}/steps/${stepId}/complete`, body),
    event: (jobId, body) => call('POST', `${job(jobId)}/events`, body),
  };
}

// Chromium from Debian, headless, on a fresh profile. Returns { context, page, close() }.
async function launchBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (run.sh does it)`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'jobstream-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || await context.newPage();
  const console = [];
  page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));
  return {
    context,
    page,
    console,
    close: async () => { await context.close(); fs.rmSync(profile, { recursive: true, force: true }); },
  };
}

// Where the browser loads the dashboard: the server itself, or, with
// JOBSTREAM_ASSETS_DIR set (e.g. crates/server/assets), a local proxy that
// serves the page from those files and passes everything else to the server,
// to try a change of the page without rebuilding the binary.
async function dashboardOrigin(server) {
  const dir = process.env.JOBSTREAM_ASSETS_DIR;
  if (!dir) return server.url;
  const types = { '.html': 'text/html', '.css': 'text/css', '.js': 'text/javascript', '.svg': 'image/svg+xml' };
  const proxy = http.createServer((req, res) => {
    const route = req.url.split('?')[0];
    const file = route === '/' ? 'index.html' : route.startsWith('/assets/') ? path.basename(route) : null;
    if (file) {
      res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
      res.end(fs.readFileSync(path.resolve(REPO_ROOT, dir, file)));
      return;
    }
    const upstream = http.request(`${server.url}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
      r.on('close', () => { if (!r.complete) res.destroy(); });
    });
    upstream.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end(); });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  proxy.unref();
  return `http://127.0.0.1:${proxy.address().port}`;
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file });
  return file;
}

// Registers the hooks every suite needs: after a failed test, print the
// browser console and the server output; at the end, close the browser and the
// server. `get` returns { browser, server } as the suite's `before` set them.
function reportAndCleanUp(get) {
  const { afterEach, after } = require('node:test');
  afterEach((t) => {
    const { browser, server } = get();
    if (t.passed === false && browser && server) {
      process.stderr.write(`--- browser console ---\n${browser.console.join('\n')}\n--- server ---\n${server.output()}\n`);
    }
  });
  after(async () => {
    const { browser, server } = get();
    if (browser) await browser.close();
    if (server) await server.close();
  });
}

module.exports = { reportAndCleanUp, dashboardOrigin, sleep, startServer, mintToken, producer, launchBrowser, screenshot, ARTIFACTS };
