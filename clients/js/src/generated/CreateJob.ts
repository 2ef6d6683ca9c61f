// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * `POST /api/v1/jobs`.
 */
export type CreateJob = { 
/**
 * A client-chosen id (creation is then idempotent); else the server makes a v7 UUID.
 */
id?: string, 
/**
 * The workspace the job belongs to.
 */
workspaceId: string, 
/**
 * The producer's kind of job.
 */
type: string, 
/**
 * Default 0.
 */
priority?: number, 
/**
 * Any JSON object; default `{}`.
 */
metadata?: { [key in string]: JsonValue }, };
