// @ts-check
// The part of a step's log the viewer holds (pure: no DOM, no fetch).
//
// Lines are numbered as the server numbers them (docs/contract.md, "Step
// log"): the step's chunks in seq order split on `\n`; the text after the
// last `\n` is a line not ended yet. The model holds one window of
// consecutive lines (at most `max`), the total, and the seq of the last
// chunk counted, so that a live `step:output` chunk is counted once: chunks
// at or before `lastSeq` are already in the numbers.

/**
 * @typedef {object} Line
 * @property {number} n  from 1
 * @property {string} text  raw, escape sequences included
 * @property {string} timestamp  ISO 8601, of the chunk the line starts in
 * @property {string} stream  `stdout` or `stderr`
 * @property {boolean} ended  false only for a last line with no `\n` yet
 */

/**
 * A `GET …/log/lines` answer.
 * @typedef {object} Page
 * @property {Line[]} lines
 * @property {number} total
 * @property {boolean} end
 * @property {number} lastSeq
 * @property {string} [status]
 */

/**
 * A live `step:output` event (the fields used).
 * @typedef {object} Chunk
 * @property {number} seq
 * @property {string} chunk
 * @property {string} [stream]
 * @property {string} timestamp
 */

/**
 * @typedef {object} Log
 * @property {boolean} ready  the first page (the tail) has been merged
 * @property {number} total  lines so far
 * @property {boolean} lastEnded  whether line `total` has its `\n`
 * @property {number} lastSeq  seq of the last chunk counted
 * @property {Line[]} lines  the window: lines lo .. lo + lines.length - 1
 * @property {number} lo
 * @property {Chunk[]} pending  live chunks that came before the first page
 * @property {Chunk[]} recent  the latest live chunks (to replay after a page read earlier)
 * @property {number} max  most lines kept
 */

const RECENT = 5000;

/**
 * @param {number} [max]
 * @returns {Log}
 */
export function createLog(max = 20000) {
  return { ready: false, total: 0, lastEnded: true, lastSeq: 0, lines: [], lo: 1, pending: [], recent: [], max };
}

/** @param {Log} log */
export const hi = (log) => log.lo + log.lines.length - 1;

/**
 * Whether the window reaches the end of the log.
 * @param {Log} log
 */
export const holdsTail = (log) => hi(log) >= log.total;

/**
 * The line numbered `n` if the window holds it.
 * @param {Log} log
 * @param {number} n
 * @returns {Line | undefined}
 */
export function lineAt(log, n) {
  return log.lines[n - log.lo];
}

/**
 * Appends a chunk's text at the end of the log (the window grows only if it
 * holds the tail).
 * @param {Log} log
 * @param {Chunk} chunk
 */
function appendText(log, chunk) {
  const tail = holdsTail(log);
  let text = chunk.chunk;
  for (;;) {
    const at = text.indexOf('\n');
    const piece = at < 0 ? text : text.slice(0, at);
    if (!piece && at < 0) break;
    if (log.lastEnded) {
      log.total += 1;
      log.lastEnded = false;
      if (tail) {
        if (!log.lines.length) log.lo = log.total;
        log.lines.push({ n: log.total, text: '', timestamp: chunk.timestamp, stream: chunk.stream || 'stdout', ended: false });
      }
    }
    const last = tail ? log.lines[log.lines.length - 1] : null;
    if (last) last.text += piece;
    if (at < 0) break;
    log.lastEnded = true;
    if (last) last.ended = true;
    text = text.slice(at + 1);
  }
}

/**
 * Applies a live chunk once (by seq). Returns whether it changed the log.
 * @param {Log} log
 * @param {Chunk} chunk
 * @returns {boolean}
 */
export function applyChunk(log, chunk) {
  if (!log.ready) { log.pending.push(chunk); return false; }
  if (!(chunk.seq > log.lastSeq)) return false;
  log.lastSeq = chunk.seq;
  log.recent.push(chunk);
  if (log.recent.length > RECENT) log.recent.splice(0, log.recent.length - RECENT);
  appendText(log, chunk);
  trim(log, hi(log));
  return true;
}

/**
 * Merges a page of lines. A page that touches the window extends it; any
 * other replaces it. A page that reaches the end sets the counts (and live
 * chunks counted since are laid on it again).
 * @param {Log} log
 * @param {Page} page
 * @param {number} [keep]  the line the reader looks at: trimming keeps it
 */
export function mergePage(log, page, keep) {
  const lines = page.lines || [];
  if (lines.length) {
    const a = lines[0].n;
    const b = lines[lines.length - 1].n;
    if (log.lines.length && b + 1 >= log.lo && a <= hi(log) + 1) {
      const before = log.lines.filter((l) => l.n < a);
      const after = log.lines.filter((l) => l.n > b);
      log.lines = [...before, ...lines, ...after];
      log.lo = log.lines[0].n;
    } else {
      log.lines = lines.slice();
      log.lo = a;
    }
  }
  const first = !log.ready;
  if (page.end) {
    // The page is the log as of chunk page.lastSeq: lay the later chunks on it.
    const replay = (first ? log.pending : log.recent).filter((c) => c.seq > page.lastSeq);
    const last = lines.length ? lines[lines.length - 1] : null;
    log.lines = log.lines.filter((l) => l.n <= page.total);
    log.total = page.total;
    log.lastEnded = last && last.n === page.total ? last.ended : true;
    const seen = Math.max(log.lastSeq, page.lastSeq);
    for (const chunk of replay) appendText(log, chunk);
    log.lastSeq = Math.max(seen, ...replay.map((c) => c.seq));
    if (first) { log.recent = replay; log.pending = []; }
  } else {
    log.total = Math.max(log.total, page.total);
  }
  log.ready = true;
  trim(log, keep ?? hi(log));
}

/**
 * Keeps at most `max` lines, those nearest to line `keep`.
 * @param {Log} log
 * @param {number} keep
 */
function trim(log, keep) {
  const extra = log.lines.length - log.max;
  if (extra <= 0) return;
  const idx = Math.max(0, Math.min(log.lines.length - 1, keep - log.lo));
  let start = Math.max(0, Math.min(idx - Math.floor(log.max / 2), log.lines.length - log.max));
  if (keep >= hi(log)) start = log.lines.length - log.max;
  log.lines = log.lines.slice(start, start + log.max);
  log.lo = log.lines[0].n;
}

/**
 * The first gap in [from, to] the window does not hold, as a range, or null.
 * @param {Log} log
 * @param {number} from
 * @param {number} to
 * @returns {[number, number] | null}
 */
export function missing(log, from, to) {
  const a = Math.max(1, from);
  const b = Math.min(log.total, to);
  if (a > b) return null;
  if (!log.lines.length || b < log.lo || a > hi(log)) return [a, b];
  if (a < log.lo) return [a, log.lo - 1];
  if (b > hi(log)) return [hi(log) + 1, b];
  return null;
}
