// Unit tests of the dashboard's section folding (crates/server/assets/groups.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classify, layout } from '../../crates/server/assets/groups.js';

test('GitHub and GitLab markers are recognised', () => {
  assert.deepEqual(classify('::group::Install deps'), { kind: 'start', name: '', title: 'Install deps', collapsed: false });
  assert.deepEqual(classify('::endgroup::'), { kind: 'end', name: '' });
  assert.deepEqual(classify('section_start:1700000000:build[collapsed=true]\r\x1b[0K\x1b[36mBuilding\x1b[0m'),
    { kind: 'start', name: 'build', title: 'Building', collapsed: true });
  assert.deepEqual(classify('section_end:1700000001:build\r\x1b[0K'), { kind: 'end', name: 'build' });
  // As GitLab's runner writes them: each marker after an erase-line sequence.
  assert.deepEqual(classify('\x1b[0Ksection_start:1700000000:test[collapsed=true]\r\x1b[0KTesting'),
    { kind: 'start', name: 'test', title: 'Testing', collapsed: true });
  assert.deepEqual(classify('\x1b[0Ksection_end:1700000001:test\r\x1b[0K'), { kind: 'end', name: 'test' });
  assert.deepEqual(classify('\x1b[31mERROR\x1b[0m: no'), { kind: 'error' });
  assert.equal(classify('terrorist mirrors'), null);
});

test('sections fold by default, nest, and end markers are not shown', () => {
  const lines = ['a', '::group::outer', 'b', '::group::inner', 'c', '::endgroup::', 'd', '::endgroup::', 'e'];
  const folded = layout(1, lines);
  assert.deepEqual(folded.rows, [1, 2, 9]);
  assert.deepEqual(folded.sections.map((s) => [s.start, s.end, s.depth, s.open]), [[2, 8, 0, false], [4, 6, 1, false]]);
  const outerOpen = layout(1, lines, { folds: { 2: true } });
  assert.deepEqual(outerOpen.rows, [1, 2, 3, 4, 7, 9]);
  const bothOpen = layout(1, lines, { folds: { 2: true, 4: true } });
  assert.deepEqual(bothOpen.rows, [1, 2, 3, 4, 5, 7, 9]);
  assert.equal(bothOpen.depth.get(5), 2);
});

test('a section with an error line opens by itself, and so do its parents', () => {
  const lines = ['::group::outer', 'section_start:1:inner\r\x1b[0Kinner', 'error: boom', 'section_end:2:inner\r\x1b[0K', '::endgroup::', '::group::fine', 'ok', '::endgroup::'];
  const lay = layout(10, lines);
  assert.deepEqual(lay.sections.map((s) => [s.title, s.open, s.error]), [['outer', true, true], ['inner', true, true], ['fine', false, false]]);
  // The reader's choice wins.
  assert.equal(layout(10, lines, { folds: { 10: false } }).sections[0].open, false);
});

test('every section of a failed step opens, and a running one at the end of the log', () => {
  const lines = ['::group::one', 'x', '::endgroup::', '::group::two', 'y'];
  assert.deepEqual(layout(1, lines, { failed: true }).rows, [1, 2, 4, 5]);
  assert.deepEqual(layout(1, lines, { atEnd: true }).rows, [1, 4, 5]);
  assert.deepEqual(layout(1, lines).rows, [1, 4]);
});

test('a GitLab end closes the sections opened inside its own', () => {
  const lines = ['section_start:1:a\r\x1b[0KA', 'section_start:2:b\r\x1b[0KB', 'x', 'section_end:3:a\r\x1b[0K', 'after'];
  const lay = layout(1, lines, { folds: { 1: true, 2: true } });
  assert.deepEqual(lay.sections.map((s) => [s.start, s.end]), [[1, 4], [2, 4]]);
  assert.deepEqual(lay.rows, [1, 2, 3, 5]);
  assert.equal(lay.depth.get(5), 0);
});
