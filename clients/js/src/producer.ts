// A producer of job events over the HTTP API: typed writes with client-made
// ids, retried safely, step output coalesced into batches, in order per job.

import { v7 as uuidv7 } from "uuid";

import { JobstreamError, send, type Endpoint, type RetryOptions } from "./http.js";
import type {
  AnyEvent,
  BatchAnswer,
  BatchItem,
  CompleteStep,
  CreateJob,
  CustomEventRequest,
  EventType,
  JobSnapshot,
  JobStatus,
  OutputStream,
  StartStep,
  StatusRequest,
  StepAnswer,
  StepSnapshot,
  WriteAnswer,
} from "./types.js";
import { MAX_BATCH_EVENTS } from "./generated/constants.js";

/** How to reach the server, and the producer's bounds. */
export interface ProducerOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:3000`. */
  url: string;
  /** A token with the `publish` scope, or a function giving a fresh one (called per request). */
  token: string | (() => string | Promise<string>);
  /** How long output waits for more lines before it is sent, in milliseconds (default 5). */
  lingerMs?: number;
  /** Most output chunks in one batch (default 500, at most 1000). */
  maxBatchEvents?: number;
  /** Most bytes of output in one batch, counted as encoded in the request (default 256 KiB; the server takes bodies up to 1 MiB). */
  maxBatchBytes?: number;
  /**
   * The server's largest `chunk`, in UTF-8 bytes (default 65536, its default
   * `JOBSTREAM_MAX_CHUNK_BYTES`): a longer `output` is sent as several
   * consecutive chunks, cut between characters.
   */
  maxChunkBytes?: number;
  /** Bytes of queued writes past which calls wait (default 4 MiB): the backpressure bound. */
  maxBufferedBytes?: number;
  /** Retry timing (network errors, 408, 429, 502, 503, 504). */
  retry?: RetryOptions;
  /** Called with a write that failed for good after its call had returned (output). */
  onError?: (error: JobstreamError, item: BatchItem) => void;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
}

/** A write waiting in a job's queue. */
interface Queued {
  item: BatchItem;
  /** What it weighs against `maxBufferedBytes`. */
  bytes: number;
  /** Output has no caller waiting; other writes resolve with the answer. */
  run?: () => Promise<unknown>;
  resolve?: (value: unknown) => void;
  reject?: (error: unknown) => void;
}

/** One job's writes, sent one request at a time in call order. */
interface Lane {
  queue: Queued[];
  running: boolean;
  /** Set while output waits `lingerMs` for more. */
  timer: ReturnType<typeof setTimeout> | null;
  /** Wakes a lane waiting out its linger (on flush, or when a batch is full). */
  wake: (() => void) | null;
}

const utf8 = new TextEncoder();
const byteLength = (text: string) => utf8.encode(text).length;

/** `text` cut into pieces of at most `max` UTF-8 bytes, between characters (an empty text is one empty piece). */
export function splitUtf8(text: string, max: number): string[] {
  if (text.length * 3 <= max || byteLength(text) <= max) return [text];
  const pieces: string[] = [];
  let piece = "";
  let bytes = 0;
  for (const ch of text) {
    const size = byteLength(ch);
    if (bytes + size > max) {
      pieces.push(piece);
      piece = "";
      bytes = 0;
    }
    piece += ch;
    bytes += size;
  }
  if (piece) pieces.push(piece);
  return pieces;
}

/**
 * Writes job events to jobstream over HTTP.
 *
 * - Every call gets client-made UUIDv7 ids (`id` for jobs and steps, `eventId`
 *   for each write), so a retry after a lost answer never writes twice: the
 *   server answers a repeat with the stored event (CONTRACT §7).
 * - Network errors, 408, 429, 502, 503 and 504 are retried with exponential
 *   backoff and full jitter, at least `Retry-After`; other 4xx are final.
 * - Writes of one job are sent in call order, one request at a time; writes
 *   of different jobs go in parallel.
 * - {@link Producer.output} returns once the chunk is queued; consecutive
 *   chunks of a job go in one `POST /api/v1/events/batch` after `lingerMs`,
 *   or at once when a batch is full. Other writes resolve with the server's
 *   answer once committed, after every earlier write of their job.
 * - When more than `maxBufferedBytes` are queued, calls wait for room.
 */
export class Producer {
  private readonly endpoint: Endpoint;
  private readonly lingerMs: number;
  private readonly maxBatchEvents: number;
  private readonly maxBatchBytes: number;
  private readonly maxChunkBytes: number;
  private readonly maxBufferedBytes: number;
  private readonly onError: ProducerOptions["onError"];
  private readonly lanes = new Map<string, Lane>();
  private buffered = 0;
  private waiters: Array<() => void> = [];
  private idle: Array<() => void> = [];
  private failures: JobstreamError[] = [];
  private closed = false;

  constructor(options: ProducerOptions) {
    if (!options || typeof options.url !== "string" || !options.token) {
      throw new TypeError("Producer needs { url, token }");
    }
    this.endpoint = {
      url: `${options.url.replace(/\/+$/, "")}/api/v1`,
      token: options.token,
      retry: {
        baseDelayMs: options.retry?.baseDelayMs ?? 100,
        maxDelayMs: options.retry?.maxDelayMs ?? 5000,
        timeoutMs: options.retry?.timeoutMs ?? 60_000,
      },
      fetch: options.fetch ?? globalThis.fetch.bind(globalThis),
    };
    this.lingerMs = options.lingerMs ?? 5;
    this.maxBatchEvents = Math.min(options.maxBatchEvents ?? 500, MAX_BATCH_EVENTS);
    this.maxBatchBytes = options.maxBatchBytes ?? 256 * 1024;
    this.maxChunkBytes = Math.max(4, options.maxChunkBytes ?? 65536);
    this.maxBufferedBytes = options.maxBufferedBytes ?? 4 * 1024 * 1024;
    this.onError = options.onError;
  }

  /**
   * Creates a job (`POST /api/v1/jobs`), with a client-made `id` unless given.
   * Resolves with the snapshot; a retried creation answers the same job.
   */
  async createJob(request: CreateJob): Promise<JobSnapshot> {
    this.checkOpen();
    const body: CreateJob = { ...request, id: request.id ?? uuidv7() };
    const { answer } = await send<JobSnapshot>(this.endpoint, "POST", "/jobs", body);
    return answer;
  }

  /** Moves a job to `status` (`POST /jobs/{id}/status`); `result` with `completed`, `error` with `failed`/`cancelled`. */
  setStatus(jobId: string, status: JobStatus | StatusRequest): Promise<AnyEvent> {
    const body = typeof status === "string" ? { status } : status;
    return this.write<WriteAnswer>(jobId, { jobId, kind: "status", ...body }, `/jobs/${jobId}/status`).then((a) => a.event);
  }

  /** Reports job progress, an integer 0–100 (`POST /jobs/{id}/progress`). */
  progress(jobId: string, progress: number, message?: string): Promise<AnyEvent> {
    return this.write<WriteAnswer>(jobId, { jobId, kind: "progress", progress, ...(message === undefined ? {} : { message }) }, `/jobs/${jobId}/progress`).then(
      (a) => a.event,
    );
  }

  /** Starts a running step (`POST /jobs/{id}/steps`), with a client-made `id` unless given. */
  startStep(jobId: string, step: StartStep): Promise<StepAnswer> {
    const body = { ...step, id: step.id ?? uuidv7() };
    return this.write<StepAnswer>(jobId, { jobId, kind: "step", ...body }, `/jobs/${jobId}/steps`);
  }

  /** Reports step progress, 0–100 (`POST …/steps/{stepId}/progress`). */
  stepProgress(jobId: string, stepId: string, progress: number, message?: string): Promise<AnyEvent> {
    const item: BatchItem = { jobId, kind: "step_progress", stepId, progress, ...(message === undefined ? {} : { message }) };
    return this.write<WriteAnswer>(jobId, item, `/jobs/${jobId}/steps/${stepId}/progress`).then((a) => a.event);
  }

  /**
   * Queues a chunk of a step's output. Resolves once queued (it waits only
   * when `maxBufferedBytes` are already queued); the chunk is sent with the
   * job's next batch. A batch that fails for good goes to `onError` and makes
   * the next {@link Producer.flush} reject.
   */
  async output(jobId: string, stepId: string, chunk: string, stream: OutputStream = "stdout"): Promise<void> {
    this.checkOpen();
    for (const piece of splitUtf8(chunk, this.maxChunkBytes)) {
      const item: BatchItem = { jobId, kind: "output", stepId, chunk: piece, stream, eventId: uuidv7() };
      // As encoded in the request body: escapes (a control character is 6 bytes) count.
      const bytes = byteLength(JSON.stringify(piece)) + 200;
      await this.room(bytes);
      this.enqueue(jobId, { item, bytes });
    }
  }

  /** Ends a step as `completed`, `failed` or `skipped` (`POST …/steps/{stepId}/complete`). */
  completeStep(jobId: string, stepId: string, completion: CompleteStep): Promise<StepAnswer> {
    return this.write<StepAnswer>(jobId, { jobId, kind: "step_complete", stepId, ...completion }, `/jobs/${jobId}/steps/${stepId}/complete`);
  }

  /** Appends a `job:event` (`ai.*`, `gate.*`) to a job (`POST /jobs/{id}/events`). */
  event(jobId: string, type: EventType | CustomEventRequest, payload?: Record<string, unknown>, stepId?: string): Promise<AnyEvent> {
    const body: CustomEventRequest =
      typeof type === "string"
        ? { type, ...(payload === undefined ? {} : { payload: payload as CustomEventRequest["payload"] }), ...(stepId === undefined ? {} : { stepId }) }
        : type;
    return this.write<WriteAnswer>(jobId, { jobId, kind: "event", ...body }, `/jobs/${jobId}/events`).then((a) => a.event);
  }

  /**
   * Resolves when every write queued so far is committed. Rejects with the
   * first output batch that failed for good since the last flush.
   */
  async flush(): Promise<void> {
    for (const lane of this.lanes.values()) lane.wake?.();
    while (this.lanes.size > 0) {
      await new Promise<void>((resolve) => this.idle.push(resolve));
    }
    const failures = this.failures;
    this.failures = [];
    if (failures.length > 0) throw failures[0];
  }

  /** Flushes, then refuses further calls. Calling it again is harmless. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  /** Bytes queued and not yet committed. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  private checkOpen(): void {
    if (this.closed) throw new Error("this Producer is closed");
  }

  /** Queues a write that resolves with its route's answer. */
  private async write<T>(jobId: string, item: BatchItem, path: string): Promise<T> {
    this.checkOpen();
    const withId = { ...item, eventId: item.eventId ?? uuidv7() } as BatchItem;
    // The route takes the item's body without its batch fields.
    const { jobId: _job, kind: _kind, ...rest } = withId as BatchItem & { stepId?: string };
    const body = withId.kind === "step_progress" || withId.kind === "output" || withId.kind === "step_complete" ? omit(rest, "stepId") : rest;
    const bytes = JSON.stringify(body).length;
    await this.room(bytes);
    return new Promise<T>((resolve, reject) => {
      this.enqueue(jobId, {
        item: withId,
        bytes,
        run: async () => (await send<T>(this.endpoint, "POST", path, body)).answer,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
    });
  }

  /** Waits until `bytes` more fit under `maxBufferedBytes` (one write always fits an empty buffer). */
  private async room(bytes: number): Promise<void> {
    while (this.buffered > 0 && this.buffered + bytes > this.maxBufferedBytes) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.buffered += bytes;
  }

  private release(bytes: number): void {
    this.buffered -= bytes;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private enqueue(jobId: string, queued: Queued): void {
    let lane = this.lanes.get(jobId);
    if (!lane) {
      lane = { queue: [], running: false, timer: null, wake: null };
      this.lanes.set(jobId, lane);
    }
    lane.queue.push(queued);
    if (lane.wake && (queued.run || this.batchFull(lane))) lane.wake();
    if (!lane.running) {
      lane.running = true;
      void this.drain(jobId, lane);
    }
  }

  private batchFull(lane: Lane): boolean {
    let count = 0;
    let bytes = 0;
    for (const q of lane.queue) {
      if (q.run) return true;
      count += 1;
      bytes += q.bytes;
      if (count >= this.maxBatchEvents || bytes >= this.maxBatchBytes) return true;
    }
    return false;
  }

  /** Sends a lane's writes in order until it is empty. */
  private async drain(jobId: string, lane: Lane): Promise<void> {
    while (lane.queue.length > 0) {
      const head = lane.queue[0]!;
      if (head.run) {
        lane.queue.shift();
        try {
          head.resolve?.(await head.run());
        } catch (err) {
          head.reject?.(err);
        } finally {
          this.release(head.bytes);
        }
        continue;
      }
      // Output: wait up to lingerMs for more, unless the batch is already full.
      if (!this.batchFull(lane) && this.lingerMs > 0) {
        await new Promise<void>((resolve) => {
          lane.wake = resolve;
          lane.timer = setTimeout(resolve, this.lingerMs);
        });
        if (lane.timer) clearTimeout(lane.timer);
        lane.timer = null;
        lane.wake = null;
      }
      const batch: Queued[] = [];
      let bytes = 0;
      while (lane.queue.length > 0 && !lane.queue[0]!.run && batch.length < this.maxBatchEvents) {
        const next = lane.queue[0]!;
        if (batch.length > 0 && bytes + next.bytes > this.maxBatchBytes) break;
        batch.push(next);
        bytes += next.bytes;
        lane.queue.shift();
      }
      try {
        await send<BatchAnswer>(this.endpoint, "POST", "/events/batch", { events: batch.map((q) => q.item) });
      } catch (err) {
        const error = err instanceof JobstreamError ? err : new JobstreamError(0, "network", String(err));
        this.failures.push(error);
        for (const q of batch) this.onError?.(error, q.item);
      } finally {
        this.release(bytes);
      }
    }
    lane.running = false;
    this.lanes.delete(jobId);
    if (this.lanes.size === 0) {
      const idle = this.idle;
      this.idle = [];
      for (const wake of idle) wake();
    }
  }
}

function omit<T extends object, K extends string>(value: T, key: K): Omit<T, K> {
  const copy = { ...value } as Record<string, unknown>;
  delete copy[key];
  return copy as Omit<T, K>;
}
