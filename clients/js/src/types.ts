// The wire types of jobstream. Every payload type comes from ./generated/,
// which crates/protocol generates with ts-rs; this file only names the
// Socket.IO event maps and the HTTP answers built from them.

import type { AckError } from "./generated/AckError.js";
import type { CompleteStep } from "./generated/CompleteStep.js";
import type { CustomEvent } from "./generated/CustomEvent.js";
import type { CustomEventRequest } from "./generated/CustomEventRequest.js";
import type { ErrorBody } from "./generated/ErrorBody.js";
import type { Event } from "./generated/Event.js";
import type { EventType } from "./generated/EventType.js";
import type { JobCreated } from "./generated/JobCreated.js";
import type { JobProgress } from "./generated/JobProgress.js";
import type { JobSnapshot } from "./generated/JobSnapshot.js";
import type { JobSubscribed } from "./generated/JobSubscribed.js";
import type { ProgressRequest } from "./generated/ProgressRequest.js";
import type { StartStep } from "./generated/StartStep.js";
import type { StatusChanged } from "./generated/StatusChanged.js";
import type { StatusRequest } from "./generated/StatusRequest.js";
import type { StepFinished } from "./generated/StepFinished.js";
import type { StepOutput } from "./generated/StepOutput.js";
import type { StepOutputRequest } from "./generated/StepOutputRequest.js";
import type { StepProgress } from "./generated/StepProgress.js";
import type { StepSnapshot } from "./generated/StepSnapshot.js";
import type { StepStarted } from "./generated/StepStarted.js";
import type { SubscribeJob } from "./generated/SubscribeJob.js";
import type { SubscribeWorkspace } from "./generated/SubscribeWorkspace.js";
import type { Unsubscribed } from "./generated/Unsubscribed.js";
import type { UnsubscribeJob } from "./generated/UnsubscribeJob.js";
import type { WorkspaceSubscribed } from "./generated/WorkspaceSubscribed.js";
import type { BatchKind } from "./generated/BatchKind.js";
import type { SOCKET_EVENT_OF_TYPE, SOCKET_EVENTS } from "./generated/constants.js";

export type { AckError } from "./generated/AckError.js";
export type { BatchKind } from "./generated/BatchKind.js";
export type { CompleteStep } from "./generated/CompleteStep.js";
export type { CreateJob } from "./generated/CreateJob.js";
export type { CustomEvent } from "./generated/CustomEvent.js";
export type { CustomEventRequest } from "./generated/CustomEventRequest.js";
export type { ErrorBody } from "./generated/ErrorBody.js";
export type { ErrorCode } from "./generated/ErrorCode.js";
export type { Event } from "./generated/Event.js";
export type { EventBody } from "./generated/EventBody.js";
export type { EventType } from "./generated/EventType.js";
export type { JobCreated } from "./generated/JobCreated.js";
export type { JobProgress } from "./generated/JobProgress.js";
export type { JobSnapshot } from "./generated/JobSnapshot.js";
export type { JobStatus } from "./generated/JobStatus.js";
export type { JobSubscribed } from "./generated/JobSubscribed.js";
export type { OutputStream } from "./generated/OutputStream.js";
export type { ProgressRequest } from "./generated/ProgressRequest.js";
export type { StartStep } from "./generated/StartStep.js";
export type { StatusChanged } from "./generated/StatusChanged.js";
export type { StatusRequest } from "./generated/StatusRequest.js";
export type { StepFinished } from "./generated/StepFinished.js";
export type { StepOutput } from "./generated/StepOutput.js";
export type { StepOutputRequest } from "./generated/StepOutputRequest.js";
export type { StepPhase } from "./generated/StepPhase.js";
export type { StepProgress } from "./generated/StepProgress.js";
export type { StepSnapshot } from "./generated/StepSnapshot.js";
export type { StepStarted } from "./generated/StepStarted.js";
export type { StepStatus } from "./generated/StepStatus.js";
export type { StepType } from "./generated/StepType.js";
export type { SubscribeJob } from "./generated/SubscribeJob.js";
export type { SubscribeWorkspace } from "./generated/SubscribeWorkspace.js";
export type { Timestamp } from "./generated/Timestamp.js";
export type { Unsubscribed } from "./generated/Unsubscribed.js";
export type { UnsubscribeJob } from "./generated/UnsubscribeJob.js";
export type { WorkspaceSubscribed } from "./generated/WorkspaceSubscribed.js";
export type { JsonValue } from "./generated/serde_json/JsonValue.js";

/** `unsubscribe:workspace:jobs` takes what `subscribe:workspace:jobs` takes. */
export type UnsubscribeWorkspace = SubscribeWorkspace;

