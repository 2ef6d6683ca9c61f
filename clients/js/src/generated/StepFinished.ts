// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { StepStatus } from "./StepStatus.js";

/**
 * `step:completed`: a step finished (completed, failed or skipped).
 */
export type StepFinished = { 
/**
 * `completed`, `failed` or `skipped`.
 */
status: StepStatus, 
/**
 * From the step's start to its end.
 */
durationMs: number, 
/**
 * Why it failed.
 */
error?: string, 
/**
 * AI input tokens used by the step.
 */
tokensInput?: number, 
/**
 * AI output tokens used by the step.
 */
tokensOutput?: number, };
