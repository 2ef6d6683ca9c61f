// @ts-check
// ANSI terminal text to styled segments, one line at a time (pure: no DOM).
//
// - SGR: reset, bold (1), dim (2), italic (3), underline (4), inverse (7),
//   their resets (22/23/24/27); foreground/background 30–37/40–47, bright
//   90–97/100–107, 256 colours (38;5;n / 48;5;n) and true colour
//   (38;2;r;g;b / 48;2;r;g;b), with `;` or `:` separators.
// - `\r` moves back to the start of the line: later text overwrites earlier
//   text cell by cell (progress bars). `ESC[K` / `ESC[0K` erase to the end of
//   the line, `ESC[2K` the whole line.
// - OSC 8 hyperlinks (`ESC]8;params;URI ST` … `ESC]8;; ST`) and bare
//   http(s) URLs become links, but only http:, https: and mailto: URLs; any
//   other scheme (javascript:, data:, …) stays plain text.
// - Every other escape sequence and control character is dropped.
//
// Each line starts with the default style: a line can be drawn without the
// lines before it (the log viewer opens at any line).

/**
 * A colour: 0–255 (the 256-colour palette; 0–15 are the theme's) or
 * `#rrggbb` for true colour.
 * @typedef {number | string} Colour
 */

/**
 * @typedef {object} Style
 * @property {Colour | null} fg
 * @property {Colour | null} bg
 * @property {boolean} bold
 * @property {boolean} dim
 * @property {boolean} italic
 * @property {boolean} underline
 * @property {boolean} inverse
 */

/**
 * A run of text in one style, perhaps a link.
 * @typedef {object} Segment
 * @property {string} text
 * @property {Style} style
 * @property {string | null} href  a safe URL (see `safeUrl`), or null
 */

/** @returns {Style} */
export function defaultStyle() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false };
}

/**
 * The URL if it is safe to link to (http, https or mailto), else null.
 * @param {string} url
 * @returns {string | null}
 */
export function safeUrl(url) {
  const trimmed = url.trim();
  // Control characters and spaces never belong in a link target.
  if (!trimmed || /[\x00-\x20\x7f]/.test(trimmed)) return null;
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(trimmed);
  if (!scheme) return null;
  return ['http', 'https', 'mailto'].includes(scheme[1].toLowerCase()) ? trimmed : null;
}

const hex2 = (/** @type {number} */ n) => Math.max(0, Math.min(255, n | 0)).toString(16).padStart(2, '0');

/**
 * Applies the parameters of one SGR sequence to `s`.
 * @param {Style} s
 * @param {string} params  e.g. `1;31`, `38;5;208`, `38:2::255:0:0`
 */
export function applySgr(s, params) {
  const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)));
  for (let k = 0; k < codes.length; k += 1) {
    const n = codes[k];
    if (n === 0) Object.assign(s, defaultStyle());
    else if (n === 1) s.bold = true;
    else if (n === 2) s.dim = true;
    else if (n === 3) s.italic = true;
    else if (n === 4) s.underline = true;
    else if (n === 7) s.inverse = true;
    else if (n === 22) { s.bold = false; s.dim = false; }
    else if (n === 23) s.italic = false;
    else if (n === 24) s.underline = false;
    else if (n === 27) s.inverse = false;
    else if (n >= 30 && n <= 37) s.fg = n - 30;
    else if (n >= 90 && n <= 97) s.fg = n - 82;
    else if (n === 39) s.fg = null;
    else if (n >= 40 && n <= 47) s.bg = n - 40;
    else if (n >= 100 && n <= 107) s.bg = n - 92;
    else if (n === 49) s.bg = null;
    else if (n === 38 || n === 48) {
      const mode = codes[k + 1];
      /** @type {Colour | null} */
      let colour = null;
      if (mode === 5) {
        const idx = codes[k + 2];
        if (Number.isInteger(idx) && idx >= 0 && idx <= 255) colour = idx;
        k += 2;
      } else if (mode === 2) {
        // `38:2::r:g:b` has a colour-space id before r.
        const rgb = params.includes(':') && codes.length - k >= 6 ? codes.slice(k + 3, k + 6) : codes.slice(k + 2, k + 5);
        if (rgb.length === 3 && rgb.every((v) => Number.isFinite(v))) colour = `#${rgb.map(hex2).join('')}`;
        k += params.includes(':') && codes.length - k >= 6 ? 5 : 4;
      }
      if (colour !== null) { if (n === 38) s.fg = colour; else s.bg = colour; }
    }
  }
}

/**
 * The RGB of a 256-palette colour from 16 to 255, as `#rrggbb`.
 * @param {number} n
 * @returns {string}
 */
