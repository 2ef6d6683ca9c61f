// Shared helpers of the package's tests: a server per test file, sockets that
// are closed afterwards, an HTTP proxy that can lose answers, and waiting for
// a condition that an event makes true.
import http from "node:http";
import { after, afterEach, before } from "node:test";
import { io } from "socket.io-client";

import { startServer } from "../dist/testing.js";

/**
 * Gives the enclosing describe() a server: `ctx.server` once its `before`
 * hook ran, stopped by its `after` hook (and by startServer's exit hook if the
 * file crashes); its output is printed when a test failed.
 */
export function useServer(options = {}) {
  const ctx = { server: null };
  before(async () => {
    ctx.server = await startServer(options);
  });
  afterEach((t) => {
    if (t.passed === false && ctx.server) process.stderr.write(`--- jobstream output ---\n${ctx.server.output()}\n`);
  });
  after(() => ctx.server?.stop());
  return ctx;
}

const sockets = [];
after(() => {
  for (const socket of sockets) socket.close();
});

/** A stock socket.io-client socket, closed after the file. */
export function connect(url, options) {
  const socket = io(url, { reconnectionDelay: 50, reconnectionDelayMax: 200, ...options });
  sockets.push(socket);
  return socket;
}

/** Resolves when `check()` is true; re-checked by `poke()` (called from event handlers). */
export function until(check, what, timeoutMs = 30_000) {
  let poke = () => {};
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    poke = () => {
      if (check()) {
        clearTimeout(timer);
        resolve();
      }
    };
  });
  poke();
  return { done, poke: () => poke() };
}

/** GET a job's stored events. */
export async function storedEvents(server, jobId) {
  const response = await fetch(`${server.url}/api/v1/jobs/${jobId}/events?since=0&limit=10000`, {
    headers: { authorization: `Bearer ${server.token()}` },
  });
  if (!response.ok) throw new Error(`GET events: ${response.status}`);
  return (await response.json()).events;
}

/**
 * An HTTP proxy to `target` that records every request. `plan(n, request)`
 * (n from 1) may answer `{ status, retryAfter }` itself without forwarding, or
 * `"drop"`: forward, let the server commit, and cut the connection instead of
 * answering.
 */
export async function startProxy(target, plan = () => null) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const n = requests.length + 1;
    const entry = { n, method: req.method, path: req.url, body: body.length ? JSON.parse(body.toString()) : null, outcome: "forwarded" };
    requests.push(entry);
    const decision = plan(n, entry);
    if (decision && decision.status) {
      entry.outcome = `answered ${decision.status}`;
      const headers = { "content-type": "application/json" };
      if (decision.retryAfter !== undefined) headers["retry-after"] = String(decision.retryAfter);
      res.writeHead(decision.status, headers);
      res.end(JSON.stringify({ error: { code: "unavailable", message: "the proxy says no" } }));
      return;
    }
    const headers = { ...req.headers };
    delete headers.host;
    delete headers["content-length"];
    delete headers.connection;
    const upstream = await fetch(`${target}${req.url}`, {
      method: req.method,
      headers,
      body: body.length ? body : undefined,
    });
    const text = Buffer.from(await upstream.arrayBuffer());
    if (decision === "drop") {
      entry.outcome = `dropped ${upstream.status}`;
      req.socket.destroy();
      return;
    }
    res.writeHead(upstream.status, { "content-type": upstream.headers.get("content-type") ?? "application/json" });
    res.end(text);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** Asserts that `seqs` is exactly 1..n (or from..n), each once, in order. */
export function assertConsecutive(assert, seqs, from, to, what) {
  const expected = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  assert.deepEqual(seqs, expected, `${what}: every seq from ${from} to ${to}, once, in order`);
}
