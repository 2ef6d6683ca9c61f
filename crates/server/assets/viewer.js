// @ts-check
// The log viewer: one step's log of any size in a virtualised pane. Only the
// rows in view (and a few around them) are in the DOM; the lines come from
// `GET …/log/lines` a page at a time (the tail first) and from live
// `step:output` chunks; a window of at most 20,000 lines is held. Follows
// the tail until the reader scrolls up; search runs on the server
// (`…/log/search`), so it finds lines not loaded yet.

import { parseLine, paletteColour } from './ansi.js';
import { layout } from './groups.js';
import { applyChunk, createLog, hi, holdsTail, lineAt, mergePage, missing } from './logmodel.js';

const ROW_H = 20;            // px, as .term .ln in app.css
const MAX_PX = 8_000_000;    // past this the scroll range is scaled
const OVERSCAN = 20;         // rows drawn above and below the view
const PAGE = 1000;           // lines asked per page
const TAIL = 500;            // lines asked when a step opens
const TS_KEY = 'jobstream.timestamps';
const FOLD_KEY = 'jobstream.folds.';
const MAX_MATCHES = 1000;

const local = {
  get: (/** @type {string} */ k) => { try { return localStorage.getItem(k); } catch { return null; } },
  set: (/** @type {string} */ k, /** @type {string} */ v) => { try { localStorage.setItem(k, v); } catch { /* full or off */ } },
};

/**
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/**
 * @typedef {object} ViewerOptions
 * @property {HTMLElement} pane  the scrolling element
 * @property {HTMLElement} jump  the "jump to latest" button
 * @property {HTMLElement} tools  the toolbar (search, timestamps, download, raw)
 * @property {(path: string) => Promise<any>} getJson
 * @property {(path: string) => Promise<Response>} getRaw
 * @property {(text: string) => void} onMeta  the line count and state, for the header
 * @property {(range: [number, number] | null) => void} onSelect  lines selected (for the URL)
 * @property {(n: number) => string} [lineHref]  the deep link of line `n`
 */

export class LogViewer {
  /** @param {ViewerOptions} opts */
  constructor(opts) {
    this.o = opts;
    this.spacer = el('div', 'spacer');
    this.rowsBox = el('div', 'rows');
    this.note = el('div', 'log-note');
    this.note.hidden = true;
    opts.pane.replaceChildren(this.spacer, this.rowsBox, this.note);
    /** @type {ReturnType<typeof createLog>} */
    this.log = createLog();
    this.stepId = null;
    this.base = '';
    this.follow = true;
    this.failed = false;
    this.timestamps = local.get(TS_KEY) === '1';
    /** @type {Record<string, boolean>} */
    this.folds = {};
    /** @type {ReturnType<typeof layout> | null} */
    this.lay = null;
    this.layDirty = true;
    this.frame = 0;
    this.loading = false;
    /** @type {[number, number] | null} */
    this.selection = null;
    /** @type {number | undefined} the line of the last plain click: where a shift-click range starts */
    this.anchorLine = undefined;
    this.query = '';
    /** @type {number[]} */
    this.matches = [];
    this.matchAt = -1;
    this.generation = 0;
    this.lastTop = 0;
    /** @type {Map<number, {key: string, node: HTMLElement}>} */
    this.cache = new Map();
    this.look = '';
    /** @type {ReturnType<typeof layout> | null} */
    this.layVersion = null;
    this.buildTools();
    opts.pane.addEventListener('scroll', () => this.onScroll(), { passive: true });
    opts.pane.addEventListener('click', (ev) => this.onClick(ev));
    opts.jump.addEventListener('click', () => { this.follow = true; this.o.jump.hidden = true; this.toBottom(); });
    document.addEventListener('keydown', (ev) => this.onKey(ev));
    new ResizeObserver(() => this.schedule()).observe(opts.pane);
  }