export function paletteColour(n) {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `#${hex2(v)}${hex2(v)}${hex2(v)}`;
  }
  const i = n - 16;
  const level = (/** @type {number} */ c) => (c === 0 ? 0 : 55 + c * 40);
  return `#${hex2(level(Math.floor(i / 36)))}${hex2(level(Math.floor(i / 6) % 6))}${hex2(level(i % 6))}`;
}

const sameStyle = (/** @type {Style} */ a, /** @type {Style} */ b) => a.fg === b.fg && a.bg === b.bg
  && a.bold === b.bold && a.dim === b.dim && a.italic === b.italic && a.underline === b.underline && a.inverse === b.inverse;

// CSI, OSC (ended by BEL or ESC \), other ESC sequences, control characters.
const TOKENS = /\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\]([^\x07\x1b]*)(?:\x07|\x1b\\|$)|\x1b[ -/]*[0-~]?|[\x00-\x08\x0b-\x1f\x7f]/g;
const URL_RE = /\b(?:https?:\/\/|mailto:)[^\s<>"'`\x00-\x1f\x7f]+/g;

/**
 * Parses one line (no `\n` in it) into styled segments.
 * @param {string} line
 * @returns {Segment[]}
 */
export function parseLine(line) {
  /** @type {{ch: string, style: Style, href: string | null}[]} */
  const cells = [];
  let col = 0;
  let style = defaultStyle();
  /** @type {string | null} */
  let href = null;
  const write = (/** @type {string} */ text) => {
    for (const ch of text) {
      const cell = { ch, style, href };
      if (col < cells.length) cells[col] = cell; else cells.push(cell);
      col += 1;
    }
  };
  TOKENS.lastIndex = 0;
  let at = 0;
  let m;
  while ((m = TOKENS.exec(line))) {
    write(line.slice(at, m.index));
    at = TOKENS.lastIndex;
    const tok = m[0];
    if (m[2] !== undefined) {
      if (m[2] === 'm') { style = { ...style }; applySgr(style, m[1]); }
      else if (m[2] === 'K') {
        if (m[1] === '2') cells.length = 0;
        else if (m[1] === '' || m[1] === '0') cells.length = Math.min(cells.length, col);
      }
    } else if (m[3] !== undefined) {
      const osc = /^8;[^;]*;(.*)$/s.exec(m[3]);
      if (osc) href = osc[1] ? safeUrl(osc[1]) : null;
    } else if (tok === '\r') {
      col = 0;
    }
  }
  write(line.slice(at));
  /** @type {Segment[]} */
  const segments = [];
  for (const cell of cells) {
    const last = segments[segments.length - 1];
    if (last && last.href === cell.href && sameStyle(last.style, cell.style)) last.text += cell.ch;
    else segments.push({ text: cell.ch, style: cell.style, href: cell.href });
  }
  return linkUrls(segments);
}

/**
 * Bare URLs in segments that are not links yet become links (safe ones only).
 * @param {Segment[]} segments
 * @returns {Segment[]}
 */
/**
 * Drops trailing punctuation that ends the sentence rather than the URL; a
 * closing bracket stays when the URL opened it (`…/Foo_(bar)`).
 * @param {string} url
 */
export function trimUrl(url) {
  let out = url;
  for (;;) {
    const last = out.at(-1);
    if (last === undefined || !'.,;:!?)]}'.includes(last)) return out;
    const open = { ')': '(', ']': '[', '}': '{' }[last];
    if (open && out.split(open).length - 1 >= out.split(last).length - 1) return out;
    out = out.slice(0, -1);
  }
}

function linkUrls(segments) {
  /** @type {Segment[]} */
  const out = [];
  for (const seg of segments) {
    if (seg.href) { out.push(seg); continue; }
    URL_RE.lastIndex = 0;
    let at = 0;
    let m;
    while ((m = URL_RE.exec(seg.text))) {
      // Trailing punctuation usually ends the sentence, not the URL.
      const url = trimUrl(m[0]);
      const href = safeUrl(url);
      if (!href) continue;
      if (m.index > at) out.push({ ...seg, text: seg.text.slice(at, m.index) });
      out.push({ ...seg, text: url, href });
      at = m.index + url.length;
      URL_RE.lastIndex = at;
    }
    if (at < seg.text.length) out.push(at ? { ...seg, text: seg.text.slice(at) } : seg);
  }
  return out;
}

/**
 * The text a reader sees (escape sequences applied and left out).
 * @param {string} line
 * @returns {string}
 */
export function plainText(line) {
  return parseLine(line).map((s) => s.text).join('');
}
