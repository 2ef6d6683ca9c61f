// @jobstream/client: typed jobstream clients for browsers and Node.
// The test server starter is in "@jobstream/client/testing" (Node only).

export * from "./types.js";
export {
  MAX_BATCH_EVENTS,
  SOCKET_EVENTS,
  SOCKET_EVENT_OF_TYPE,
  TERMINAL_STATUSES,
  WORKSPACE_SNAPSHOT_LIMIT,
} from "./generated/constants.js";
export { followJob, followWorkspace, FollowError } from "./follow.js";
export type { EventHandlers, FollowHandlers, FollowJobOptions, FollowOptions, FollowState, FollowWorkspaceOptions, Unfollow } from "./follow.js";
export { Producer } from "./producer.js";
export type { ProducerOptions } from "./producer.js";
export { JobstreamError } from "./http.js";
export type { RetryOptions } from "./http.js";
