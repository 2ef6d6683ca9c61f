// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * `step:progress`. The step id is the event's `stepId`.
 */
export type StepProgress = { 
/**
 * 0–100.
 */
progress: number, 
/**
 * What is happening, for people.
 */
message?: string, };
