// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobSnapshot } from "./JobSnapshot.js";

/**
 * The ok ack of `subscribe:job`.
 */
export type JobSubscribed = { 
/**
 * Always true.
 */
ok: true, 
/**
 * `job:{id}`.
 */
room: string, 
/**
 * The job with its steps.
 */
job: JobSnapshot, };
