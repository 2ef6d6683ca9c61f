// startServer: a jobstream server for integration tests, on a free port, an
// in-memory SQLite database and a random secret, with a token minter. Node only.

import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** What `startServer` accepts. */
export interface StartServerOptions {
  /** The `jobstream` binary. Default: `JOBSTREAM_BIN`, then `jobstream` on `PATH`, then this repository's `target/release`, then `target/debug`. */
  bin?: string;
  /** The port on 127.0.0.1 (default 0: any free port); give the previous `port` to restart a server where its clients reconnect. */
  port?: number;
  /** The database (default `sqlite::memory:`, gone with the process). */
  databaseUrl?: string;
  /** The HS256 secret (default: 32 random bytes). */
  secret?: string;
  /** More environment for the server (e.g. `{ JOBSTREAM_MAX_CHUNK_BYTES: "1024" }`). */
  env?: Record<string, string>;
  /** More arguments after `serve` (e.g. `["--demo"]`). */
  args?: string[];
  /** How long to wait for the server to listen, in ms (default 20000). */
  readyTimeoutMs?: number;
}

/** Claims of a token minted by {@link TestServer.token}; all optional. */
export interface TokenClaims {
  /** Who (default `"test"`). */
  sub?: string;
  /** Readable and writable workspaces (default `["*"]`, all). */
  workspaces?: string[];
  /** Space-separated scopes (default `"subscribe publish"`). */
  scope?: string;
  /** Expiry, seconds since the epoch (default: one hour from now). */
  exp?: number;
  /** Anything else goes into the token as given. */
  [claim: string]: unknown;
}

/** A running server. */
export interface TestServer {
  /** `http://127.0.0.1:PORT`: the Socket.IO, HTTP API and SSE base URL. */
  url: string;
  /** The port it listens on. */
  port: number;
  /** The process id. */
  pid: number;
  /** The secret tokens are signed with. */
  secret: string;
  /** A signed HS256 token (CONTRACT §4): `token()` may read and write every workspace for an hour. */
  token(claims?: TokenClaims): string;
  /** What the server printed so far (stdout and stderr), for a failed test's report. */
  output(): string;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s); resolves when it has exited. Safe to call twice. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
let hooked = false;

/** Kills every server still running when this process ends, however it ends. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const killAll = () => {
    for (const child of running) child.kill("SIGKILL");
    running.clear();
  };
  process.on("exit", killAll);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const onSignal = () => {
      killAll();
      process.removeListener(signal, onSignal);
      // Only this hook was listening: end the way the signal would have.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

const isFile = (path: string) => {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
};

/** The binary startServer runs, by the order documented on {@link StartServerOptions.bin}. */
export function findBinary(explicit?: string): string {
  const candidates: string[] = [];
  if (explicit) candidates.push(explicit);
  else {
    if (process.env.JOBSTREAM_BIN) candidates.push(process.env.JOBSTREAM_BIN);
    for (const dir of (process.env.PATH ?? "").split(delimiter)) if (dir) candidates.push(join(dir, "jobstream"));
    const targets = [process.env.CARGO_TARGET_DIR, repoTarget()].filter((t): t is string => Boolean(t));
    for (const target of targets) candidates.push(join(target, "release", "jobstream"), join(target, "debug", "jobstream"));
  }
  const found = candidates.find(isFile);
  if (!found) {
    throw new Error(
      `jobstream binary not found (looked at ${candidates.join(", ")}); build it with \`cargo build --release\`, or pass { bin } or set JOBSTREAM_BIN`,
    );
  }
  return found;
}

/** `target/` of the repository this package sits in (clients/js/dist → the root), if any. */
function repoTarget(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i += 1) {
    if (existsSync(join(dir, "Cargo.toml")) && existsSync(join(dir, "crates"))) return join(dir, "target");
    const parent = resolve(dir, "..");
    if (parent === dir) break;
    dir = parent;
  }
  return undefined;
}

const base64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** Signs `claims` with HS256 (RFC 7519 with the JWS compact form of RFC 7515). */
export function signToken(secret: string, claims: TokenClaims = {}): string {
  const body = {
    sub: "test",
    workspaces: ["*"],
    scope: "subscribe publish",
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...claims,
  };
  const head = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(JSON.stringify(body))}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/**
 * Starts `jobstream serve` on `127.0.0.1:0` with an in-memory SQLite database
 * and a random secret, and resolves once it prints `jobstream listening on
 * URL` and `/readyz` answers 200. The process is killed when this process
 * exits (normally, by an uncaught error, or by SIGINT/SIGTERM/SIGHUP), so a
 * failing test leaves none behind; call `stop()` in an `after` hook to end it
 * sooner.
 */
export async function startServer(options: StartServerOptions = {}): Promise<TestServer> {
  const bin = findBinary(options.bin);
  const secret = options.secret ?? randomBytes(32).toString("hex");
  const databaseUrl = options.databaseUrl ?? "sqlite::memory:";
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  hookExit();
  const child = spawn(bin, ["serve", "--listen", `127.0.0.1:${options.port ?? 0}`, "--database-url", databaseUrl, ...(options.args ?? [])], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...options.env, JOBSTREAM_JWT_SECRET: secret },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const log: string[] = [];
  let exited: Promise<void> = new Promise((resolveExit) => {
    child.once("exit", (code, signal) => {
      running.delete(child);
      log.push(`--- jobstream exited (code ${code}, signal ${signal}) ---`);
      resolveExit();
    });
  });

  const url = await new Promise<string>((resolveUrl, reject) => {
    let pending = "";
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${why}\n--- jobstream output ---\n${log.join("\n")}`));
    };
    const timer = setTimeout(() => fail(`jobstream did not listen within ${readyTimeoutMs} ms`), readyTimeoutMs);
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (data: string) => {
      pending += data;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        log.push(line);
        const match = /jobstream listening on (http:\/\/[^\s]+)/.exec(line.replace(/\x1b\[[0-9;]*m/g, ""));
        if (match) {
          clearTimeout(timer);
          resolveUrl(match[1]!);
        }
      }
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (data: string) => log.push(data.replace(/\n$/, "")));
    child.once("error", (err) => fail(`could not start ${bin}: ${err.message}`));
    child.once("exit", () => fail("jobstream exited before it was ready"));
  });

  // The server does not keep the test process alive: it is killed when the process ends.
  child.unref();
  (child.stdout as unknown as { unref?: () => void }).unref?.();
  (child.stderr as unknown as { unref?: () => void }).unref?.();

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    const ready = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`jobstream at ${url} not ready within ${readyTimeoutMs} ms\n${log.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  let stopping: Promise<void> | null = null;
  return {
    url,
    port: Number(new URL(url).port),
    pid: child.pid ?? -1,
    secret,
    token: (claims) => signToken(secret, claims),
    output: () => log.join("\n"),
    stop: () => {
      if (!stopping) {
        stopping = (async () => {
          if (child.exitCode === null && child.signalCode === null) {
            const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
            child.kill("SIGTERM");
            await exited;
            clearTimeout(killer);
          }
          exited = Promise.resolve();
        })();
      }
      return stopping;
    },
  };
}