/** A Socket.IO event the server sends: `job:created`, `job:status`, …. */
export type SocketEventName = (typeof SOCKET_EVENTS)[number];

/** The stored types (`type`) a Socket.IO event carries: `job:status` → `job.queued` | … | `job.cancelled`. */
export type TypesCarriedBy<N extends SocketEventName> = {
  [T in EventType]: (typeof SOCKET_EVENT_OF_TYPE)[T] extends N ? T : never;
}[EventType];

/** The fields every event has, whatever its type (CONTRACT §2). */
export type EventHeader = Pick<Event, "eventId" | "seq" | "jobId" | "workspaceId" | "stepId" | "timestamp">;

/** The type-specific fields of each Socket.IO event (CONTRACT §2, as `EventBody::from_stored` reads them). */
export interface EventBodies {
  "job:created": JobCreated;
  "job:status": StatusChanged;
  "job:progress": JobProgress;
  "step:started": StepStarted & { stepId: string };
  "step:progress": StepProgress & { stepId: string };
  "step:output": StepOutput & { stepId: string };
  "step:completed": StepFinished & { stepId: string };
  "job:event": CustomEvent;
}

// Every Socket.IO event has a body above, and no other name does.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const everyEventHasABody: Same<keyof EventBodies, SocketEventName> = true;
void everyEventHasABody;

/** The event that Socket.IO event `N` carries: `type` narrowed, its own fields typed. */
export type EventOf<N extends SocketEventName> = Omit<EventHeader, keyof EventBodies[N]> & { type: TypesCarriedBy<N> } & EventBodies[N];

/** Any event, as a union discriminated by `type`. */
export type AnyEvent = { [N in SocketEventName]: EventOf<N> }[SocketEventName];

/** What the server emits: `io<ServerToClientEvents, ClientToServerEvents>(url)`. */
export type ServerToClientEvents = { [N in SocketEventName]: (event: EventOf<N>) => void };

/** An ack: the ok body, or `{ ok: false, error }`. */
export type Ack<T> = T | AckError;

/** What a client may emit, each with its ack (CONTRACT §3). */
export interface ClientToServerEvents {
  "subscribe:workspace:jobs": (request: SubscribeWorkspace, ack: (answer: Ack<WorkspaceSubscribed>) => void) => void;
  "unsubscribe:workspace:jobs": (request: UnsubscribeWorkspace, ack: (answer: Ack<Unsubscribed>) => void) => void;
  "subscribe:job": (request: SubscribeJob, ack: (answer: Ack<JobSubscribed>) => void) => void;
  "unsubscribe:job": (request: UnsubscribeJob, ack: (answer: Ack<Unsubscribed>) => void) => void;
}

/** A write body with the optional client-chosen `eventId` (CONTRACT §7, "Idempotent writes"). */
export type Idempotent<T> = T & { eventId?: string };

/** One item of `POST /api/v1/events/batch`: `{ jobId, kind, …body of the route }`. */
export type BatchItem = Idempotent<
  { jobId: string } & (
    | ({ kind: Extract<BatchKind, "status"> } & StatusRequest)
    | ({ kind: Extract<BatchKind, "progress"> } & ProgressRequest)
    | ({ kind: Extract<BatchKind, "step"> } & StartStep)
    | ({ kind: Extract<BatchKind, "step_progress">; stepId: string } & ProgressRequest)
    | ({ kind: Extract<BatchKind, "output">; stepId: string } & StepOutputRequest)
    | ({ kind: Extract<BatchKind, "step_complete">; stepId: string } & CompleteStep)
    | ({ kind: Extract<BatchKind, "event"> } & CustomEventRequest)
  )
>;

/** `POST /api/v1/events/batch`, at most `MAX_BATCH_EVENTS` items. */
export interface BatchRequest {
  events: BatchItem[];
}

/** The answer of a write route: `{ event }`. */
export interface WriteAnswer {
  event: AnyEvent;
}

/** The answer of `POST …/steps` and `…/complete`: `{ step, event }`. */
export interface StepAnswer {
  step: StepSnapshot;
  event: AnyEvent;
}

/** The answer of `POST /api/v1/events/batch`: the events in request order. */
export interface BatchAnswer {
  events: AnyEvent[];
}

/** `GET /api/v1/jobs/{jobId}/events`. */
export interface EventsPage {
  events: AnyEvent[];
  lastSeq: number;
}

/** `GET /api/v1/jobs`. */
export interface JobsPage {
  jobs: JobSnapshot[];
}

/** Every HTTP error answer: `{ error: { code, message } }`. */
export interface ErrorAnswer {
  error: ErrorBody;
}
