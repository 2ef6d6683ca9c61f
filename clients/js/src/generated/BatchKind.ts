// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * The kinds of write a batch item can be.
 */
export type BatchKind = "status" | "progress" | "step" | "step_progress" | "output" | "step_complete" | "event";
