// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobStatus } from "./JobStatus.js";
import type { StepSnapshot } from "./StepSnapshot.js";
import type { Timestamp } from "./Timestamp.js";
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * The state of a job after its event `lastSeq`.
 */
export type JobSnapshot = { 
/**
 * The job id.
 */
id: string, 
/**
 * Its workspace.
 */
workspaceId: string, 
/**
 * The producer's kind of job (`"build"`, `"deploy"`, …).
 */
type: string, 
/**
 * Current status.
 */
status: JobStatus, 
/**
 * The producer's priority (default 0).
 */
priority: number, 
/**
 * Last reported progress, 0–100.
 */
progress: number, 
/**
 * The producer's object, as given at creation.
 */
metadata: JsonValue, 
/**
 * The result given on completion, else null.
 */
result: JsonValue | null, 
/**
 * The error given on failure or cancellation, else null.
 */
error: string | null, 
/**
 * When the job was created.
 */
createdAt: Timestamp, 
/**
 * When its newest event was committed.
 */
updatedAt: Timestamp, 
/**
 * When it became `running`.
 */
startedAt: Timestamp | null, 
/**
 * When it reached a terminal status.
 */
completedAt: Timestamp | null, 
/**
 * The seq of its newest event: a subscriber with this snapshot needs `seq > lastSeq` next.
 */
lastSeq: number, 
/**
 * Its steps in creation order, where the answer includes them.
 */
steps?: Array<StepSnapshot>, };
