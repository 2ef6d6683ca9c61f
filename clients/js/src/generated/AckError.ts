// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { ErrorBody } from "./ErrorBody.js";

/**
 * `{ ok: false, error }`.
 */
export type AckError = { 
/**
 * Always false.
 */
ok: false, 
/**
 * What went wrong.
 */
error: ErrorBody, };
