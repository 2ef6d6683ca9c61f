// Unit tests of the dashboard's log window (crates/server/assets/logmodel.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { applyChunk, createLog, lineAt, mergePage, missing } from '../../crates/server/assets/logmodel.js';

const T = '2026-01-01T00:00:00.000Z';
const line = (n, text, ended = true) => ({ n, text, timestamp: T, stream: 'stdout', ended });
const chunk = (seq, text) => ({ seq, chunk: text, stream: 'stdout', timestamp: T });
const texts = (log) => log.lines.map((l) => [l.n, l.text, l.ended]);

test('live chunks continue the last line and count each seq once', () => {
  const log = createLog();
  mergePage(log, { lines: [line(1, 'a'), line(2, 'par', false)], total: 2, end: true, lastSeq: 5 });
  assert.equal(applyChunk(log, chunk(5, 'old')), false);
  applyChunk(log, chunk(6, 'tial\nnext\n'));
  applyChunk(log, chunk(6, 'again'));
  applyChunk(log, chunk(7, 'last'));
  assert.deepEqual(texts(log), [[1, 'a', true], [2, 'partial', true], [3, 'next', true], [4, 'last', false]]);
  assert.equal(log.total, 4);
});

test('chunks that come before the first page wait for it, and the older ones are dropped', () => {
  const log = createLog();
  applyChunk(log, chunk(3, 'x\n'));
  applyChunk(log, chunk(4, 'y\n'));
  mergePage(log, { lines: [line(1, 'x')], total: 1, end: true, lastSeq: 3 });
  assert.deepEqual(texts(log), [[1, 'x', true], [2, 'y', true]]);
  assert.equal(log.lastSeq, 4);
});

test('pages above the window extend it; a far page replaces it; the tail is still counted', () => {
  const log = createLog();
  mergePage(log, { lines: [line(99, 'l99'), line(100, 'l100')], total: 100, end: true, lastSeq: 100 });
  mergePage(log, { lines: [line(97, 'l97'), line(98, 'l98')], total: 100, end: false, lastSeq: 98 });
  assert.deepEqual(log.lines.map((l) => l.n), [97, 98, 99, 100]);
  assert.deepEqual(missing(log, 90, 100), [90, 96]);
  mergePage(log, { lines: [line(10, 'l10')], total: 100, end: false, lastSeq: 10 });
  assert.deepEqual(log.lines.map((l) => l.n), [10]);
  applyChunk(log, chunk(101, 'l101\n'));
  assert.equal(log.total, 101);
  assert.equal(lineAt(log, 101), undefined);
  // Reading down to the end again lays the live chunk on the page.
  mergePage(log, { lines: [line(11, 'l11'), line(100, 'l100')].slice(1), total: 100, end: true, lastSeq: 100 });
  assert.equal(lineAt(log, 101).text, 'l101');
  assert.equal(log.total, 101);
});

test('the window keeps at most max lines, those near the reader', () => {
  const log = createLog(3);
  mergePage(log, { lines: [1, 2, 3, 4, 5].map((n) => line(n, `l${n}`)), total: 5, end: true, lastSeq: 9 });
  assert.deepEqual(log.lines.map((l) => l.n), [3, 4, 5]);
  mergePage(log, { lines: [line(1, 'l1'), line(2, 'l2')], total: 5, end: false, lastSeq: 2 }, 1);
  assert.deepEqual(log.lines.map((l) => l.n), [1, 2, 3]);
});
