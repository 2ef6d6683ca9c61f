// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { StepPhase } from "./StepPhase.js";
import type { StepType } from "./StepType.js";

/**
 * `step:started`. The step id is the event's `stepId`.
 */
export type StepStarted = { 
/**
 * The step's name.
 */
name: string, 
/**
 * Its phase.
 */
phase: StepPhase, 
/**
 * Its type.
 */
stepType: StepType, };
