// followJob and followWorkspace: subscriptions on a stock socket.io-client
// socket that resume after every reconnect and hand each event to the app
// once, in seq order (CONTRACT §3, "Delivery guarantee"; README, "The
// reconnect pattern").

import type { Socket } from "socket.io-client";

import { SOCKET_EVENTS, TERMINAL_STATUSES } from "./generated/constants.js";
import type {
  Ack,
  AnyEvent,
  ErrorCode,
  EventOf,
  JobSnapshot,
  JobSubscribed,
  SocketEventName,
  Unsubscribed,
  WorkspaceSubscribed,
} from "./types.js";

/**
 * Where a follower is:
 * - `connecting`: waiting for the socket to connect or for the subscribe ack;
 * - `live`: subscribed; events (the replay first, after a reconnect) arrive;
 * - `disconnected`: the socket lost its connection; socket.io-client reconnects
 *   and the follower subscribes again with `since` (the detail is the reason);
 * - `closed`: ended by its unsubscribe function or by a refusal (see `onError`).
 */
export type FollowState = "connecting" | "live" | "disconnected" | "closed";

/** A refused or unanswered subscribe. `fatal`: the follower has closed. */
export class FollowError extends Error {
  /** The ack's error code, or `timeout` when no ack came within `ackTimeoutMs`. */
  readonly code: ErrorCode | "timeout";
  /** The job it is about, when it is about one. */
  readonly jobId: string | undefined;
  /** Whether the follower stopped because of it. */
  readonly fatal: boolean;

  constructor(code: ErrorCode | "timeout", message: string, fatal: boolean, jobId?: string) {
    super(message);
    this.name = "FollowError";
    this.code = code;
    this.fatal = fatal;
    this.jobId = jobId;
  }
}

/** Per Socket.IO event handlers, each typed with its event. */
export type EventHandlers = { [N in SocketEventName]?: (event: EventOf<N>) => void };

/** What a follower reports. Every handler is optional. */
export interface FollowHandlers<Snapshot> {
  /** Every event, once, in `seq` order per job. */
  onEvent?: (event: AnyEvent) => void;
  /** The same events, by Socket.IO event name (called after `onEvent`). */
  on?: EventHandlers;
  /** The snapshot of each ok subscribe ack: the first one and each one after a reconnect. */
  onSnapshot?: (snapshot: Snapshot) => void;
  /** Every change of state; `detail` is the disconnect reason or the connect error. */
  onState?: (state: FollowState, detail?: string) => void;
  /** A refused or unanswered subscribe (see {@link FollowError}). */
  onError?: (error: FollowError) => void;
}

/** Timing shared by both followers. */
export interface FollowOptions {
  /** How long to wait for a subscribe ack before asking again, in ms (default 10000). */
  ackTimeoutMs?: number;
  /** The wait before asking again after `rate_limited`, `unavailable` or `internal`, in ms (default 1000). */
  retryDelayMs?: number;
}

/** `followJob` options: the handlers, timing, and where to start. */
export interface FollowJobOptions extends FollowHandlers<JobSnapshot>, FollowOptions {
  /**
   * Deliver every event after this `seq` (0: the whole history). Without it,
   * the follower starts after the first ack's `job.lastSeq`.
   */
  since?: number;
}

/** `followWorkspace` options. */
export interface FollowWorkspaceOptions extends FollowHandlers<JobSnapshot[]>, FollowOptions {
  /**
   * After a reconnect, the jobs resumed with `since` (default 200): the
   * unfinished ones first, then the most recently active. Other jobs seen
   * before are forgotten: their later events are delivered from the next one on.
   */
  maxResumeJobs?: number;
}

/** Stops following: leaves the room (unless another follower on the socket needs it) and removes every listener. */
export type Unfollow = () => void;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnySocket = Socket<any, any>;

type Listener = (name: SocketEventName, event: AnyEvent) => void;

/** What the followers of one socket share: one listener per event name, and who holds which job room. */
interface Hub {
  listeners: Set<Listener>;
  jobHolds: Map<string, number>;
}

const hubs = new WeakMap<AnySocket, Hub>();

function hubOf(socket: AnySocket): Hub {
  let hub = hubs.get(socket);
  if (!hub) {
    const created: Hub = { listeners: new Set(), jobHolds: new Map() };
    for (const name of SOCKET_EVENTS) {
      socket.on(name, (event: AnyEvent) => {
        for (const listener of [...created.listeners]) listener(name, event);
      });
    }
    hubs.set(socket, created);
    hub = created;
  }
  return hub;
}

const FATAL: ReadonlySet<string> = new Set(["invalid_payload", "forbidden", "not_found", "invalid_cursor", "bad_request"]);

