// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript

/**
 * The output stream a `step:output` chunk came from.
 */
export type OutputStream = "stdout" | "stderr";
