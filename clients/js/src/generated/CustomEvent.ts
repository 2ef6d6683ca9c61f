// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JsonValue } from "./serde_json/JsonValue.js";

/**
 * `job:event`: a free-form event (`ai.*`, `gate.*`).
 */
export type CustomEvent = { 
/**
 * The producer's object.
 */
payload: { [key in string]: JsonValue }, };