function isTerminalStatus(event: AnyEvent): boolean {
  return event.type === "job.completed" || event.type === "job.failed" || event.type === "job.cancelled";
}
void TERMINAL_STATUSES;

/** One job's position for a follower: the last `seq` delivered, and early events held back. */
class Track {
  last: number;
  finished = false;
  touched = Date.now();
  private readonly held = new Map<number, [SocketEventName, AnyEvent]>();

  constructor(last: number) {
    this.last = last;
  }

  /** Takes an event; calls `deliver` for it and any held ones that now follow in order. Returns whether a gap is open. */
  take(name: SocketEventName, event: AnyEvent, deliver: (name: SocketEventName, event: AnyEvent) => void): boolean {
    if (event.seq <= this.last) return this.held.size > 0;
    if (event.seq > this.last + 1) {
      this.held.set(event.seq, [name, event]);
      return true;
    }
    let next: [SocketEventName, AnyEvent] | undefined = [name, event];
    while (next) {
      this.last = next[1].seq;
      this.touched = Date.now();
      if (isTerminalStatus(next[1])) this.finished = true;
      deliver(next[0], next[1]);
      this.held.delete(this.last);
      next = this.held.get(this.last + 1);
    }
    for (const seq of this.held.keys()) if (seq <= this.last) this.held.delete(seq);
    return this.held.size > 0;
  }
}

function deliverTo<S>(handlers: FollowHandlers<S>): (name: SocketEventName, event: AnyEvent) => void {
  return (name, event) => {
    handlers.onEvent?.(event);
    const handler = handlers.on?.[name] as ((event: AnyEvent) => void) | undefined;
    handler?.(event);
  };
}

function validSince(since: unknown): number | undefined {
  if (since === undefined) return undefined;
  if (typeof since !== "number" || !Number.isSafeInteger(since) || since < 0) {
    throw new TypeError(`since must be an integer ≥ 0, got ${String(since)}`);
  }
  return since;
}

/**
 * Follows one job on a socket.io-client socket (`subscribe:job`).
 *
 * Subscribes when the socket is connected, and again with `since` = the last
 * `seq` delivered after every reconnect (network loss, server restart, the
 * server closing the socket at the token's `exp` when `auth` is a function
 * that gives a fresh token). Each event reaches `onEvent` / `on[name]` once,
 * in `seq` order: repeats are dropped by `seq`, and an event that arrives
 * before the one it follows is held until that one arrives (asked for again
 * with `since`), never skipped.
 *
 * A refusal with `invalid_cursor`, `not_found`, `forbidden` or
 * `invalid_payload` closes the follower (`onError` with `fatal: true`, state
 * `closed`): for `invalid_cursor` (a `since` this socket can no longer honour
 * in order) read the missing events with `GET /api/v1/jobs/{id}/events` and
 * follow again. `unauthorized` (a subscribe after the token's `exp`) waits for
 * the reconnect; `rate_limited`, `unavailable` and `internal` are asked again
 * after `retryDelayMs`; a missing ack after `ackTimeoutMs`.
 *
 * @returns a function that stops following.
 */
