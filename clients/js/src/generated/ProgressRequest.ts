// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * `POST …/progress` of a job or a step.
 */
export type ProgressRequest = { 
/**
 * 0–100.
 */
progress: number, 
/**
 * What is happening, for people.
 */
message?: string, };
