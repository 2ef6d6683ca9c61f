// Example subscriber: watches every job of a jobstream workspace with
// followWorkspace from @jobstream/client and prints each event as a readable
// line. After a reconnect (network loss, server restart, a token refresh) it
// resumes each job it was following after the last seq it printed, so that
// nothing is lost and nothing is printed twice.
//
// Run it (Node 20+):
//   (cd ../../clients/js && npm ci) && npm install
//   jobstream token --sub demo --workspace <id> --scope "subscribe publish"
//   JOBSTREAM_URL=http://127.0.0.1:3000 JOBSTREAM_TOKEN=<token> WORKSPACE_ID=<id> node subscriber.js
// then run producer.js in another terminal. Stop the server and start it again
// to see the reconnect at work.
import { followWorkspace } from "@jobstream/client";
import { io } from "socket.io-client";

const SERVER_URL = process.env.JOBSTREAM_URL || "http://127.0.0.1:3000";
const TOKEN = process.env.JOBSTREAM_TOKEN;
const WORKSPACE_ID = process.env.WORKSPACE_ID;

const short = (id) => (id ? id.slice(-8) : "-");

/** One line for an event; `type` narrows it to its own fields. */
function describe(e) {
  switch (e.type) {
    case "job.created": return `created (${e.job.type})`;
    case "job.queued": case "job.started": case "job.completed": case "job.failed": case "job.cancelled":
      return `${e.previousStatus} → ${e.status}${e.error ? `: ${e.error}` : ""}${
        e.result !== undefined ? ` result ${JSON.stringify(e.result)}` : ""}`;
    case "job.progress": return `progress ${e.progress}%${e.message ? ` ${e.message}` : ""}`;
    case "step.started": return `step ${short(e.stepId)} "${e.name}" started (${e.phase}, ${e.stepType})`;
    case "step.progress": return `step ${short(e.stepId)} ${e.progress}%${e.message ? ` ${e.message}` : ""}`;
    case "step.output": return `step ${short(e.stepId)} ${e.stream}| ${e.chunk.replace(/\n$/, "")}`;
    case "step.completed": case "step.failed":
      return `step ${short(e.stepId)} ${e.status} in ${e.durationMs} ms${e.error ? `: ${e.error}` : ""}`;
    default: return `${e.type} ${JSON.stringify(e.payload)}`;
  }
}

if (!TOKEN || !WORKSPACE_ID) {
  console.error("Set JOBSTREAM_TOKEN and WORKSPACE_ID; see the top of this file.");
  process.exit(2);
}
const socket = io(SERVER_URL, { auth: { token: TOKEN } });
followWorkspace(socket, WORKSPACE_ID, {
  onSnapshot: (jobs) => {
    console.log(`subscribed to workspace ${WORKSPACE_ID}: ${jobs.length} recent job(s)`);
    for (const job of jobs) console.log(`  job ${short(job.id)} ${job.type} ${job.status} ${job.progress}% (seq ${job.lastSeq})`);
  },
  onEvent: (event) => {
    const time = event.timestamp.slice(11, 23);
    console.log(`${time} job ${short(event.jobId)} #${String(event.seq).padStart(3)} ${describe(event)}`);
  },
  onState: (state, detail) => console.log(`[${state}${detail ? `: ${detail}` : ""}]`),
  onError: (error) => {
    console.error(`! ${error.message}`);
    if (error.fatal) process.exit(1);
  },
});
socket.on("connect_error", (err) => {
  if (err.message.startsWith("unauthorized")) {
    console.error(`cannot connect: ${err.message}`);
    process.exit(1); // retrying will not help
  }
});