export function followJob(socket: AnySocket, jobId: string, options: FollowJobOptions = {}): Unfollow {
  const hub = hubOf(socket);
  const ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
  const retryDelayMs = options.retryDelayMs ?? 1000;
  const since = validSince(options.since);
  const deliver = deliverTo(options);
  let track: Track | null = since === undefined ? null : new Track(since);
  let early: Array<[SocketEventName, AnyEvent]> = [];
  let closed = false;
  let attempt = 0;
  let retry: ReturnType<typeof setTimeout> | null = null;
  let state: FollowState | null = null;

  const setState = (next: FollowState, detail?: string) => {
    if (next === state && detail === undefined) return;
    state = next;
    options.onState?.(next, detail);
  };

  const listener: Listener = (name, event) => {
    if (closed || event.jobId !== jobId) return;
    if (!track) {
      early.push([name, event]);
      return;
    }
    if (track.take(name, event, deliver)) subscribe(); // a gap: ask for it with since
  };

  const close = () => {
    if (closed) return;
    closed = true;
    if (retry) clearTimeout(retry);
    hub.listeners.delete(listener);
    socket.off("connect", subscribe);
    socket.off("disconnect", onDisconnect);
    socket.off("connect_error", onConnectError);
    const holds = (hub.jobHolds.get(jobId) ?? 1) - 1;
    if (holds > 0) hub.jobHolds.set(jobId, holds);
    else {
      hub.jobHolds.delete(jobId);
      if (socket.connected) socket.emit("unsubscribe:job", { jobId }, (_ack: Ack<Unsubscribed>) => {});
    }
    setState("closed");
  };

  function later() {
    if (retry) clearTimeout(retry);
    retry = setTimeout(() => {
      retry = null;
      subscribe();
    }, retryDelayMs);
  }

  function subscribe() {
    if (closed || !socket.connected) return;
    const mine = ++attempt;
    if (state !== "live") setState("connecting");
    const request = track ? { jobId, since: track.last } : { jobId };
    socket.timeout(ackTimeoutMs).emit("subscribe:job", request, (err: Error | null, ack: Ack<JobSubscribed>) => {
      if (closed || mine !== attempt) return;
      if (err) {
        options.onError?.(new FollowError("timeout", `subscribe:job ${jobId}: no ack in ${ackTimeoutMs} ms`, false, jobId));
        subscribe();
        return;
      }
      if (!ack.ok) {
        const { code, message } = ack.error;
        const fatal = FATAL.has(code);
        options.onError?.(new FollowError(code, `subscribe:job ${jobId}: ${code}: ${message}`, fatal, jobId));
        if (fatal) close();
        else if (code !== "unauthorized") later();
        return;
      }
      options.onSnapshot?.(ack.job);
      if (!track) {
        track = new Track(ack.job.lastSeq);
        const held = early;
        early = [];
        for (const [name, event] of held) track.take(name, event, deliver);
      }
      setState("live");
    });
  }

  function onDisconnect(reason: string) {
    if (closed) return;
    attempt += 1; // an ack of the old connection no longer counts
    setState("disconnected", reason);
  }

  function onConnectError(err: Error) {
    if (!closed) setState("disconnected", err.message);
  }

  hub.listeners.add(listener);
  hub.jobHolds.set(jobId, (hub.jobHolds.get(jobId) ?? 0) + 1);
  socket.on("connect", subscribe);
  socket.on("disconnect", onDisconnect);
  socket.on("connect_error", onConnectError);
  if (socket.connected) subscribe();
  else setState("connecting");
  return close;
}

/**
 * Follows every job of a workspace (`subscribe:workspace:jobs`).
 *
 * The first ack's snapshot (up to 100 most recently updated jobs) is given to
 * `onSnapshot`; from there on every event of every job of the workspace,
 * including jobs created later, reaches `onEvent` / `on[name]` once, in `seq`
 * order per job. After a reconnect it first subscribes again to each job it
 * has seen (up to `maxResumeJobs`) with `since` = the last `seq` delivered,
 * then to the workspace, and leaves those job rooms once their replay is
 * delivered: nothing is lost or repeated for them. Jobs first seen in a later
 * snapshot start at that snapshot's `lastSeq`.
 *
 * Refusals of the workspace subscribe are handled as in {@link followJob};
 * a refused resume of one job is reported with its `jobId` (`fatal: false`)
 * and that job continues from its next event.
 *
 * @returns a function that stops following.
 */
