// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { EventType } from "./EventType.js";
import type { JobStatus } from "./JobStatus.js";

/** The Socket.IO event that carries each stored event type (CONTRACT §1). */
export const SOCKET_EVENT_OF_TYPE = {
  "job.created": "job:created",
  "job.queued": "job:status",
  "job.started": "job:status",
  "job.completed": "job:status",
  "job.failed": "job:status",
  "job.cancelled": "job:status",
  "job.progress": "job:progress",
  "step.started": "step:started",
  "step.progress": "step:progress",
  "step.output": "step:output",
  "step.completed": "step:completed",
  "step.failed": "step:completed",
  "ai.tool_called": "job:event",
  "ai.tokens_used": "job:event",
  "ai.artifact_created": "job:event",
  "gate.started": "job:event",
  "gate.passed": "job:event",
  "gate.failed": "job:event",
} as const satisfies Record<EventType, string>;

/** Every Socket.IO event the server sends, in the contract's order. */
export const SOCKET_EVENTS = ["job:created", "job:status", "job:progress", "step:started", "step:progress", "step:output", "step:completed", "job:event"] as const;

/** Job statuses that end a job. */
export const TERMINAL_STATUSES = ["completed", "failed", "cancelled"] as const satisfies readonly JobStatus[];

/** Most events accepted in one `POST /api/v1/events/batch`. */
export const MAX_BATCH_EVENTS = 1000;

/** Most jobs in a `subscribe:workspace:jobs` ack. */
export const WORKSPACE_SNAPSHOT_LIMIT = 100;
