// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * `subscribe:job` `{ jobId, since? }`.
 */
export type SubscribeJob = { 
/**
 * The job to follow.
 */
jobId: string, 
/**
 * Replay every event with `seq > since` first.
 */
since?: number, };
