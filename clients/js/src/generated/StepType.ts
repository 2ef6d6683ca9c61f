// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * What kind of work a step does.
 */
export type StepType = "command" | "ai_action" | "gate" | "artifact";
