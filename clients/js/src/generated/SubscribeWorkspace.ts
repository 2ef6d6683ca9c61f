// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * `subscribe:workspace:jobs` `{ workspaceId }`.
 */
export type SubscribeWorkspace = { 
/**
 * The workspace to follow.
 */
workspaceId: string, };
