// followJob and followWorkspace against the real server with the stock
// socket.io-client: every event once, in seq order, across forced
// disconnects, a server restart and a token expiry.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { followJob, followWorkspace, Producer } from "../dist/index.js";
import { startServer } from "../dist/testing.js";
import { assertConsecutive, connect, until, useServer } from "./helpers.js";

const token = (server, claims) => server.token({ scope: "subscribe", ...claims });

/** Starts a server on `port`, retrying while the previous one still holds it. */
async function startOnPort(options) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await startServer(options);
    } catch (err) {
      if (attempt >= 20) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
    }
  }
}

describe("followJob", () => {
  const ctx = useServer();

  it("delivers every event of a job once and in order while its connection is cut again and again", async () => {
    const { server } = ctx;
    const producer = new Producer({ url: server.url, token: server.token() });
    const job = await producer.createJob({ workspaceId: "ws-cuts", type: "build" });
    const socket = connect(server.url, { auth: { token: token(server) } });
    const seqs = [];
    const states = [];
    let last = Infinity;
    const end = until(() => seqs.at(-1) === last, "the job's last event");
    let lives = until(() => states.includes("live"), "the first subscription");
    const unfollow = followJob(socket, job.id, {
      since: 0,
      onEvent: (event) => {
        seqs.push(event.seq);
        end.poke();
      },
      onState: (state) => {
        states.push(state);
        lives.poke();
      },
    });
    await producer.setStatus(job.id, "queued");
    await producer.setStatus(job.id, "running");
    const { step } = await producer.startStep(job.id, { name: "compile", phase: "execution", stepType: "command" });
    for (let round = 1; round <= 6; round += 1) {
      await lives.done; // cut a live subscription each time
      for (let line = 0; line < 50; line += 1) await producer.output(job.id, step.id, `round ${round} line ${line}\n`);
      socket.io.engine.close(); // the transport drops; socket.io-client reconnects by itself
      lives = until(() => states.filter((s) => s === "live").length > round, `live again after cut ${round}`);
      await producer.flush(); // committed while the socket is away or resuming
    }
    await producer.completeStep(job.id, step.id, { status: "completed" });
    last = (await producer.setStatus(job.id, { status: "completed", result: { ok: true } })).seq;
    end.poke();
    await end.done;
    unfollow();
    await producer.close();
    assertConsecutive(assert, seqs, 1, last, "followJob");
    assert.ok(states.filter((s) => s === "disconnected").length >= 6, `disconnects reported: ${states.join(",")}`);
    assert.equal(states.at(-1), "closed");
  });

  it("hands each Socket.IO event to its typed handler and starts after the snapshot without since", async () => {
    const { server } = ctx;
    const producer = new Producer({ url: server.url, token: server.token() });
    const job = await producer.createJob({ workspaceId: "ws-typed", type: "build" });
    await producer.setStatus(job.id, "queued");
    const socket = connect(server.url, { auth: { token: token(server) } });
    const statuses = [];
    const all = [];
    let snapshot = null;
    const live = until(() => snapshot !== null, "the snapshot");
    const end = until(() => statuses.includes("cancelled"), "the cancel");
    const unfollow = followJob(socket, job.id, {
      onSnapshot: (job) => {
        snapshot = job;
        live.poke();
      },
      onEvent: (event) => all.push(event.seq),
      on: {
        "job:status": (event) => {
          statuses.push(event.status);
          end.poke();
        },
      },
    });
    await live.done;
    assert.equal(snapshot.lastSeq, 2);
    await producer.progress(job.id, 10, "warming up");
    await producer.setStatus(job.id, { status: "cancelled", error: "not needed" });
    await end.done;
    unfollow();
    assert.deepEqual(statuses, ["cancelled"]);
    assert.deepEqual(all, [3, 4]);
  });

  it("closes with a fatal not_found for a job that does not exist, and invalid_cursor for a since past the job", async () => {
    const { server } = ctx;
    const socket = connect(server.url, { auth: { token: token(server) } });
    const producer = new Producer({ url: server.url, token: server.token() });
    const job = await producer.createJob({ workspaceId: "ws-refused", type: "build" });
    for (const [jobId, since, code] of [
      [randomUUID(), undefined, "not_found"],
      [job.id, 5, "invalid_cursor"],
    ]) {
      const errors = [];
      const states = [];
      const closed = until(() => states.includes("closed"), `${code} closes the follower`);
      followJob(socket, jobId, {
        since,
        onError: (error) => errors.push(error),
        onState: (state) => {
          states.push(state);
          closed.poke();
        },
      });
      await closed.done;
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, code);
      assert.equal(errors[0].fatal, true);
      assert.equal(errors[0].jobId, jobId);
    }
  });

  it("resumes after the server closes the socket at the token's expiry, with the fresh token auth gives", async () => {
    const { server } = ctx;
    const producer = new Producer({ url: server.url, token: server.token() });
    const job = await producer.createJob({ workspaceId: "ws-expiry", type: "build" });
    let minted = 0;
    const socket = connect(server.url, {
      auth: (cb) => {
        minted += 1;
        // The first token ends in about two seconds; the ones after last.
        const ttl = minted === 1 ? 2 : 600;
        cb({ token: token(server, { exp: Math.floor(Date.now() / 1000) + ttl }) });
      },
    });
    const seqs = [];
    const states = [];
    let last = Infinity;
    const expired = until(() => states.includes("disconnected"), "the close at the token's expiry");
    const end = until(() => seqs.at(-1) === last, "the job's last event");
    const unfollow = followJob(socket, job.id, {
      since: 0,
      onEvent: (event) => {
        seqs.push(event.seq);
        end.poke();
      },
      onState: (state) => {
        states.push(state);
        expired.poke();
      },
    });
    await producer.setStatus(job.id, "queued");
    for (let i = 0; i < 20; i += 1) await producer.progress(job.id, i);
    await expired.done;
    for (let i = 20; i < 40; i += 1) await producer.progress(job.id, i);
    last = (await producer.setStatus(job.id, "cancelled")).seq;
    end.poke();
    await end.done;
    unfollow();
    assertConsecutive(assert, seqs, 1, last, "followJob across a token refresh");
    assert.ok(minted >= 2, `auth called ${minted} times`);
    assert.ok(states.lastIndexOf("live") > states.indexOf("disconnected"), `states: ${states.join(",")}`);
  });
});

