// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { JobSnapshot } from "./JobSnapshot.js";

/**
 * The ok ack of `subscribe:workspace:jobs`.
 */
export type WorkspaceSubscribed = { 
/**
 * Always true.
 */
ok: true, 
/**
 * `workspace:{id}:jobs`.
 */
room: string, 
/**
 * Up to 100 most recently updated jobs, newest first, without steps.
 */
jobs: Array<JobSnapshot>, };
