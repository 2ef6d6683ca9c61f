// Producer against the real server, directly and through a proxy that loses
// answers or refuses requests: retried writes are stored once, output is
// batched in order, 4xx are final, and queued bytes stay under the bound.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { JobstreamError, Producer } from "../dist/index.js";
import { startProxy, storedEvents, useServer } from "./helpers.js";

describe("Producer", () => {
  const ctx = useServer();

  it("writes each event once when a proxy drops every third answer after the server committed it", async () => {
    const { server } = ctx;
    const proxy = await startProxy(server.url, (n) => (n % 3 === 0 ? "drop" : null));
    try {
      const producer = new Producer({ url: proxy.url, token: server.token(), retry: { baseDelayMs: 5, maxDelayMs: 20 } });
      const job = await producer.createJob({ workspaceId: "ws-drops", type: "build", metadata: { attempt: 1 } });
      await producer.setStatus(job.id, "queued");
      await producer.setStatus(job.id, "running");
      const { step } = await producer.startStep(job.id, { name: "compile", phase: "execution", stepType: "command" });
      const lines = [];
      for (let i = 0; i < 200; i += 1) {
        lines.push(`line ${i}\n`);
        await producer.output(job.id, step.id, `line ${i}\n`, i % 10 === 0 ? "stderr" : "stdout");
        if (i % 25 === 24) await producer.flush(); // several batches, some of them answered to nobody
      }
      await producer.stepProgress(job.id, step.id, 100, "done");
      const { step: done } = await producer.completeStep(job.id, step.id, { status: "completed", tokensInput: 3 });
      await producer.event(job.id, "gate.passed", { gate: "lint" });
      await producer.progress(job.id, 100);
      const completed = await producer.setStatus(job.id, { status: "completed", result: { lines: 200 } });
      await producer.close();

      const dropped = proxy.requests.filter((r) => r.outcome.startsWith("dropped"));
      assert.ok(dropped.length >= 5, `answers dropped: ${dropped.length}`);
      assert.equal(done.status, "completed");
      const events = await storedEvents(server, job.id);
      assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1), "seq 1..n without gaps");
      assert.equal(completed.seq, events.length, "the completion is the last event");
      assert.deepEqual(
        events.filter((e) => e.type === "step.output").map((e) => e.chunk),
        lines,
        "every line once, in order",
      );
      const types = events.filter((e) => e.type !== "step.output").map((e) => e.type);
      assert.deepEqual(types, [
        "job.created", "job.queued", "job.started", "step.started", "step.progress",
        "step.completed", "gate.passed", "job.progress", "job.completed",
      ]);
    } finally {
      await proxy.close();
    }
  });

  it("coalesces output into batches sent in call order, one job's writes after another", async () => {
    const { server } = ctx;
    const proxy = await startProxy(server.url);
    try {
      const producer = new Producer({ url: proxy.url, token: server.token(), maxBatchEvents: 100 });
      const jobs = [];
      for (let j = 0; j < 2; j += 1) {
        const job = await producer.createJob({ workspaceId: "ws-batch", type: "build" });
        await producer.setStatus(job.id, "queued");
        await producer.setStatus(job.id, "running");
        const { step } = await producer.startStep(job.id, { name: "log", phase: "execution", stepType: "command" });
        jobs.push({ job, step });
      }
      // Interleaved calls for two jobs; each job's lines must come back in its own order.
      for (let i = 0; i < 1000; i += 1) {
        for (const { job, step } of jobs) await producer.output(job.id, step.id, `${i}\n`);
      }
      const completions = jobs.map(({ job, step }) => producer.completeStep(job.id, step.id, { status: "completed" }));
      await Promise.all(completions);
      await producer.close();

      const batches = proxy.requests.filter((r) => r.path === "/api/v1/events/batch");
      assert.ok(batches.length >= 20 && batches.length <= 100, `2000 lines in ${batches.length} batches`);
      assert.ok(batches.every((b) => b.body.events.length <= 100), "no batch over maxBatchEvents");
      assert.ok(batches.every((b) => new Set(b.body.events.map((e) => e.jobId)).size === 1), "a batch holds one job");
      for (const { job } of jobs) {
        const events = await storedEvents(server, job.id);
        const chunks = events.filter((e) => e.type === "step.output").map((e) => e.chunk);
        assert.deepEqual(chunks, Array.from({ length: 1000 }, (_, i) => `${i}\n`));
        assert.equal(events.at(-1).type, "step.completed", "the completion follows every line");
      }
    } finally {
      await proxy.close();
    }
  });

  it("retries 503 and 429 after their Retry-After and never retries another 4xx", async () => {
    const { server } = ctx;
    const proxy = await startProxy(server.url, (n) =>
      n === 2 ? { status: 503, retryAfter: 0 } : n === 3 ? { status: 429, retryAfter: 1 } : null,
    );
    try {
      const producer = new Producer({ url: proxy.url, token: server.token(), retry: { baseDelayMs: 5 } });
      const job = await producer.createJob({ workspaceId: "ws-retry", type: "build" });
      const queued = await producer.setStatus(job.id, "queued"); // 503, then 429 for a second, then through
      assert.equal(queued.type, "job.queued");
      const statusCalls = proxy.requests.filter((r) => r.path.endsWith("/status"));
      assert.equal(statusCalls.length, 3);
      assert.ok(statusCalls.every((r) => r.body.eventId === statusCalls[0].body.eventId), "the same eventId at every attempt");

      const before = proxy.requests.length;
      await assert.rejects(producer.setStatus(job.id, "completed"), (err) => {
        assert.ok(err instanceof JobstreamError);
        assert.equal(err.status, 409);
        assert.equal(err.code, "invalid_transition");
        return true;
      });
      assert.equal(proxy.requests.length, before + 1, "a 409 is sent once");
      await producer.close();
      assert.deepEqual((await storedEvents(server, job.id)).map((e) => e.type), ["job.created", "job.queued"]);
    } finally {
      await proxy.close();
    }
  });

  it("sends an output longer than the server's chunk limit as consecutive chunks, and batches within the body limit once escaped", async () => {
    const { server } = ctx;
    const producer = new Producer({ url: server.url, token: server.token() });
    const job = await producer.createJob({ workspaceId: "ws-big", type: "build" });
    await producer.setStatus(job.id, "queued");
    await producer.setStatus(job.id, "running");
    const { step } = await producer.startStep(job.id, { name: "dump", phase: "execution", stepType: "command" });
    const big = "é".repeat(40_000) + "😀".repeat(20_000) + "\n"; // 160,001 bytes
    const escaped = "\x1b".repeat(60_000); // 60,000 bytes, 360,000 once escaped in JSON
    const outputs = ["small before\n", big, ...Array(5).fill(escaped), "small after\n"];
    for (const chunk of outputs) await producer.output(job.id, step.id, chunk);
    await producer.close();

    const chunks = (await storedEvents(server, job.id)).filter((e) => e.type === "step.output").map((e) => e.chunk);
    assert.equal(chunks.join(""), outputs.join(""), "every byte once, in order");
    assert.ok(chunks.every((c) => Buffer.byteLength(c) <= 65_536), "each chunk within the server's limit");
    assert.ok(chunks.length > outputs.length, "the long output was cut");
  });

  it("makes output calls wait while more than maxBufferedBytes are queued", async () => {
    const { server } = ctx;
    // A proxy that answers slowly, so that the queue fills.
    const proxy = await startProxy(server.url);
    const slowFetch = async (...args) => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return fetch(...args);
    };
    try {
      const bound = 16 * 1024;
      const producer = new Producer({ url: proxy.url, token: server.token(), maxBufferedBytes: bound, fetch: slowFetch });
      const job = await producer.createJob({ workspaceId: "ws-pressure", type: "build" });
      await producer.setStatus(job.id, "queued");
      await producer.setStatus(job.id, "running");
      const { step } = await producer.startStep(job.id, { name: "flood", phase: "execution", stepType: "command" });
      let most = 0;
      const line = "x".repeat(1000);
      for (let i = 0; i < 200; i += 1) {
        await producer.output(job.id, step.id, `${line}\n`);
        most = Math.max(most, producer.bufferedBytes);
      }
      await producer.close();
      assert.ok(most <= bound, `at most ${most} bytes queued (bound ${bound})`);
      const outputs = (await storedEvents(server, job.id)).filter((e) => e.type === "step.output");
      assert.equal(outputs.length, 200);
      await assert.rejects(producer.progress(job.id, 1), /closed/);
    } finally {
      await proxy.close();
    }
  });
});
