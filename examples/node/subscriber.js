// Example subscriber: watches every job of a jobstream workspace over Socket.IO
// and prints each event as a readable line. It subscribes to the workspace and
// to each job it sees, remembers the last seq seen per job, and after a
// reconnect subscribes again with `since` = that seq, so that it gets what it
// missed, with nothing lost and nothing repeated.
//
// Run it (Node 20+):
//   npm install
//   jobstream token --sub demo --workspace <id> --scope "subscribe publish"
//   JOBSTREAM_URL=http://127.0.0.1:3000 JOBSTREAM_TOKEN=<token> WORKSPACE_ID=<id> node subscriber.js
// then run producer.js in another terminal. Stop the server and start it again
// to see the reconnect at work.
'use strict';

const { io } = require('socket.io-client');

const SERVER_URL = process.env.JOBSTREAM_URL || 'http://127.0.0.1:3000';
const TOKEN = process.env.JOBSTREAM_TOKEN;
const WORKSPACE_ID = process.env.WORKSPACE_ID;

const EVENTS = [
  'job:created', 'job:status', 'job:progress', 'step:started',
  'step:progress', 'step:output', 'step:completed', 'job:event',
];

const TERMINAL = ['completed', 'failed', 'cancelled'];

// jobId → seq of the last event printed for that job.
const lastSeq = new Map();
// Jobs that reached a terminal status: nothing more to resume for them.
const finished = new Set();

const short = (id) => (id ? id.slice(-8) : '-');

function describe(name, e) {
  switch (name) {
    case 'job:created': return `created (${e.job.type})`;
    case 'job:status': return `${e.previousStatus} → ${e.status}${e.error ? `: ${e.error}` : ''}${
      e.result !== undefined ? ` result ${JSON.stringify(e.result)}` : ''}`;
    case 'job:progress': return `progress ${e.progress}%${e.message ? ` ${e.message}` : ''}`;
    case 'step:started': return `step ${short(e.stepId)} "${e.name}" started (${e.phase}, ${e.stepType})`;
    case 'step:progress': return `step ${short(e.stepId)} ${e.progress}%${e.message ? ` ${e.message}` : ''}`;
    case 'step:output': return `step ${short(e.stepId)} ${e.stream}| ${e.chunk.replace(/\n$/, '')}`;
    case 'step:completed': return `step ${short(e.stepId)} ${e.status} in ${e.durationMs} ms${e.error ? `: ${e.error}` : ''}`;
    default: return `${e.type} ${JSON.stringify(e.payload)}`;
  }
}

function print(name, event) {
  const seen = lastSeq.get(event.jobId) || 0;
  if (event.seq <= seen) return; // already printed
  if (seen && event.seq !== seen + 1) console.warn(`! job ${short(event.jobId)}: events ${seen + 1}–${event.seq - 1} missing`);
  lastSeq.set(event.jobId, event.seq);
  if (name === 'job:status' && TERMINAL.includes(event.status)) finished.add(event.jobId);
  const time = event.timestamp.slice(11, 23);
  console.log(`${time} job ${short(event.jobId)} #${String(event.seq).padStart(3)} ${describe(name, event)}`);
}

function check(what, ack) {
  if (!ack.ok) throw new Error(`${what}: ${ack.error.code}: ${ack.error.message}`);
  return ack;
}

// since: undefined for live events only, or the seq to resume after.
async function subscribeJob(socket, jobId, since) {
  const payload = since === undefined ? { jobId } : { jobId, since };
  const ack = await socket.timeout(5000).emitWithAck('subscribe:job', payload);
  if (!ack.ok && ack.error.code === 'invalid_cursor') {
    // The workspace subscription already gave newer events of this job: the
    // older ones are in GET /api/v1/jobs/{id}/events, not on this socket.
    console.log(`  job ${short(jobId)}: ${ack.error.message}`);
    return;
  }
  check(`subscribe:job ${jobId}`, ack);
  if (!lastSeq.has(jobId) && since === undefined) lastSeq.set(jobId, ack.job.lastSeq);
}

// resuming: true after a reconnect, when events may have been missed.
async function subscribeAll(socket, resuming) {
  // Jobs seen before the disconnect first, resuming after the last seq printed.
  const unfinished = [...lastSeq.entries()].filter(([jobId]) => !finished.has(jobId));
  for (const [jobId, seq] of unfinished) await subscribeJob(socket, jobId, seq);

  const ack = check('subscribe:workspace:jobs',
    await socket.timeout(5000).emitWithAck('subscribe:workspace:jobs', { workspaceId: WORKSPACE_ID }));
  console.log(`subscribed to ${ack.room}: ${ack.jobs.length} recent job(s)`);
  for (const job of ack.jobs) {
    if (lastSeq.has(job.id)) continue;
    if (resuming) {
      await subscribeJob(socket, job.id, 0); // created while we were away: its whole history
    } else {
      console.log(`  job ${short(job.id)} ${job.type} ${job.status} ${job.progress}% (seq ${job.lastSeq})`);
      lastSeq.set(job.id, job.lastSeq);
    }
  }
}

function main() {
  if (!TOKEN || !WORKSPACE_ID) {
    console.error('Set JOBSTREAM_TOKEN and WORKSPACE_ID; see the top of this file.');
    process.exit(2);
  }
  const socket = io(SERVER_URL, { auth: { token: TOKEN } });

  for (const name of EVENTS) {
    socket.on(name, (event) => {
      print(name, event);
      if (name === 'job:created') {
        subscribeJob(socket, event.jobId).catch((err) => console.error(err.message));
      }
    });
  }

  let connectedBefore = false;
  socket.on('connect', () => {
    const resuming = connectedBefore;
    connectedBefore = true;
    console.log(resuming ? 'reconnected' : `connected to ${SERVER_URL}`);
    subscribeAll(socket, resuming).catch((err) => console.error(err.message));
  });
  socket.on('disconnect', (reason) => {
    console.log(`disconnected (${reason})`);
    if (reason === 'io server disconnect') socket.connect(); // the client does not retry this one by itself
  });
  socket.on('connect_error', (err) => {
    console.error(`cannot connect: ${err.message}`);
    if (err.message.startsWith('unauthorized')) process.exit(1); // retrying will not help
  });
}

main();
