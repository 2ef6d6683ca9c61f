// @ts-check
// Job events applied to the dashboard's state, each exactly once and in seq
// order (pure: no DOM). Event shapes are the contract's (§3, §4).

export const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
export const ACTIVE = new Set(['pending', 'queued', 'running']);

/**
 * A step as the detail view keeps it.
 * @typedef {object} Step
 * @property {string} id
 * @property {string} name
 * @property {string} [phase]
 * @property {string} [stepType]
 * @property {string} status
 * @property {string | null} [startedAt]
 * @property {string | null} [completedAt]
 * @property {number | null} [durationMs]
 * @property {string | null} [error]
 * @property {number | null} progress
 * @property {string[]} events  the step's custom events, as short text
 */

/**
 * A job snapshot (contract §4), as far as the dashboard reads it.
 * @typedef {object} Job
 * @property {string} id
 * @property {string} workspaceId
 * @property {string} type
 * @property {string} status
 * @property {number} [progress]
 * @property {string | null} [progressMessage]
 * @property {number} lastSeq
 * @property {string} [updatedAt]
 * @property {string | null} [startedAt]
 * @property {string | null} [completedAt]
 * @property {string | null} [error]
 * @property {unknown} [result]
 * @property {string | null} [stepName]
 */

/**
 * The open job.
 * @typedef {object} Detail
 * @property {string} id
 * @property {Job | null} job
 * @property {number} baseSeq  the snapshot's lastSeq: events up to it are in the snapshot
 * @property {number} lastSeq  the last event applied
 * @property {Map<string, Step>} steps
 * @property {string[]} order
 * @property {boolean} finished
 */

/**
 * What applying an event did, for the caller to act on.
 * @typedef {object} Effect
 * @property {boolean} applied  false for an event already applied (or of another job)
 * @property {boolean} [fresh]  after the snapshot: it changed the job
 * @property {string} [announce]  a sentence for screen readers
 * @property {string} [startedStep]  a step that started
 * @property {{stepId: string, seq: number, chunk: string, stream: string, timestamp: string}} [output]
 */

/**
 * Sets a job's status fields from a `job:status` event.
 * @param {Job} job
 * @param {any} e
 */
export function applyStatus(job, e) {
  job.status = e.status;
  if (e.status === 'running' && !job.startedAt) job.startedAt = e.timestamp;
  if (TERMINAL.has(e.status)) job.completedAt = e.timestamp;
  if ('error' in e) job.error = e.error;
  if ('result' in e) job.result = e.result;
}

/**
 * A list entry after event `e`, or null when `e` is not newer than it.
 * @param {Job} job
 * @param {string} name  the Socket.IO / SSE event name
 * @param {any} e
 * @returns {Job | null}
 */
export function reduceListJob(job, name, e) {
  if (!e || e.jobId !== job.id || !(e.seq > job.lastSeq)) return null;
  const next = { ...job, lastSeq: e.seq, updatedAt: e.timestamp };
  if (name === 'job:status') {
    applyStatus(next, e);
    if (TERMINAL.has(e.status)) next.stepName = null;
  } else if (name === 'job:progress') {
    next.progress = e.progress;
  } else if (name === 'step:started') {
    next.stepName = e.name;
  }
  return next;
}

/**
 * A detail for job `id`, before its snapshot.
 * @param {string} id
 * @returns {Detail}
 */
export function newDetail(id) {
  return { id, job: null, baseSeq: 0, lastSeq: 0, steps: new Map(), order: [], finished: false };
}

/**
 * Takes the job snapshot (with its steps): the state up to its lastSeq.
 * @param {Detail} d
 * @param {any} snapshot
 */
export function loadSnapshot(d, snapshot) {
  const { steps = [], ...job } = snapshot;
  d.job = job;
  d.baseSeq = job.lastSeq;
  d.lastSeq = job.lastSeq;
  d.finished = TERMINAL.has(job.status);
  d.steps.clear();
  d.order = [];
  for (const s of steps) {
    d.steps.set(s.id, { ...s, progress: null, events: [] });
    d.order.push(s.id);
  }
}

/**
 * Applies one job event to the detail, once (by seq).
 * @param {Detail} d
 * @param {string} name
 * @param {any} e
 * @returns {Effect}
 */
export function reduceDetail(d, name, e) {
  if (!d.job || !e || e.jobId !== d.id || !(e.seq > d.lastSeq)) return { applied: false };
  d.lastSeq = e.seq;
  const job = d.job;
  job.lastSeq = e.seq;
  job.updatedAt = e.timestamp;
  /** @type {Effect} */
  const effect = { applied: true, fresh: true };
  let step = e.stepId ? d.steps.get(e.stepId) : undefined;
  switch (name) {
    case 'job:status':
      applyStatus(job, e);
      effect.announce = `Job ${job.type} is now ${e.status}.`;
      if (TERMINAL.has(e.status)) d.finished = true;
      break;
    case 'job:progress':
      job.progress = e.progress;
      job.progressMessage = e.message || null;
      break;
    case 'step:started':
      if (!step) {
        step = { id: e.stepId, name: e.name, phase: e.phase, stepType: e.stepType, status: 'running',
          startedAt: e.timestamp, completedAt: null, durationMs: null, error: null, progress: null, events: [] };
        d.steps.set(e.stepId, step);
        d.order.push(e.stepId);
      }
      job.stepName = e.name;
      effect.startedStep = e.stepId;
      break;
    case 'step:progress':
      if (step) step.progress = e.progress;
      break;
    case 'step:output':
      if (step) {
        effect.output = { stepId: e.stepId, seq: e.seq, chunk: String(e.chunk ?? ''), stream: e.stream || 'stdout',
          timestamp: e.timestamp };
      }
      break;
    case 'step:completed':
      if (step) {
        Object.assign(step, { status: e.status, durationMs: e.durationMs ?? null, error: e.error || null,
          completedAt: e.timestamp, progress: null });
      }
      break;
    case 'job:event':
      if (step) {
        const payload = e.payload && Object.keys(e.payload).length ? ` ${JSON.stringify(e.payload)}` : '';
        step.events.push(`▸ ${e.type}${payload}`.slice(0, 300));
        if (step.events.length > 20) step.events.shift();
      }
      break;
    default:
  }
  return effect;
}
