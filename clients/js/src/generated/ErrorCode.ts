// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * Stable, machine-readable error codes, shared by HTTP answers and Socket.IO acks.
 */
export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "method_not_allowed" | "invalid_transition" | "conflict" | "payload_too_large" | "invalid_payload" | "invalid_cursor" | "rate_limited" | "request_timeout" | "unavailable" | "internal";
