// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * A UTC instant with millisecond precision, written as `2026-11-24T10:00:00.123Z`.
 *
 * Sub-millisecond digits are dropped when the value is made, so a timestamp
 * read back from the database equals the one that was sent live.
 */
export type Timestamp = string;
