// Unit tests of the dashboard's event reducer (crates/server/assets/reducer.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadSnapshot, newDetail, reduceDetail, reduceListJob } from '../../crates/server/assets/reducer.js';

const JOB = 'j1';
const ev = (seq, extra) => ({ jobId: JOB, workspaceId: 'w', seq, timestamp: `2026-01-01T00:00:0${seq % 10}.000Z`, ...extra });

test('the list entry takes each newer event once', () => {
  const job = { id: JOB, workspaceId: 'w', type: 't', status: 'queued', lastSeq: 2 };
  assert.equal(reduceListJob(job, 'job:progress', ev(2, { progress: 5 })), null);
  const running = reduceListJob(job, 'job:status', ev(3, { status: 'running' }));
  assert.equal(running.status, 'running');
  assert.equal(running.startedAt, ev(3).timestamp);
  const stepped = reduceListJob(running, 'step:started', ev(4, { name: 'build' }));
  assert.equal(stepped.stepName, 'build');
  const done = reduceListJob(stepped, 'job:status', ev(5, { status: 'failed', error: 'boom' }));
  assert.deepEqual([done.status, done.error, done.stepName, done.lastSeq], ['failed', 'boom', null, 5]);
});

test('the detail applies events after its snapshot, once, and hands output on', () => {
  const d = newDetail(JOB);
  loadSnapshot(d, { id: JOB, type: 't', status: 'running', lastSeq: 4,
    steps: [{ id: 's1', name: 'build', status: 'running' }] });
  assert.equal(reduceDetail(d, 'step:output', ev(4, { stepId: 's1', chunk: 'old' })).applied, false);
  const out = reduceDetail(d, 'step:output', ev(5, { stepId: 's1', chunk: 'new\n', stream: 'stderr' }));
  assert.deepEqual(out.output, { stepId: 's1', seq: 5, chunk: 'new\n', stream: 'stderr', timestamp: ev(5).timestamp });
  const started = reduceDetail(d, 'step:started', ev(6, { stepId: 's2', name: 'test', phase: 'execution', stepType: 'command' }));
  assert.equal(started.startedStep, 's2');
  assert.deepEqual(d.order, ['s1', 's2']);
  reduceDetail(d, 'job:event', ev(7, { stepId: 's2', type: 'gate.passed', payload: { gate: 'lint' } }));
  assert.deepEqual(d.steps.get('s2').events, ['▸ gate.passed {"gate":"lint"}']);
  reduceDetail(d, 'step:completed', ev(8, { stepId: 's2', status: 'failed', error: 'x', durationMs: 3 }));
  assert.equal(d.steps.get('s2').status, 'failed');
  const end = reduceDetail(d, 'job:status', ev(9, { status: 'failed', error: 'x' }));
  assert.equal(d.finished, true);
  assert.match(end.announce, /failed/);
  assert.equal(d.lastSeq, 9);
});
