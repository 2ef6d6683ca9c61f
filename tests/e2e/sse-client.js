// A Server-Sent Events reader for the end-to-end tests, on fetch and a
// streaming body, parsed here as text/event-stream: `id:`, `event:`, `data:`
// lines, a blank line ends a frame, lines starting with `:` are comments.
'use strict';

const WAIT_MS = 10_000;

// Opens an SSE stream: GET `path` with `query` and `headers`. Resolves once
// the response head is in with { status, headers, frames, comments, body,
// ended, waitFor(predicate), untilEnd(), close() }. A non-stream answer
// (an error) is read whole into `body`.
async function openStream(baseUrl, path, { query = {}, headers = {} } = {}) {
  const target = new URL(path, baseUrl);
  for (const [key, value] of Object.entries(query)) target.searchParams.set(key, value);
  const controller = new AbortController();
  const response = await fetch(target, {
    headers: { accept: 'text/event-stream', ...headers }, signal: controller.signal,
  });
  const stream = {
    status: response.status,
    headers: response.headers,
    frames: [],     // { id, event, data (parsed JSON), raw }
    comments: 0,
    body: null,
    ended: false,   // the server finished the body
    endedAt: null,  // when (Date.now())
    close: () => controller.abort(),
  };
  let waiters = [];
  const settle = () => { waiters = waiters.filter((w) => !w.check()); };
  stream.waitFor = (predicate, what, timeoutMs = WAIT_MS) => new Promise((resolve, reject) => {
    const waiter = {
      check: () => {
        if (predicate(stream)) {
          clearTimeout(waiter.timer);
          resolve(stream);
          return true;
        }
        if (stream.ended) {
          clearTimeout(waiter.timer);
          reject(new Error(`the stream ended before ${what}; frames: ${describeFrames(stream.frames)}`));
          return true;
        }
        return false;
      },
    };
    if (waiter.check()) return;
    waiter.timer = setTimeout(() => {
      waiters = waiters.filter((w) => w !== waiter);
      reject(new Error(`not within ${timeoutMs} ms: ${what}; frames: ${describeFrames(stream.frames)}`));
    }, timeoutMs);
    waiters.push(waiter);
  });
  stream.untilEnd = (timeoutMs = WAIT_MS) => stream.waitFor((s) => s.ended, 'the end of the stream', timeoutMs)
    .catch((err) => { if (!stream.ended) throw err; return stream; });

  if (!(response.headers.get('content-type') || '').startsWith('text/event-stream')) {
    const text = await response.text();
    try { stream.body = JSON.parse(text); } catch { stream.body = text; }
    stream.ended = true;
    stream.endedAt = Date.now();
    return stream;
  }

  // The event-stream parser.
  let frame = null;
  const field = (line) => {
    if (line === '') {
      if (frame) {
        let data = frame.data;
        try { data = JSON.parse(frame.data); } catch { /* left as text: the assertions say so */ }
        stream.frames.push({ id: frame.id, event: frame.event, data, raw: frame.data });
        frame = null;
        settle();
      }
      return;
    }
    if (line.startsWith(':')) {
      stream.comments += 1;
      return;
    }
    const colon = line.indexOf(':');
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    frame ??= { id: undefined, event: undefined, data: undefined };
    if (name === 'data') frame.data = frame.data === undefined ? value : `${frame.data}\n${value}`;
    else if (name === 'id') frame.id = value;
    else if (name === 'event') frame.event = value;
  };
  (async () => {
    const decoder = new TextDecoder();
    let pending = '';
    try {
      for await (const chunk of response.body) {
        pending += decoder.decode(chunk, { stream: true });
        for (;;) {
          const match = /\r\n|\r|\n/.exec(pending);
          // A lone \r at the end may be the first half of \r\n: wait for more.
          if (!match || (match[0] === '\r' && match.index === pending.length - 1)) break;
          field(pending.slice(0, match.index));
          pending = pending.slice(match.index + match[0].length);
        }
      }
      if (pending) field(pending);
      stream.ended = true;
      stream.endedAt = Date.now();
    } catch (err) {
      if (err.name !== 'AbortError') stream.error = err;
    }
    settle();
  })();
  return stream;
}

function describeFrames(frames) {
  const shown = frames.slice(-20).map((f) => `${f.event}${f.id !== undefined ? `#${f.id}` : ''}`
    + `${f.data && f.data.seq !== undefined ? `(seq ${f.data.seq})` : ''}`);
  return `${frames.length} [${frames.length > 20 ? '…, ' : ''}${shown.join(', ')}]`;
}

module.exports = { openStream, describeFrames };
