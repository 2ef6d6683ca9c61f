// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobStatus } from "./JobStatus.js";
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * `job:status`: a status transition.
 */
export type StatusChanged = { 
/**
 * The new status.
 */
status: JobStatus, 
/**
 * The status before.
 */
previousStatus: JobStatus, 
/**
 * The job's result, on `completed` only.
 */
result?: JsonValue, 
/**
 * Why, on `failed` and `cancelled` only.
 */
error?: string, };
