// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { OutputStream } from "./OutputStream.js";

/**
 * `step:output`: a chunk of a step's live output.
 */
export type StepOutput = { 
/**
 * The text, as the producer sent it (it may hold ANSI escapes and partial lines).
 */
chunk: string, 
/**
 * Which stream it came from.
 */
stream: OutputStream, };
