// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * Stored event types (the `type` field).
 */
export type EventType = "job.created" | "job.queued" | "job.started" | "job.completed" | "job.failed" | "job.cancelled" | "job.progress" | "step.started" | "step.progress" | "step.output" | "step.completed" | "step.failed" | "ai.tool_called" | "ai.tokens_used" | "ai.artifact_created" | "gate.started" | "gate.passed" | "gate.failed";
