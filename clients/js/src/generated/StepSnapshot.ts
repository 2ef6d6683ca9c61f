// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { StepPhase } from "./StepPhase.js";
import type { StepStatus } from "./StepStatus.js";
import type { StepType } from "./StepType.js";
import type { Timestamp } from "./Timestamp.js";

/**
 * The state of one step.
 */
export type StepSnapshot = { 
/**
 * The step id.
 */
id: string, 
/**
 * Its job.
 */
jobId: string, 
/**
 * Its name.
 */
name: string, 
/**
 * Its phase.
 */
phase: StepPhase, 
/**
 * Its type.
 */
stepType: StepType, 
/**
 * Current status.
 */
status: StepStatus, 
/**
 * When it started.
 */
startedAt: Timestamp | null, 
/**
 * When it finished.
 */
completedAt: Timestamp | null, 
/**
 * From start to finish, once finished.
 */
durationMs: number | null, 
/**
 * Why it failed.
 */
error: string | null, 
/**
 * AI input tokens.
 */
tokensInput: number | null, 
/**
 * AI output tokens.
 */
tokensOutput: number | null, };
