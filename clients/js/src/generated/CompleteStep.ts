// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { StepStatus } from "./StepStatus.js";

/**
 * `POST …/steps/{stepId}/complete`.
 */
export type CompleteStep = { 
/**
 * `completed`, `failed` or `skipped`.
 */
status: StepStatus, 
/**
 * Why it failed.
 */
error?: string, 
/**
 * AI input tokens.
 */
tokensInput?: number, 
/**
 * AI output tokens.
 */
tokensOutput?: number, };