  buildTools() {
    const t = this.o.tools;
    this.search = /** @type {HTMLInputElement} */ (el('input', 'log-search'));
    Object.assign(this.search, { type: 'search', placeholder: 'Search log', spellcheck: false });
    this.search.setAttribute('aria-label', 'Search this step\'s log');
    this.search.dataset.testid = 'log-search';
    this.count = el('span', 'log-count');
    this.count.dataset.testid = 'log-search-count';
    const button = (/** @type {string} */ text, /** @type {string} */ testid, /** @type {string} */ title) => {
      const b = /** @type {HTMLButtonElement} */ (el('button', 'btn small', text));
      b.type = 'button';
      b.dataset.testid = testid;
      b.title = title;
      b.setAttribute('aria-label', title);
      return b;
    };
    const prev = button('↑', 'log-prev', 'Previous match (Shift+Enter)');
    const next = button('↓', 'log-next', 'Next match (Enter)');
    this.tsButton = button('Time', 'log-timestamps', 'Show timestamps (t)');
    const download = button('Download', 'log-download', 'Download the raw log');
    const raw = button('Raw', 'log-raw', 'Open the raw log');
    t.replaceChildren(this.search, this.count, prev, next, this.tsButton, download, raw);
    this.search.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); this.runSearch(ev.shiftKey ? -1 : 1); }
      if (ev.key === 'Escape') { this.search.value = ''; this.runSearch(0); }
    });
    prev.addEventListener('click', () => this.runSearch(-1));
    next.addEventListener('click', () => this.runSearch(1));
    this.tsButton.addEventListener('click', () => this.toggleTimestamps());
    download.addEventListener('click', () => this.download(false));
    raw.addEventListener('click', () => this.download(true));
    this.syncTimestamps();
  }

  /**
   * Shows a step's log: the tail, or around `range` (a deep link).
   * @param {{jobId: string, stepId: string, name: string, failed: boolean, range?: [number, number] | null}} what
   */
  open(what) {
    if (this.stepId === what.stepId) {
      if (what.range) this.select(what.range, true);
      return;
    }
    this.generation += 1;
    this.stepId = what.stepId;
    this.name = what.name;
    this.failed = what.failed;
    this.base = `/api/v1/jobs/${encodeURIComponent(what.jobId)}/steps/${encodeURIComponent(what.stepId)}/log`;
    this.log = createLog();
    this.folds = this.loadFolds();
    this.layDirty = true;
    this.matches = [];
    this.matchAt = -1;
    this.query = '';
    this.search.value = '';
    this.count.textContent = '';
    this.selection = what.range || null;
    this.anchorLine = what.range ? what.range[0] : undefined;
    this.follow = !what.range;
    this.o.jump.hidden = true;
    this.loading = false;
    this.note.hidden = true;
    this.setTop(0);
    const gen = this.generation;
    this.loading = true;
    // The tail first: its counts place live chunks; then the lines linked to.
    this.o.getJson(`${this.base}/lines?tail=${what.range ? 1 : TAIL}`).then(async (tail) => {
      if (gen !== this.generation) return;
      mergePage(this.log, tail);
      if (what.range) {
        const from = Math.max(1, what.range[0] - 200);
        const page = await this.o.getJson(`${this.base}/lines?from=${from}&limit=${PAGE}`);
        if (gen !== this.generation) return;
        mergePage(this.log, page, what.range[0]);
      }
      this.loading = false;
      this.layDirty = true;
      this.render();
      if (what.range) this.scrollToLine(what.range[0]);
      else this.toBottom();
    }, (err) => {
      if (gen !== this.generation) return;
      this.loading = false;
      this.note.hidden = false;
      this.note.textContent = `Could not load the log (${err.message}).`;
    });
    this.render();
  }

  close() {
    this.generation += 1;
    this.stepId = null;
    this.log = createLog();
    this.layDirty = true;
    this.rowsBox.replaceChildren();
    this.spacer.style.height = '0px';
  }

  /** @param {boolean} failed */
  setFailed(failed) {
    if (this.failed !== failed) { this.failed = failed; this.layDirty = true; this.schedule(); }
  }

  /**
   * A live `step:output` chunk of the shown step.
   * @param {{seq: number, chunk: string, stream: string, timestamp: string}} chunk
   */
  onChunk(chunk) {
    if (applyChunk(this.log, chunk)) { this.layDirty = true; this.schedule(); }
  }

  loadFolds() {
    try { return JSON.parse(local.get(FOLD_KEY + this.stepId) || '{}') || {}; } catch { return {}; }
  }

  saveFolds() {
    const keys = Object.keys(this.folds);
    if (keys.length > 500) for (const k of keys.slice(0, keys.length - 500)) delete this.folds[k];
    local.set(FOLD_KEY + this.stepId, JSON.stringify(this.folds));
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  // ------------------------------------------------------------ rows <-> lines

  layout() {
    if (this.layDirty || !this.lay) {
      const texts = this.log.lines.map((l) => l.text);
      this.lay = layout(this.log.lo, texts, { failed: this.failed, atEnd: holdsTail(this.log), folds: this.folds });
      this.layDirty = false;
    }
    return this.lay;
  }

  rowCount() {
    const log = this.log;
    if (!log.lines.length) return log.total;
    return (log.lo - 1) + this.layout().rows.length + Math.max(0, log.total - hi(log));
  }

  /** @param {number} row */
  lineOfRow(row) {
    const log = this.log;
    if (!log.lines.length || row < log.lo - 1) return row + 1;
    const rows = this.layout().rows;
    const k = row - (log.lo - 1);
    if (k < rows.length) return rows[k];
    return hi(log) + 1 + (k - rows.length);
  }

  /** @param {number} n */
  rowOfLine(n) {
    const log = this.log;
    if (!log.lines.length || n < log.lo) return n - 1;
    if (n > hi(log)) return (log.lo - 1) + this.layout().rows.length + (n - hi(log) - 1);
    const rows = this.layout().rows;
    let a = 0;
    let b = rows.length;
    while (a < b) { const m = (a + b) >> 1; if (rows[m] < n) a = m + 1; else b = m; }
    return (log.lo - 1) + a;
  }

  geometry() {
    const rows = this.rowCount();
    const view = this.o.pane.clientHeight || 400;
    const full = rows * ROW_H;
    const height = Math.min(full, MAX_PX);
    const visible = Math.ceil(view / ROW_H);
    return { rows, view, height, scaled: full > MAX_PX, visible };
  }

  /** The first row at the top of the view. */
  topRow() {
    const g = this.geometry();
    const top = this.o.pane.scrollTop;
    if (!g.scaled) return Math.floor(top / ROW_H);
    const range = Math.max(1, g.height - g.view);
    return Math.round((top / range) * Math.max(0, g.rows - g.visible));
  }

  /** @param {number} row */
  scrollToRow(row) {
    const g = this.geometry();
    const target = Math.max(0, Math.min(row, Math.max(0, g.rows - g.visible)));
    const top = g.scaled ? (target / Math.max(1, g.rows - g.visible)) * Math.max(1, g.height - g.view) : target * ROW_H;
    this.setTop(top);
    this.render();
  }

  toBottom() {
    this.render();
    this.setTop(this.o.pane.scrollHeight);
    this.render();
  }

  /**
   * Brings line n into view (opening the sections that hide it).
   * @param {number} n
   */
  scrollToLine(n) {
    const lay = this.layout();
    let changed = false;
    for (const s of lay.sections) {
      if (!s.open && s.start < n && (s.end === null || n <= s.end)) { this.folds[String(s.start)] = true; changed = true; }
    }
    if (changed) { this.layDirty = true; this.saveFolds(); }
    this.follow = false;
    this.o.jump.hidden = false;
    const g = this.geometry();
    this.scrollToRow(this.rowOfLine(n) - Math.floor(g.visible / 3));
  }

  // ------------------------------------------------------------ drawing

  render() {
    const pane = this.o.pane;
    const g = this.geometry();
    this.spacer.style.height = `${g.height}px`;
    // A hidden pane has no view: draw (and fetch) when it shows (ResizeObserver).
    if (!pane.clientHeight) return;
    if (this.follow && holdsTail(this.log)) {
      const bottom = Math.max(0, g.height - g.view);
      if (Math.abs(pane.scrollTop - bottom) > 1) this.setTop(bottom);
    }
    const top = this.topRow();
    const first = Math.max(0, top - OVERSCAN);
    const last = Math.min(g.rows - 1, top + g.visible + OVERSCAN);
    const offset = g.scaled ? pane.scrollTop - (top - first) * ROW_H : first * ROW_H;
    this.rowsBox.style.transform = `translateY(${Math.max(0, offset)}px)`;
    // Rows are rebuilt only when what they show changed, so that a row under
    // the pointer stays the same node while the view scrolls.
    const look = `${this.query}|${this.timestamps}|${this.selection}|${this.matches[this.matchAt]}|${this.failed}`;
    if (look !== this.look || this.layVersion !== this.lay) { this.cache.clear(); this.look = look; this.layVersion = this.lay; }
    const nodes = [];
    const keep = new Map();
    for (let row = first; row <= last; row += 1) {
      const n = this.lineOfRow(row);
      const line = lineAt(this.log, n);
      const key = line ? `${line.text.length}|${line.ended}` : '-';
      const cached = this.cache.get(n);
      const node = cached && cached.key === key ? cached.node : this.rowNode(n);
      keep.set(n, { key, node });
      nodes.push(node);
    }
    this.cache = keep;
    const children = this.rowsBox.children;
    if (children.length !== nodes.length || nodes.some((node, i) => children[i] !== node)) this.rowsBox.replaceChildren(...nodes);
    this.o.onMeta(`${this.log.total.toLocaleString('en-US')} line${this.log.total === 1 ? '' : 's'}`);
    this.fetchMissing(this.lineOfRow(first), this.lineOfRow(Math.max(first, last)));
  }

  /**
   * @param {number} from
   * @param {number} to
   */
  fetchMissing(from, to) {
    if (this.loading || !this.log.ready || !this.stepId) return;
    const gap = missing(this.log, from - 100, to + 100);
    if (!gap) return;
    const [a, b] = gap;
    let start;
    if (this.log.lines.length && b === this.log.lo - 1) start = Math.max(1, b - PAGE + 1);
    else if (this.log.lines.length && a === hi(this.log) + 1) start = a;
    else start = Math.max(1, Math.floor((from + to) / 2) - PAGE / 2);
    const limit = this.log.lines.length && b === this.log.lo - 1 ? b - start + 1 : PAGE;
    const gen = this.generation;
    this.loading = true;
    const keep = Math.floor((from + to) / 2);
    const anchor = this.lineOfRow(this.topRow());
    this.o.getJson(`${this.base}/lines?from=${start}&limit=${limit}`).then((page) => {
      if (gen !== this.generation) return;
      const before = this.rowOfLine(anchor);
      mergePage(this.log, page, keep);
      this.layDirty = true;
      this.loading = false;
      // Keep the line at the top where it was (folds above may have changed the rows).
      if (!this.follow && this.rowOfLine(anchor) !== before) this.scrollToRow(this.rowOfLine(anchor));
      else this.render();
    }, () => {
      if (gen !== this.generation) return;
      setTimeout(() => { this.loading = false; this.schedule(); }, 1000);
    });
  }

  /** @param {number} n */
  rowNode(n) {
    const line = lineAt(this.log, n);
    const lay = this.layout();
    const row = el('div', 'ln');
    row.dataset.n = String(n);
    const num = /** @type {HTMLAnchorElement} */ (el('a', 'lnum', String(n)));
    // A link that opens this line from anywhere (copy, middle-click).
    num.href = this.o.lineHref ? this.o.lineHref(n) : `#L${n}`;
    num.dataset.line = String(n);
    row.append(num);
    if (this.selection && n >= this.selection[0] && n <= this.selection[1]) row.classList.add('sel');
    if (!line) { row.classList.add('pending'); row.append(el('span', 'ph', '…')); return row; }
    if (this.timestamps) row.append(el('span', 'ts', formatTime(line.timestamp)));
    const depth = lay.depth.get(n) || 0;
    if (depth) row.style.paddingLeft = `${depth * 14}px`;
    const section = lay.headers.get(n);
    if (line.stream === 'stderr') row.classList.add('err');
    if (this.matches.length && this.matches[this.matchAt] === n) row.classList.add('current');
    const body = el('span', 'tx');
    if (section) {
      row.classList.add('group', section.open ? 'open' : 'closed');
      if (section.error) row.classList.add('has-error');
      const caret = /** @type {HTMLButtonElement} */ (el('button', 'caret', section.open ? '▾' : '▸'));
      caret.type = 'button';
      caret.dataset.fold = String(n);
      caret.setAttribute('aria-expanded', String(section.open));
      caret.setAttribute('aria-label', `${section.open ? 'Fold' : 'Unfold'} ${section.title}`);
      row.append(caret);
      body.append(this.highlight(section.title));
      row.append(body);
      return row;
    }
    for (const seg of parseLine(line.text)) {
      const node = seg.href ? el('a') : el('span');
      if (seg.href) {
        const a = /** @type {HTMLAnchorElement} */ (node);
        a.href = seg.href;
        a.target = '_blank';
        a.rel = 'noopener noreferrer nofollow';
      }
      styleNode(node, seg.style);
      node.append(this.highlight(seg.text));
      body.append(node);
    }
    row.append(body);
    return row;
  }

  /** @param {string} text */
  highlight(text) {
    const q = this.query;
    const frag = document.createDocumentFragment();
    if (!q) { frag.append(text); return frag; }
    // Matched on the text itself (not a lower-cased copy, whose length can
    // differ), so the marks land on the right characters.
    const pattern = new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'giu');
    let at = 0;
    for (const match of text.matchAll(pattern)) {
      const i = match.index ?? 0;
      if (!match[0]) break;
      frag.append(text.slice(at, i), el('mark', '', match[0]));
      at = i + match[0].length;
    }
    frag.append(text.slice(at));
    return frag;
  }

  // ------------------------------------------------------------ interaction

  // Scrolling up leaves the tail; reaching the bottom follows it again. (A
  // scroll to where the view already was, as when the pane is shown again,
  // changes nothing.)
  onScroll() {
    const pane = this.o.pane;
    const top = pane.scrollTop;
    const atBottom = top + pane.clientHeight >= pane.scrollHeight - ROW_H;
    if (atBottom && holdsTail(this.log)) this.follow = true;
    else if (top < this.lastTop - 2) this.follow = false;
    this.lastTop = top;
    this.o.jump.hidden = this.follow;
    this.schedule();
  }

  /** @param {number} top */
  setTop(top) {
    this.o.pane.scrollTop = top;
    this.lastTop = this.o.pane.scrollTop;
  }

  /** @param {MouseEvent} ev */
  onClick(ev) {
    const target = /** @type {HTMLElement} */ (ev.target);
    const fold = target.closest('[data-fold]');
    if (fold instanceof HTMLElement) {
      const section = this.layout().headers.get(Number(fold.dataset.fold));
      if (section) {
        this.folds[String(section.start)] = !section.open;
        this.saveFolds();
        this.layDirty = true;
        this.render();
      }
      return;
    }
    const num = target.closest('a.lnum');
    if (num instanceof HTMLElement) {
      ev.preventDefault();
      const n = Number(num.dataset.line);
      // Shift-click spans from the last plain click (it can grow or shrink the range).
      if (!ev.shiftKey || this.anchorLine === undefined) this.anchorLine = n;
      const from = this.anchorLine;
      const range = /** @type {[number, number]} */ ([Math.min(from, n), Math.max(from, n)]);
      this.select(range, false);
    }
  }

  /**
   * @param {[number, number]} range
   * @param {boolean} scroll
   */
  select(range, scroll) {
    this.selection = range;
    this.o.onSelect(range);
    if (scroll) this.scrollToLine(range[0]);
    else this.render();
  }

  /** @param {KeyboardEvent} ev */
  onKey(ev) {
    const t = /** @type {HTMLElement} */ (ev.target);
    if (!this.stepId || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
    if (ev.key === 't') { ev.preventDefault(); this.toggleTimestamps(); }
    if (ev.key === '/') { ev.preventDefault(); this.search.focus(); }
  }

  toggleTimestamps() {
    this.timestamps = !this.timestamps;
    local.set(TS_KEY, this.timestamps ? '1' : '0');
    this.syncTimestamps();
    this.render();
  }

  syncTimestamps() {
    this.tsButton.setAttribute('aria-pressed', String(this.timestamps));
    this.o.pane.classList.toggle('with-ts', this.timestamps);
  }

  /**
   * Searches the whole log on the server; moves to the next (1) or previous
   * (-1) match, or only refreshes the highlight (0).
   * @param {number} step
   */
  async runSearch(step) {
    const q = utf8Prefix(this.search.value.trim().toLowerCase(), 200);
    if (!q) { this.query = ''; this.matches = []; this.count.textContent = ''; this.render(); return; }
    const gen = this.generation;
    if (q !== this.query) {
      this.query = q;
      this.matches = [];
      this.matchAt = -1;
      this.count.textContent = 'searching…';
      /** @type {number | null} */
      let after = 0;
      while (after !== null && this.matches.length < MAX_MATCHES) {
        const params = new URLSearchParams({ q, after: String(after), limit: String(MAX_MATCHES - this.matches.length) });
        let answer;
        try { answer = await this.o.getJson(`${this.base}/search?${params}`); } catch (err) {
          this.count.textContent = 'search failed';
          return;
        }
        if (gen !== this.generation || q !== this.query) return;
        this.matches.push(...answer.matches);
        after = answer.next;
      }
      // Start from the line in view.
      const top = this.lineOfRow(this.topRow());
      const from = this.matches.findIndex((n) => n >= top);
      this.matchAt = step < 0 ? (from <= 0 ? this.matches.length - 1 : from - 1) : (from < 0 ? 0 : from);
    } else if (this.matches.length && step) {
      this.matchAt = (this.matchAt + step + this.matches.length) % this.matches.length;
    }
    if (!this.matches.length) { this.count.textContent = 'no match'; this.render(); return; }
    const more = this.matches.length >= MAX_MATCHES ? '+' : '';
    this.count.textContent = `${this.matchAt + 1} / ${this.matches.length}${more}`;
    this.scrollToLine(this.matches[this.matchAt]);
  }

  /** @param {boolean} open  open in a tab rather than save */
  async download(open) {
    if (!this.stepId) return;
    const response = await this.o.getRaw(this.base);
    if (!response.ok) { this.note.hidden = false; this.note.textContent = `Could not fetch the raw log (HTTP ${response.status}).`; return; }
    const blob = new Blob([await response.arrayBuffer()], { type: 'text/plain;charset=utf-8' });
    const url = URL.createObjectURL(blob);
    if (open) window.open(url, '_blank', 'noopener');
    else {
      const a = /** @type {HTMLAnchorElement} */ (el('a'));
      a.href = url;
      a.download = `${(this.name || 'step').replace(/[^\w.-]+/g, '_')}.log`;
      document.body.append(a);
      a.click();
      a.remove();
    }
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}

/**
 * @param {HTMLElement} node
 * @param {import('./ansi.js').Style} s
 */
function styleNode(node, s) {
  let fg = s.fg;
  let bg = s.bg;
  if (s.inverse) [fg, bg] = [bg ?? 7, fg ?? 0];
  const classes = [];
  if (typeof fg === 'number' && fg < 16) classes.push(`f${fg}`);
  else if (fg != null) node.style.color = typeof fg === 'number' ? paletteColour(fg) : fg;
  if (typeof bg === 'number' && bg < 16) classes.push(`b${bg}`);
  else if (bg != null) node.style.backgroundColor = typeof bg === 'number' ? paletteColour(bg) : bg;
  if (s.bold) classes.push('a-b');
  if (s.dim) classes.push('a-d');
  if (s.italic) classes.push('a-i');
  if (s.underline) classes.push('a-u');
  if (classes.length) node.className = classes.join(' ');
}

/** @param {string} iso */
function formatTime(iso) {
  const d = new Date(iso);
  if (!Number.isFinite(d.getTime())) return '';
  const p = (/** @type {number} */ n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/**
 * The longest prefix of `text` whose UTF-8 encoding fits in `max` bytes (the
 * server's limit on a search query is in bytes).
 * @param {string} text
 * @param {number} max
 */
export function utf8Prefix(text, max) {
  const encoder = new TextEncoder();
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    bytes += encoder.encode(ch).length;
    if (bytes > max) break;
    out += ch;
  }
  return out;
}