describe("followWorkspace", () => {
  const ctx = useServer();

  it("delivers every event of every job of a workspace once, in order per job, across forced disconnects", async () => {
    const { server } = ctx;
    const workspaceId = "ws-wide";
    const producer = new Producer({ url: server.url, token: server.token() });
    const socket = connect(server.url, { auth: { token: token(server) } });
    const seqs = new Map();
    const lastOf = new Map();
    let lives = 0;
    let ready = until(() => lives > 0, "the workspace subscription");
    const done = until(
      () => lastOf.size === 3 && [...lastOf].every(([job, last]) => (seqs.get(job) ?? []).at(-1) === last),
      "every job's last event",
    );
    const unfollow = followWorkspace(socket, workspaceId, {
      onEvent: (event) => {
        if (!seqs.has(event.jobId)) seqs.set(event.jobId, []);
        seqs.get(event.jobId).push(event.seq);
        done.poke();
      },
      onState: (state) => {
        if (state === "live") lives += 1;
        ready.poke();
      },
    });
    await ready.done;
    const jobs = [];
    for (let i = 0; i < 3; i += 1) jobs.push(await producer.createJob({ workspaceId, type: `build-${i}` }));
    const created = until(() => jobs.every((job) => seqs.has(job.id)), "every job.created");
    const poll = setInterval(() => created.poke(), 10);
    await created.done;
    clearInterval(poll);
    const steps = [];
    for (const job of jobs) {
      await producer.setStatus(job.id, "queued");
      await producer.setStatus(job.id, "running");
      steps.push((await producer.startStep(job.id, { name: "test", phase: "validation", stepType: "command" })).step);
    }
    for (let round = 1; round <= 5; round += 1) {
      await ready.done; // cut a live subscription each time
      for (const [i, job] of jobs.entries()) {
        for (let line = 0; line < 20; line += 1) await producer.output(job.id, steps[i].id, `${round}:${line}\n`);
      }
      socket.io.engine.close();
      ready = until(() => lives > round, `live again after cut ${round}`);
      await producer.flush();
    }
    await ready.done;
    for (const [i, job] of jobs.entries()) {
      await producer.completeStep(job.id, steps[i].id, { status: "completed" });
      lastOf.set(job.id, (await producer.setStatus(job.id, "completed")).seq);
    }
    done.poke();
    await done.done;
    unfollow();
    for (const job of jobs) assertConsecutive(assert, seqs.get(job.id), 1, lastOf.get(job.id), `job ${job.type}`);
    assert.equal(lives, 6, "one subscription and five resumes");
  });
});

describe("followJob across a server restart", () => {
  it("gets every event once, in order, when the server stops and starts again on its port", async () => {
    const dir = mkdtempSync(join(tmpdir(), "jobstream-client-"));
    const databaseUrl = `sqlite://${join(dir, "jobstream.db")}?mode=rwc`;
    let server = await startServer({ databaseUrl });
    const { secret, port } = server;
    try {
      const producer = new Producer({ url: server.url, token: server.token(), retry: { baseDelayMs: 50, maxDelayMs: 200 } });
      const job = await producer.createJob({ workspaceId: "ws-restart", type: "deploy" });
      const socket = connect(server.url, { auth: { token: token(server) } });
      const seqs = [];
      let last = Infinity;
      const first = until(() => seqs.length >= 30, "the events before the restart");
      const end = until(() => seqs.at(-1) === last, "the job's last event");
      const unfollow = followJob(socket, job.id, {
        since: 0,
        onEvent: (event) => {
          seqs.push(event.seq);
          first.poke();
          end.poke();
        },
      });
      for (let i = 0; i < 30; i += 1) await producer.progress(job.id, i);
      await first.done;
      await server.stop();
      // Writes made while the server is away wait in the producer's retries.
      const writes = (async () => {
        for (let i = 30; i < 60; i += 1) await producer.progress(job.id, i);
        return (await producer.setStatus(job.id, "cancelled")).seq;
      })();
      server = await startOnPort({ databaseUrl, secret, port });
      last = await writes;
      end.poke();
      await end.done;
      unfollow();
      await producer.close();
      assertConsecutive(assert, seqs, 1, last, "followJob across a restart");
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
