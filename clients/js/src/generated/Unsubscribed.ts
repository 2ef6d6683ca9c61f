// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * The ok ack of the unsubscribe events: `{ ok: true }`.
 */
export type Unsubscribed = { 
/**
 * Always true.
 */
ok: true, };
