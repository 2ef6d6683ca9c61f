// Compile-time checks (`npm run typecheck`): the generated types accept the
// JSON the server sends (the literals of crates/protocol's round-trip tests)
// and refuse what it never sends. Nothing here runs.
import { io, type Socket } from "socket.io-client";

import type {
  AnyEvent,
  ClientToServerEvents,
  EventOf,
  JobSnapshot,
  ServerToClientEvents,
  StatusRequest,
  SubscribeJob,
} from "../src/index.js";

export const snapshot = {
  id: "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
  workspaceId: "ws-1",
  type: "build",
  status: "running",
  priority: 0,
  progress: 40,
  metadata: { branch: "main" },
  result: null,
  error: null,
  createdAt: "2026-11-24T10:00:00.000Z",
  updatedAt: "2026-11-24T10:00:05.250Z",
  startedAt: "2026-11-24T10:00:01.000Z",
  completedAt: null,
  lastSeq: 6,
  steps: [
    {
      id: "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
      jobId: "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
      name: "compile",
      phase: "execution",
      stepType: "command",
      status: "running",
      startedAt: "2026-11-24T10:00:02.000Z",
      completedAt: null,
      durationMs: null,
      error: null,
      tokensInput: null,
      tokensOutput: null,
    },
  ],
} satisfies JobSnapshot;

export const output = {
  eventId: "0193b0a4-3c1e-7c3a-9f00-000000000001",
  seq: 7,
  type: "step.output",
  jobId: "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
  workspaceId: "ws-1",
  stepId: "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
  timestamp: "2026-11-24T10:00:00.123Z",
  chunk: "\u001b[32mok\u001b[0m\n",
  stream: "stderr",
} satisfies EventOf<"step:output">;

export const completed = {
  eventId: "0193b0a4-3c1e-7c3a-9f00-000000000002",
  seq: 4,
  type: "job.completed",
  jobId: "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
  workspaceId: "ws-1",
  stepId: null,
  timestamp: "2026-11-24T10:00:01.000Z",
  status: "completed",
  previousStatus: "running",
  result: { artifacts: 2 },
} satisfies EventOf<"job:status">;

export const stepFailed = {
  eventId: "0193b0a4-3c1e-7c3a-9f00-000000000003",
  seq: 9,
  type: "step.failed",
  jobId: "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
  workspaceId: "ws-1",
  stepId: "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
  timestamp: "2026-11-24T10:00:02.500Z",
  status: "failed",
  durationMs: 1500,
  error: "exit code 2",
  tokensInput: 10,
  tokensOutput: 20,
} satisfies AnyEvent;

// `type` narrows the union to the event's own fields.
export function describe(event: AnyEvent): string {
  switch (event.type) {
    case "step.output":
      return event.chunk;
    case "job.completed":
      return `${event.previousStatus} → ${event.status}`;
    case "gate.passed":
      return JSON.stringify(event.payload);
    default:
      return event.type;
  }
}

// seq is a number, as JSON.parse gives it, not a bigint.
// @ts-expect-error a bigint seq is not the wire shape
export const bigSeq = { ...output, seq: 7n } satisfies EventOf<"step:output">;
// @ts-expect-error snake_case field names are not the wire shape
export const snake = { job_id: "x" } satisfies SubscribeJob;
// @ts-expect-error an unknown status is refused
export const badStatus = { status: "done" } satisfies StatusRequest;
// @ts-expect-error a status event does not carry a chunk
export const mixed = { ...completed, chunk: "x" } satisfies EventOf<"job:status">;

// A typed socket: event names, payloads and acks are checked.
export function typedSocket(url: string): void {
  const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(url);
  socket.on("step:output", (event) => event.chunk.length);
  socket.emit("subscribe:job", { jobId: "j", since: 3 }, (ack) => (ack.ok ? ack.job.lastSeq : ack.error.code));
  // @ts-expect-error subscribe:job needs a jobId
  socket.emit("subscribe:job", { since: 3 }, () => {});
}
