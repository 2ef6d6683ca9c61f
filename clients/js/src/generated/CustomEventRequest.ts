// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { EventType } from "./EventType.js";
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * `POST /api/v1/jobs/{jobId}/events`: a `job:event` type.
 */
export type CustomEventRequest = { 
/**
 * One of `ai.tool_called`, `ai.tokens_used`, `ai.artifact_created`, `gate.started`, `gate.passed`, `gate.failed`.
 */
type: EventType, 
/**
 * The step it is about, if any.
 */
stepId?: string, 
/**
 * Any JSON object; default `{}`.
 */
payload?: { [key in string]: JsonValue }, };