export function followWorkspace(socket: AnySocket, workspaceId: string, options: FollowWorkspaceOptions = {}): Unfollow {
  const hub = hubOf(socket);
  const ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
  const retryDelayMs = options.retryDelayMs ?? 1000;
  const maxResumeJobs = options.maxResumeJobs ?? 200;
  const deliver = deliverTo(options);
  const tracks = new Map<string, Track>();
  /** Jobs whose room this follower joined to resume: the `seq` to reach before leaving it. */
  const resuming = new Map<string, number>();
  let early: Array<[SocketEventName, AnyEvent]> | null = [];
  let closed = false;
  let attempt = 0;
  let workspaceLive = false;
  let retry: ReturnType<typeof setTimeout> | null = null;
  let state: FollowState | null = null;

  const setState = (next: FollowState, detail?: string) => {
    if (next === state && detail === undefined) return;
    state = next;
    options.onState?.(next, detail);
  };

  const take = (name: SocketEventName, event: AnyEvent) => {
    let track = tracks.get(event.jobId);
    if (!track) {
      // A job the snapshot did not list: the server sends what follows the snapshot, in order.
      track = new Track(event.seq - 1);
      tracks.set(event.jobId, track);
    }
    if (track.take(name, event, deliver)) resume([event.jobId]);
    leaveIfCaughtUp(event.jobId);
  };

  const listener: Listener = (name, event) => {
    if (closed || event.workspaceId !== workspaceId) return;
    if (early) early.push([name, event]);
    else take(name, event);
  };

  const leaveIfCaughtUp = (jobId: string) => {
    const target = resuming.get(jobId);
    const track = tracks.get(jobId);
    if (target === undefined || !track || !workspaceLive || track.last < target) return;
    resuming.delete(jobId);
    if ((hub.jobHolds.get(jobId) ?? 0) === 0 && socket.connected) {
      socket.emit("unsubscribe:job", { jobId }, (_ack: Ack<Unsubscribed>) => {});
    }
  };

  /** Joins the rooms of `jobIds` with `since`, so that the events they missed are sent (in order, once). */
  const resume = (jobIds: string[]) => {
    const mine = attempt;
    for (const jobId of jobIds) {
      const track = tracks.get(jobId);
      if (!track) continue;
      resuming.set(jobId, resuming.get(jobId) ?? Number.MAX_SAFE_INTEGER);
      socket.emit("subscribe:job", { jobId, since: track.last }, (ack: Ack<JobSubscribed>) => {
        if (closed || mine !== attempt) return;
        if (ack.ok) {
          resuming.set(jobId, ack.job.lastSeq);
          leaveIfCaughtUp(jobId);
          return;
        }
        const { code, message } = ack.error;
        options.onError?.(new FollowError(code, `subscribe:job ${jobId} (resume): ${code}: ${message}`, false, jobId));
        resuming.delete(jobId);
        tracks.delete(jobId);
        if ((hub.jobHolds.get(jobId) ?? 0) === 0) socket.emit("unsubscribe:job", { jobId }, () => {});
      });
    }
  };

  const close = () => {
    if (closed) return;
    closed = true;
    if (retry) clearTimeout(retry);
    hub.listeners.delete(listener);
    socket.off("connect", onConnect);
    socket.off("disconnect", onDisconnect);
    socket.off("connect_error", onConnectError);
    if (socket.connected) {
      socket.emit("unsubscribe:workspace:jobs", { workspaceId }, (_ack: Ack<Unsubscribed>) => {});
      for (const jobId of resuming.keys()) {
        if ((hub.jobHolds.get(jobId) ?? 0) === 0) socket.emit("unsubscribe:job", { jobId }, () => {});
      }
    }
    setState("closed");
  };

  function subscribeWorkspace() {
    if (closed || !socket.connected) return;
    const mine = attempt;
    socket
      .timeout(ackTimeoutMs)
      .emit("subscribe:workspace:jobs", { workspaceId }, (err: Error | null, ack: Ack<WorkspaceSubscribed>) => {
        if (closed || mine !== attempt) return;
        if (err) {
          options.onError?.(new FollowError("timeout", `subscribe:workspace:jobs ${workspaceId}: no ack in ${ackTimeoutMs} ms`, false));
          subscribeWorkspace();
          return;
        }
        if (!ack.ok) {
          const { code, message } = ack.error;
          const fatal = FATAL.has(code);
          options.onError?.(new FollowError(code, `subscribe:workspace:jobs ${workspaceId}: ${code}: ${message}`, fatal));
          if (fatal) close();
          else if (code !== "unauthorized") {
            retry = setTimeout(() => {
              retry = null;
              subscribeWorkspace();
            }, retryDelayMs);
          }
          return;
        }
        for (const job of ack.jobs) {
          if (!tracks.has(job.id)) {
            const track = new Track(job.lastSeq);
            track.finished = (TERMINAL_STATUSES as readonly string[]).includes(job.status);
            tracks.set(job.id, track);
          }
        }
        workspaceLive = true;
        options.onSnapshot?.(ack.jobs);
        setState("live");
        if (early) {
          const held = early;
          early = null;
          for (const [name, event] of held) take(name, event);
        }
        for (const jobId of [...resuming.keys()]) leaveIfCaughtUp(jobId);
      });
  }

  function onConnect() {
    if (closed) return;
    attempt += 1;
    workspaceLive = false;
    resuming.clear();
    setState("connecting");
    if (tracks.size > 0) {
      const ranked = [...tracks.entries()].sort(
        ([, a], [, b]) => Number(a.finished) - Number(b.finished) || b.touched - a.touched,
      );
      for (const [jobId] of ranked.slice(maxResumeJobs)) tracks.delete(jobId);
      resume(ranked.slice(0, maxResumeJobs).map(([jobId]) => jobId));
    }
    subscribeWorkspace();
  }

  function onDisconnect(reason: string) {
    if (closed) return;
    attempt += 1;
    workspaceLive = false;
    setState("disconnected", reason);
  }

  function onConnectError(err: Error) {
    if (!closed) setState("disconnected", err.message);
  }

  hub.listeners.add(listener);
  socket.on("connect", onConnect);
  socket.on("disconnect", onDisconnect);
  socket.on("connect_error", onConnectError);
  if (socket.connected) onConnect();
  else setState("connecting");
  return close;
}
