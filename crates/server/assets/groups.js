// @ts-check
// Collapsible sections of a log (pure: no DOM).
//
// - GitHub Actions: `::group::Title` … `::endgroup::`.
// - GitLab CI: `section_start:TIMESTAMP:NAME[OPTIONS]\r\e[0KTitle` …
//   `section_end:TIMESTAMP:NAME\r\e[0K`; an end closes the innermost open
//   section of that name (and any opened inside it); `[collapsed=true]` asks
//   for the section to start folded.
// Sections nest. A section opens by itself when it holds an error line (or
// a section that does), when its step failed, or when it is still running
// at the end of the log; otherwise it starts folded, unless the reader
// opened or folded it (`folds`, kept by the caller, by start line number).
// End-marker lines are not shown; a start-marker line is the section's
// header row.

/**
 * @typedef {object} Section
 * @property {number} start  line number of the start marker
 * @property {number | null} end  line number of the end marker, null if not seen
 * @property {string} title
 * @property {number} depth  0 for a top-level section
 * @property {boolean} error  holds an error line
 * @property {boolean} open
 */

/**
 * What to draw for the lines from..to of a log.
 * @typedef {object} Layout
 * @property {Section[]} sections  in start order
 * @property {number[]} rows  the line numbers shown, in order
 * @property {Map<number, Section>} headers  start line number -> its section
 * @property {Map<number, number>} depth  line number -> how many sections hold it
 */

const ESC_STRIP = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]?/g;
const GH_START = /^::group::(.*)$/;
const GH_END = /^::endgroup::\s*$/;
const GL_START = /^(?:\x1b\[0?K)?section_start:\d+:([A-Za-z0-9_.-]+)(\[[^\]]*\])?\r(?:\x1b\[0?K)?(.*)$/;
const GL_END = /^(?:\x1b\[0?K)?section_end:\d+:([A-Za-z0-9_.-]+)\r?(?:\x1b\[0?K)?\s*$/;
const ERROR_LINE = /(^|[^a-z])(error|fatal|failed|panicked)([^a-z]|$)|^::error/i;

/**
 * What a line says about sections.
 * @param {string} text  the raw line (escape sequences included)
 * @returns {{kind: 'start', name: string, title: string, collapsed: boolean}
 *   | {kind: 'end', name: string} | {kind: 'error'} | null}
 */
export function classify(text) {
  const gl = GL_START.exec(text);
  if (gl) {
    const title = gl[3].replace(ESC_STRIP, '').replace(/\r/g, '').trim() || gl[1];
    return { kind: 'start', name: gl[1], title, collapsed: /collapsed=true/.test(gl[2] || '') };
  }
  const glEnd = GL_END.exec(text);
  if (glEnd) return { kind: 'end', name: glEnd[1] };
  const plain = text.replace(ESC_STRIP, '');
  const lastCr = plain.lastIndexOf('\r', plain.length - 2);
  const visible = lastCr >= 0 ? plain.slice(lastCr + 1) : plain;
  const gh = GH_START.exec(visible);
  if (gh) return { kind: 'start', name: '', title: gh[1].trim() || 'Group', collapsed: false };
  if (GH_END.test(visible)) return { kind: 'end', name: '' };
  if (ERROR_LINE.test(visible)) return { kind: 'error' };
  return null;
}

/**
 * Lays out lines `first`..`first + texts.length - 1`.
 * @param {number} first  number of the first line
 * @param {string[]} texts  the raw lines
 * @param {{failed?: boolean, atEnd?: boolean, folds?: Record<string, boolean>}} [opts]
 *   failed: the step failed; atEnd: the last line is the last of the log;
 *   folds: the reader's choices, start line -> open
 * @returns {Layout}
 */
export function layout(first, texts, opts = {}) {
  const folds = opts.folds || {};
  /** @type {Section[]} */
  const sections = [];
  /** @type {{section: Section, name: string, collapsed: boolean}[]} */
  const stack = [];
  /** @type {Map<number, 'start' | 'end'>} */
  const marks = new Map();
  /** @type {Map<number, Section[]>} */
  const holders = new Map();
  /** @type {Set<Section>} */
  const collapsedAsked = new Set();
  for (let i = 0; i < texts.length; i += 1) {
    const n = first + i;
    const what = classify(texts[i]);
    if (what && what.kind === 'start') {
      const section = { start: n, end: null, title: what.title, depth: stack.length, error: false, open: false };
      sections.push(section);
      holders.set(n, stack.map((s) => s.section));
      stack.push({ section, name: what.name, collapsed: what.collapsed });
      if (what.collapsed) collapsedAsked.add(section);
      marks.set(n, 'start');
      continue;
    }
    if (what && what.kind === 'end') {
      let at = stack.length - 1;
      while (at >= 0 && stack[at].name !== what.name) at -= 1;
      if (at >= 0) {
        for (let k = stack.length - 1; k >= at; k -= 1) stack[k].section.end = n;
        holders.set(n, stack.slice(0, at + 1).map((s) => s.section));
        stack.length = at;
        marks.set(n, 'end');
        continue;
      }
    }
    holders.set(n, stack.map((s) => s.section));
    if (what && what.kind === 'error') for (const s of stack) s.section.error = true;
  }
  for (const section of sections) {
    const key = String(section.start);
    const running = section.end === null && !!opts.atEnd;
    section.open = key in folds ? !!folds[key] : section.error || !!opts.failed || running;
    if (collapsedAsked.has(section) && !(key in folds) && !section.error && !opts.failed) section.open = false;
  }
  /** @type {number[]} */
  const rows = [];
  /** @type {Map<number, Section>} */
  const headers = new Map();
  /** @type {Map<number, number>} */
  const depth = new Map();
  for (const section of sections) headers.set(section.start, section);
  for (let i = 0; i < texts.length; i += 1) {
    const n = first + i;
    const held = holders.get(n) || [];
    depth.set(n, held.length);
    if (marks.get(n) === 'end') continue;
    if (held.some((s) => !s.open)) continue;
    rows.push(n);
  }
  return { sections, rows, headers, depth };
}
