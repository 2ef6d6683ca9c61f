// Generated from crates/protocol by crates/protocol/tests/typescript.rs: do not edit.
// Regenerate: JOBSTREAM_UPDATE_TS=1 cargo test -p jobstream-protocol --features ts --test typescript
import type { CustomEvent } from "./CustomEvent.js";
import type { JobCreated } from "./JobCreated.js";
import type { JobProgress } from "./JobProgress.js";
import type { StatusChanged } from "./StatusChanged.js";
import type { StepFinished } from "./StepFinished.js";
import type { StepOutput } from "./StepOutput.js";
import type { StepProgress } from "./StepProgress.js";
import type { StepStarted } from "./StepStarted.js";

/**
 * The type-specific fields of an event. Which variant goes with which
 * [`EventType`] is fixed by [`EventBody::fits`]; it is read with
 * [`EventBody::from_stored`], since two bodies can have the same fields.
 */
export type EventBody = JobCreated | StatusChanged | StepStarted | StepFinished | StepOutput | JobProgress | StepProgress | CustomEvent;
