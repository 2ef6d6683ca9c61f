// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { OutputStream } from "./OutputStream.js";

/**
 * `POST …/steps/{stepId}/output`.
 */
export type StepOutputRequest = { 
/**
 * The text. Its size limit is the server's (`413` over it).
 */
chunk: string, 
/**
 * Default `stdout`.
 */
stream?: OutputStream, };
