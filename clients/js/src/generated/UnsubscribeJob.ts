// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * `unsubscribe:job` `{ jobId }`.
 */
export type UnsubscribeJob = { 
/**
 * The job to stop following.
 */
jobId: string, };
