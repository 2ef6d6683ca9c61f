// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobSnapshot } from "./JobSnapshot.js";

/**
 * `job:created`: the job as it was created.
 */
export type JobCreated = { 
/**
 * The snapshot right after creation, without `steps`.
 */
job: JobSnapshot, };
