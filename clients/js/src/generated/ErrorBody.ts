// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { ErrorCode } from "./ErrorCode.js";

/**
 * `{ "code": "…", "message": "…" }`: what a client is told of an error.
 */
export type ErrorBody = { 
/**
 * The stable code.
 */
code: ErrorCode, 
/**
 * A sentence a person can act on; never internal error text.
 */
message: string, };
