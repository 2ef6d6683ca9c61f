// Unit tests of the dashboard's ANSI parser (crates/server/assets/ansi.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { paletteColour, parseLine, plainText, safeUrl } from '../../crates/server/assets/ansi.js';

const brief = (line) => parseLine(line).map((s) => {
  const out = { text: s.text };
  for (const [k, v] of Object.entries(s.style)) if (v !== null && v !== false) out[k] = v;
  if (s.href) out.href = s.href;
  return out;
});

test('plain text is one unstyled segment', () => {
  assert.deepEqual(brief('hello wörld 漢字'), [{ text: 'hello wörld 漢字' }]);
});

test('basic and bright colours, bold, italic, underline and their resets', () => {
  assert.deepEqual(brief('\x1b[1;31mred\x1b[22m thin\x1b[0m \x1b[3;4;92mgreen\x1b[23;24m x\x1b[39m'), [
    { text: 'red', fg: 1, bold: true },
    { text: ' thin', fg: 1 },
    { text: ' ' },
    { text: 'green', fg: 10, italic: true, underline: true },
    { text: ' x', fg: 10 },
  ]);
});

test('256-colour and true-colour foreground and background', () => {
  assert.deepEqual(brief('\x1b[38;5;208mo\x1b[48;5;17mb\x1b[0m\x1b[38;2;255;0;128mt\x1b[48:2::1:2:3mu'), [
    { text: 'o', fg: 208 },
    { text: 'b', fg: 208, bg: 17 },
    { text: 't', fg: '#ff0080' },
    { text: 'u', fg: '#ff0080', bg: '#010203' },
  ]);
  assert.equal(paletteColour(16), '#000000');
  assert.equal(paletteColour(231), '#ffffff');
  assert.equal(paletteColour(232), '#080808');
});

test('a carriage return overwrites the line from its start, cell by cell', () => {
  assert.equal(plainText('progress 10%\rprogress 100%'), 'progress 100%');
  assert.equal(plainText('abcdef\rXY'), 'XYcdef');
  assert.equal(plainText('downloading\r\x1b[Kdone'), 'done');
  assert.equal(plainText('line\r'), 'line');
});

test('OSC 8 hyperlinks and bare URLs become links', () => {
  assert.deepEqual(brief('see \x1b]8;;https://example.com/a\x1b\\the docs\x1b]8;;\x1b\\ now'), [
    { text: 'see ' },
    { text: 'the docs', href: 'https://example.com/a' },
    { text: ' now' },
  ]);
  assert.deepEqual(brief('at https://ci.example.com/run/1. Next'), [
    { text: 'at ' },
    { text: 'https://ci.example.com/run/1', href: 'https://ci.example.com/run/1' },
    { text: '. Next' },
  ]);
});

test('javascript: and other schemes never become links', () => {
  assert.equal(safeUrl('javascript:alert(1)'), null);
  assert.equal(safeUrl(' JaVaScRiPt:alert(1)'), null);
  assert.equal(safeUrl('java\tscript:alert(1)'), null);
  assert.equal(safeUrl('data:text/html,x'), null);
  assert.equal(safeUrl('https://ok.example'), 'https://ok.example');
  const segs = parseLine('\x1b]8;;javascript:alert(1)\x07click\x1b]8;;\x07 javascript:alert(2)');
  assert.ok(segs.every((s) => s.href === null), JSON.stringify(segs));
  assert.equal(segs.map((s) => s.text).join(''), 'click javascript:alert(2)');
});

test('other escapes and control characters are dropped', () => {
  assert.equal(plainText('a\x1b[2Jb\x1b(Bc\x07d\x00e\x1b]0;title\x07f'), 'abcdef');
});

test('a URL keeps a closing bracket it opened, and loses sentence punctuation after it', async () => {
  const { trimUrl } = await import('../../crates/server/assets/ansi.js');
  assert.equal(trimUrl('https://en.wikipedia.org/wiki/Rust_(programming_language)'), 'https://en.wikipedia.org/wiki/Rust_(programming_language)');
  assert.equal(trimUrl('https://example.com/a(b)).'), 'https://example.com/a(b)');
  assert.equal(trimUrl('https://example.com/x.'), 'https://example.com/x');
  assert.equal(trimUrl('https://example.com/y)'), 'https://example.com/y');
});
