// HTTP calls to the jobstream API with retries that are safe because every
// write carries a client-made id (CONTRACT §7, "Idempotent writes").

import type { ErrorCode } from "./generated/ErrorCode.js";

/** An answer of the server that is not 2xx, or a request that could not be made. */
export class JobstreamError extends Error {
  /** The HTTP status, or 0 when no answer arrived (network error, retries used up). */
  readonly status: number;
  /** The stable error code of the answer (`conflict`, `invalid_payload`, …), or `network`. */
  readonly code: ErrorCode | "network";

  constructor(status: number, code: ErrorCode | "network", message: string) {
    super(message);
    this.name = "JobstreamError";
    this.status = status;
    this.code = code;
  }
}

/** How requests are retried. */
export interface RetryOptions {
  /** First backoff in milliseconds (default 100); doubles per attempt. */
  baseDelayMs?: number;
  /** Largest backoff in milliseconds (default 5000). */
  maxDelayMs?: number;
  /** Give up after retrying this long, in milliseconds (default 60000). */
  timeoutMs?: number;
}

/**
 * Statuses retried: 408 (the body did not arrive in time), 429 (the subject's
 * write rate: it says when with `Retry-After`), 502 and 504 (a proxy in front
 * of the server), 503 (the database is unreachable; nothing was written).
 * Every other 4xx and 500 is final.
 */
const RETRIED = new Set([408, 429, 502, 503, 504]);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The wait before retry `attempt` (1-based): full jitter, at least `Retry-After`. */
export function backoff(attempt: number, retry: Required<RetryOptions>, retryAfter: string | null): number {
  const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
  const jittered = Math.random() * ceiling;
  const seconds = retryAfter === null ? NaN : Number(retryAfter);
  return Number.isFinite(seconds) && seconds >= 0 ? Math.max(jittered, seconds * 1000) : jittered;
}

/** Where requests go and how. */
export interface Endpoint {
  url: string;
  token: string | (() => string | Promise<string>);
  retry: Required<RetryOptions>;
  fetch: typeof globalThis.fetch;
}

/**
 * Sends `body` to `path` (under `url`) until it gets a final answer: a 2xx
 * (returned parsed, with its status), a final error (thrown as
 * {@link JobstreamError}), or the retry time is used up (the last error is thrown).
 * The same body text is sent at every attempt, so an `eventId` in it makes
 * a repeat answer with the stored event.
 */
export async function send<T>(endpoint: Endpoint, method: string, path: string, body?: unknown): Promise<{ status: number; answer: T }> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const started = Date.now();
  for (let attempt = 1; ; attempt += 1) {
    let failure: JobstreamError;
    let retryAfter: string | null = null;
    try {
      const token = typeof endpoint.token === "function" ? await endpoint.token() : endpoint.token;
      const headers: Record<string, string> = { authorization: `Bearer ${token}` };
      if (text !== undefined) headers["content-type"] = "application/json";
      const response = await endpoint.fetch(`${endpoint.url}${path}`, { method, headers, body: text });
      const raw = await response.text();
      if (response.ok) {
        return { status: response.status, answer: (raw ? JSON.parse(raw) : {}) as T };
      }
      let code: ErrorCode | "network" = "internal";
      let message = `HTTP ${response.status}`;
      try {
        const parsed = JSON.parse(raw) as { error?: { code?: ErrorCode; message?: string } };
        code = parsed.error?.code ?? code;
        message = parsed.error?.message ?? message;
      } catch {
        // not JSON: a proxy's page; keep the status
      }
      failure = new JobstreamError(response.status, code, `${method} ${path}: ${response.status} ${code}: ${message}`);
      if (!RETRIED.has(response.status)) throw failure;
      retryAfter = response.headers.get("retry-after");
    } catch (err) {
      if (err instanceof JobstreamError && !RETRIED.has(err.status)) throw err;
      failure =
        err instanceof JobstreamError
          ? err
          : new JobstreamError(0, "network", `${method} ${path}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const wait = backoff(attempt, endpoint.retry, retryAfter);
    if (Date.now() + wait - started > endpoint.retry.timeoutMs) throw failure;
    await sleep(wait);
  }
}
