// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { CustomEvent } from "./CustomEvent.js";
import type { EventType } from "./EventType.js";
import type { JobCreated } from "./JobCreated.js";
import type { JobProgress } from "./JobProgress.js";
import type { StatusChanged } from "./StatusChanged.js";
import type { StepFinished } from "./StepFinished.js";
import type { StepOutput } from "./StepOutput.js";
import type { StepProgress } from "./StepProgress.js";
import type { StepStarted } from "./StepStarted.js";
import type { Timestamp } from "./Timestamp.js";

/**
 * One stored event. `seq` is per job, from 1, without gaps.
 */
export type Event = { 
/**
 * Unique id of the event (UUID v7).
 */
eventId: string, 
/**
 * Position in the job's stream: the job's n-th committed event has `seq = n`.
 */
seq: number, 
/**
 * The stored type; decides which fields follow and which Socket.IO event carries it.
 */
type: EventType, 
/**
 * The job.
 */
jobId: string, 
/**
 * The job's workspace.
 */
workspaceId: string, 
/**
 * The step the event is about, or null for job-level events.
 */
stepId: string | null, 
/**
 * When the event was committed (server clock).
 */
timestamp: Timestamp, } & (JobCreated | StatusChanged | StepStarted | StepFinished | StepOutput | JobProgress | StepProgress | CustomEvent);
