// Example producer: runs a fake CI job against jobstream with the Producer of
// @jobstream/client. It creates a job, moves it through queued and running,
// runs steps in each phase (setup, execution, validation, cleanup) streaming
// coloured build and test logs as step output, reports job progress and
// completes the job with a result. Every write carries a client-made id, so
// the producer's retries (network errors, 503) never write an event twice,
// and log lines go to the server in batches.
//
// Run it (Node 20+):
//   (cd ../../clients/js && npm ci) && npm install
//   jobstream token --sub demo --workspace <id> --scope "subscribe publish"
//   JOBSTREAM_URL=http://127.0.0.1:3000 JOBSTREAM_TOKEN=<token> WORKSPACE_ID=<id> node producer.js
// LINE_DELAY_MS (default 120) sets the pause between two log lines.
import { Producer } from "@jobstream/client";

const BASE_URL = process.env.JOBSTREAM_URL || "http://127.0.0.1:3000";
const TOKEN = process.env.JOBSTREAM_TOKEN;
const WORKSPACE_ID = process.env.WORKSPACE_ID;
const LINE_DELAY_MS = Number(process.env.LINE_DELAY_MS || 120);

const color = { green: "\u001b[32m", yellow: "\u001b[33m", red: "\u001b[31m", cyan: "\u001b[36m", dim: "\u001b[2m", reset: "\u001b[0m" };
const paint = (name, text) => `${color[name]}${text}${color.reset}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The fake pipeline: each step has a phase and the log lines it prints.
const PIPELINE = [
  {
    name: "checkout", phase: "setup",
    lines: [
      "$ git clone --depth 1 https://git.example.com/acme/web.git",
      "Cloning into 'web'...",
      paint("green", "✔ checked out main at 3f9c2e1"),
    ],
  },
  {
    name: "install dependencies", phase: "setup",
    lines: [
      "$ npm ci",
      paint("yellow", "npm warn deprecated inflight@1.0.6: This module is not supported"),
      "added 812 packages, and audited 813 packages in 9s",
      paint("green", "✔ dependencies installed"),
    ],
  },
  {
    name: "build", phase: "execution",
    lines: [
      "$ npm run build",
      `${paint("cyan", "vite")} v5.4.2 building for production...`,
      "transforming (412) src/components/JobList.tsx",
      paint("dim", "dist/index.html                 0.46 kB │ gzip:  0.30 kB"),
      paint("dim", "dist/assets/index-4f1a.js     143.21 kB │ gzip: 46.02 kB"),
      paint("green", "✔ built in 3.84s"),
    ],
  },
  {
    name: "unit tests", phase: "validation",
    lines: [
      "$ npm test",
      ` ${paint("green", "✓")} src/store.test.ts (18 tests) 41ms`,
      ` ${paint("green", "✓")} src/api.test.ts (24 tests) 97ms`,
      { stream: "stderr", text: paint("yellow", "warning: 2 snapshots are obsolete") },
      ` ${paint("green", "✓")} src/components/JobList.test.tsx (12 tests) 211ms`,
      paint("green", " Test Files  3 passed (3)"),
      paint("green", "      Tests  54 passed (54)"),
    ],
  },
  {
    name: "clean workspace", phase: "cleanup",
    lines: ["$ rm -rf node_modules/.cache", paint("green", "✔ workspace cleaned")],
  },
];

async function runStep(producer, jobId, { name, phase, lines }) {
  const { step } = await producer.startStep(jobId, { name, phase, stepType: "command" });
  console.log(`  step "${name}" (${phase}) started`);
  for (const [index, line] of lines.entries()) {
    const { text, stream } = typeof line === "string" ? { text: line, stream: "stdout" } : line;
    await producer.output(jobId, step.id, `${text}\n`, stream); // queued; sent in the next batch
    await producer.stepProgress(jobId, step.id, Math.round(((index + 1) / lines.length) * 100));
    await sleep(LINE_DELAY_MS);
  }
  const { step: done } = await producer.completeStep(jobId, step.id, { status: "completed" });
  console.log(`  step "${name}" completed in ${done.durationMs} ms`);
}

async function main() {
  if (!TOKEN || !WORKSPACE_ID) {
    console.error("Set JOBSTREAM_TOKEN (a token with the publish scope) and WORKSPACE_ID; see the top of this file.");
    process.exit(2);
  }
  const producer = new Producer({ url: BASE_URL, token: TOKEN });
  const job = await producer.createJob({
    workspaceId: WORKSPACE_ID,
    type: "ci.pipeline",
    metadata: { repo: "acme/web", ref: "main", commit: "3f9c2e1" },
  });
  console.log(`job ${job.id} created in workspace ${WORKSPACE_ID}`);

  try {
    await producer.setStatus(job.id, "queued");
    await sleep(LINE_DELAY_MS * 3);
    await producer.setStatus(job.id, "running");

    const started = Date.now();
    for (const [index, step] of PIPELINE.entries()) {
      await runStep(producer, job.id, step);
      await producer.progress(job.id, Math.round(((index + 1) / PIPELINE.length) * 100), `${step.name} done`);
    }

    await producer.setStatus(job.id, {
      status: "completed",
      result: { tests: { passed: 54, failed: 0 }, artifact: "dist/", durationMs: Date.now() - started },
    });
    console.log(`job ${job.id} completed`);
  } catch (err) {
    // Leave no job running behind: mark it failed, then report the cause.
    await producer.setStatus(job.id, { status: "failed", error: err.message }).catch(() => {});
    throw err;
  } finally {
    await producer.close();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
