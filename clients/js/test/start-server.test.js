// startServer: a ready server on a free port with tokens it accepts, stopped
// by stop() (twice is harmless) and by the end of the process that started
// it, even when that process fails.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { startServer } from "../dist/testing.js";

const TESTING = fileURLToPath(new URL("../dist/testing.js", import.meta.url));

/** Whether `pid` is a live process (a zombie waiting to be reaped is not). */
function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Resolves once `pid` is gone; fails after `ms`. */
async function gone(pid, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > deadline) throw new Error(`process ${pid} is still running`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Runs `code` in a new node process that first starts a server and prints its pid; resolves with it and the exit. */
function runScript(code) {
  const script = `import { startServer } from ${JSON.stringify(TESTING)};
const server = await startServer();
console.log("pid " + server.pid);
${code}`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  return new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      const match = /pid (\d+)/.exec(out);
      resolve({ pid: match ? Number(match[1]) : null, code, signal, err });
    });
  });
}

describe("startServer", () => {
  it("serves on a free port with tokens it accepts and scopes it checks, and stops twice without harm", async () => {
    const server = await startServer();
    try {
      assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.ok(server.port > 0);
      const create = (token) =>
        fetch(`${server.url}/api/v1/jobs`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ workspaceId: "ws-a", type: "build" }),
        });
      assert.equal((await create(server.token())).status, 201);
      assert.equal((await create(server.token({ scope: "subscribe" }))).status, 403);
      assert.equal((await create(server.token({ workspaces: ["ws-b"] }))).status, 403);
      assert.equal((await create(server.token({ exp: Math.floor(Date.now() / 1000) - 10 }))).status, 401);
    } finally {
      await server.stop();
      await server.stop();
    }
    assert.equal(alive(server.pid), false);
  });

  it("leaves no server behind when the process that started it throws", async () => {
    const run = await runScript(`throw new Error("a failing test");`);
    assert.notEqual(run.code, 0);
    assert.ok(run.pid, `the script printed its server's pid: ${run.err}`);
    await gone(run.pid);
  });

  it("leaves no server behind when the process that started it is interrupted", async () => {
    const run = await runScript(`process.kill(process.pid, "SIGTERM"); await new Promise(() => setInterval(() => {}, 1000));`);
    assert.equal(run.signal, "SIGTERM");
    assert.ok(run.pid, `the script printed its server's pid: ${run.err}`);
    await gone(run.pid);
  });

  it("leaves no server behind when the process that started it exits without stopping it", async () => {
    const run = await runScript(`process.exit(0);`);
    assert.equal(run.code, 0);
    await gone(run.pid);
  });

  it("lets the process that started it end by itself when nothing else is left to do, and leaves no server behind", async () => {
    const run = await runScript(`/* no stop(), no exit: the event loop just runs dry */`);
    assert.equal(run.code, 0);
    assert.ok(run.pid, `the script printed its server's pid: ${run.err}`);
    await gone(run.pid);
  });
});
