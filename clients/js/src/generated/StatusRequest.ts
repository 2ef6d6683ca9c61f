// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobStatus } from "./JobStatus.js";
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * `POST /api/v1/jobs/{jobId}/status`.
 */
export type StatusRequest = { 
/**
 * The status to move to.
 */
status: JobStatus, 
/**
 * With `completed` only.
 */
result?: JsonValue, 
/**
 * With `failed` or `cancelled` only.
 */
error?: string, };
