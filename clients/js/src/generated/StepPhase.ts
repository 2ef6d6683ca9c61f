// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * Which part of a job a step belongs to.
 */
export type StepPhase = "setup" | "execution" | "validation" | "cleanup";
