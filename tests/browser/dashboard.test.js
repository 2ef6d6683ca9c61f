// The dashboard in a real browser: a producer drives jobs over HTTP while
// Chromium shows them; the list and the job view update live, step output
// renders ANSI colours as text (never as HTML), and neither a page reload nor
// a server restart loses or doubles a line. Saves screenshots to artifacts/.
// (The log viewer's own features: log-viewer.test.js.)
'use strict';

const assert = require('node:assert/strict');
const { describe, test, before } = require('node:test');
const {
  dashboardOrigin, launchBrowser, mintToken, producer, reportAndCleanUp, screenshot, sleep, startServer,
} = require('./support');

const WS = 'acme';
const ESC = '\x1b[';

// A realistic, coloured build log whose i-th line is unique.
function logLine(i) {
  const n = String(i).padStart(3, '0');
  switch (i % 10) {
    case 0: return `${ESC}36m$ cargo build --release -p shop-${n}${ESC}0m`;
    case 1: return `${ESC}32m   Compiling${ESC}0m serde v1.0.${i} ${ESC}2m(registry)${ESC}0m`;
    case 2: return `${ESC}32m   Compiling${ESC}0m shop-core v0.${i}.0 (/src/crates/core)`;
    case 3: return `${ESC}33mwarning${ESC}0m: unused variable: \`tmp_${n}\` ${ESC}90m--> src/cart.rs:${i}:9${ESC}0m`;
    case 4: return `test cart::adds_item_${n} ... ${ESC}32mok${ESC}0m`;
    case 5: return `test payments::refund_${n} ... ${ESC}1;31mFAILED${ESC}0m`;
    case 6: return `${ESC}94mnote${ESC}0m: run with \`RUST_BACKTRACE=1\` for a backtrace (${n})`;
    case 7: return `${ESC}1m${ESC}35mbench${ESC}0m checkout_${n}: ${ESC}1m1.${i % 9} ms${ESC}22m/iter ${ESC}90m(±0.04)${ESC}0m`;
    case 8: return `\t${ESC}2mfetched 12 crates in 0.${i % 7}s [${n}]${ESC}0m`;
    default: return `${ESC}92m✔${ESC}0m step ${n} finished ${ESC}96min ${i % 50}ms${ESC}39m`;
  }
}
// What the browser must show for a line: its text without escapes.
const plain = (line) => line.replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g, '');

// Cuts text into chunks at deterministic, irregular places (inside lines and
// inside escape sequences too), as a producer piping a process might.
function chunk(text, seed = 7) {
  const chunks = [];
  let at = 0;
  let x = seed;
  while (at < text.length) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const size = 1 + (x % 140);
    chunks.push(text.slice(at, at + size));
    at += size;
  }
  return chunks;
}

describe('dashboard', () => {
  let server;
  let origin;
  let browser;
  let pub;
  let viewToken;

  before(async () => {
    server = await startServer();
    origin = await dashboardOrigin(server);
    pub = producer(server, mintToken(server.secret, { workspaces: [WS], scope: 'subscribe publish' }));
    viewToken = mintToken(server.secret, { sub: 'viewer', workspaces: [WS, 'staging'] });
    browser = await launchBrowser();
  });
  reportAndCleanUp(() => ({ browser, server }));

  // Opens the dashboard at a hash address, signing in first if this tab has no token yet.
  const openAt = async (page, hash) => {
    await page.goto(`${origin}/`);
    const prompt = page.getByTestId('token-prompt');
    await page.locator('#token-view:not([hidden]), #layout:not([hidden])').first().waitFor();
    if (await prompt.isVisible()) {
      await page.getByTestId('token-input').fill(viewToken);
      await page.getByTestId('token-submit').click();
    }
    await page.evaluate((h) => { window.location.hash = h; }, hash);
  };
  // Every line of the shown step, read as a reader would: the viewer draws
  // only the rows in view, so scroll from the top to the end.
  const terminalLines = (page) => page.getByTestId('terminal').evaluate(async (pane) => {
    const frame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    const seen = new Map();
    pane.scrollTop = 0;
    for (let guard = 0; guard < 5000; guard += 1) {
      await frame();
      const rows = [...pane.querySelectorAll('.ln')];
      if (rows.some((r) => r.classList.contains('pending'))) { await new Promise((r) => setTimeout(r, 50)); continue; }
      for (const r of rows) seen.set(Number(r.dataset.n), r.querySelector('.tx').textContent);
      if (pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 1) break;
      pane.scrollTop += pane.clientHeight;
    }
    return [...seen.entries()].sort((a, b) => a[0] - b[0]).map(([, text]) => text);
  });
  // The viewer's line count (its header says "N lines").
  const waitForLines = (page, count, timeout = 20_000) => page.waitForFunction(
    (n) => Number((document.querySelector('[data-testid=terminal-meta]').textContent.match(/^[\d,]+/) || ['0'])[0].replace(/,/g, '')) >= n,
    count, { timeout },
  );
  const jobItem = (page, id) => page.locator(`[data-testid=job-item][data-job-id="${id}"]`);
  const waitForStatus = (page, id, status) => page
    .locator(`[data-testid=job-item][data-job-id="${id}"][data-status=${status}]`).waitFor({ timeout: 10_000 });

  test('shows a job live, with steps and every output line once, across a reload', async () => {
    const { page } = browser;
    await page.goto(`${origin}/`);

    // Not demo mode: the token prompt comes first; the token stays in the tab.
    await page.getByTestId('token-prompt').waitFor();
    await page.getByTestId('token-input').fill(viewToken);
    await page.getByTestId('token-submit').click();
    await page.locator('[data-testid=connection][data-state=live]').waitFor({ timeout: 10_000 });
    assert.equal(await page.getByTestId('workspace-select').inputValue(), WS);
    assert.deepEqual(await page.$$eval('#ws-select option', (os) => os.map((o) => o.value)), [WS, 'staging']);

    // A few other jobs of the workspace, in various states.
    const nightly = await pub.createJob({ workspaceId: WS, type: 'nightly e2e', metadata: { suite: 'checkout' } });
    await pub.status(nightly.id, 'queued');
    await pub.status(nightly.id, 'running');
    await pub.progress(nightly.id, 40);
    await pub.status(nightly.id, 'failed', { error: 'exit code 1' });
    const docs = await pub.createJob({ workspaceId: WS, type: 'docs deploy', metadata: { site: 'docs.acme.dev' } });
    await pub.status(docs.id, 'queued');
    await pub.status(docs.id, 'running');
    await pub.progress(docs.id, 100);
    await pub.status(docs.id, 'completed');
    const migration = await pub.createJob({ workspaceId: WS, type: 'db migration', metadata: { db: 'orders' } });
    await pub.status(migration.id, 'queued');
    await pub.status(migration.id, 'running');
    await pub.startStep(migration.id, { name: 'apply 0042_add_index', phase: 'execution', stepType: 'command' });
    await pub.progress(migration.id, 60);
    await pub.createJob({ workspaceId: WS, type: 'thumbnail batch', metadata: { images: 1200 } });
    await waitForStatus(page, migration.id, 'running');

    // The list follows the job's status and progress.
    const job = await pub.createJob({ workspaceId: WS, type: 'release build', metadata: { repo: 'acme/shop', branch: 'main' } });
    await waitForStatus(page, job.id, 'pending');
    await pub.status(job.id, 'queued');
    await waitForStatus(page, job.id, 'queued');
    await pub.status(job.id, 'running');
    await waitForStatus(page, job.id, 'running');
    await pub.progress(job.id, 25, 'compiling');
    await page.waitForFunction((id) => {
      const bar = document.querySelector(`[data-job-id="${id}"] .progress > span`);
      return bar && bar.style.width === '25%';
    }, job.id);

    // Open it from the keyboard.
    await jobItem(page, job.id).focus();
    await page.keyboard.press('Enter');
    await page.waitForURL(`**/#/${WS}/${job.id}`);
    await page.getByTestId('detail-title').filter({ hasText: 'release build' }).waitFor();

    const checkout = await pub.startStep(job.id, { name: 'checkout', phase: 'setup', stepType: 'command' });
    await pub.output(job.id, checkout.id, `${ESC}36m$ git clone acme/shop${ESC}0m\n${ESC}32m✔${ESC}0m checked out 3f9c2e1\n`);
    await pub.completeStep(job.id, checkout.id);
    const build = await pub.startStep(job.id, { name: 'compile', phase: 'execution', stepType: 'command' });
    await page.locator(`[data-testid=step][data-step-id="${build.id}"][data-status=running]`).waitFor();

    const lines = [];
    for (let i = 1; i <= 160; i += 1) lines.push(logLine(i));
    lines.splice(40, 0, '<img src=x onerror="window.__injected=1"> & <b>not bold</b>');
    lines.splice(80, 0, `${ESC}2K${ESC}1G\x1b]0;window title\x07${ESC}?25lcursor escapes are dropped${ESC}?25h`);
    const chunks = chunk(`${lines.join('\n')}\n`);
    const third = Math.floor(chunks.length / 3);
    const send = async (from, to) => {
      for (const c of chunks.slice(from, to)) await pub.output(job.id, build.id, c);
    };

    await send(0, third);
    await waitForLines(page, 20);
    // Reload while output keeps coming: the token is kept, the job reopens
    // from the address, and its output is replayed then followed live.
    const producing = send(third, 2 * third);
    await sleep(50);
    await page.reload();
    await producing;
    assert.equal(await page.getByTestId('token-prompt').isVisible(), false);
    await page.getByTestId('detail-title').filter({ hasText: 'release build' }).waitFor();
    await send(2 * third, chunks.length);
    await pub.progress(job.id, 70, 'compiled');

    // Screenshots mid-job: wide with the live coloured output, then phone width.
    await waitForLines(page, lines.length);
    await page.locator('body').click({ position: { x: 200, y: 780 } });
    await screenshot(page, 'dashboard-wide.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(300);
    assert.equal(await page.locator('#jobs-pane').isVisible(), false, 'one column: the list gives way to the job');
    assert.equal(await page.getByTestId('back-to-list').isVisible(), true);
    await screenshot(page, 'dashboard-phone.png');
    await page.setViewportSize({ width: 1280, height: 800 });
    await pub.completeStep(job.id, build.id);

    const tests = await pub.startStep(job.id, { name: 'unit tests', phase: 'validation', stepType: 'command' });
    await pub.output(job.id, tests.id, `running 54 tests\n${ESC}33mwarning${ESC}0m: 2 snapshots are obsolete\n`, 'stderr');
    await pub.output(job.id, tests.id, `test result: ${ESC}32mok${ESC}0m. 54 passed; 0 failed\n`);
    await pub.completeStep(job.id, tests.id);
    const gate = await pub.startStep(job.id, { name: 'review gate', phase: 'validation', stepType: 'gate' });
    await pub.event(job.id, { type: 'gate.passed', stepId: gate.id, payload: { approver: 'dana' } });
    await pub.completeStep(job.id, gate.id);
    await pub.progress(job.id, 100);
    await pub.status(job.id, 'completed', { result: { artifacts: ['dist/shop.tar.gz'] } });

    await page.getByTestId('detail-status').filter({ hasText: 'completed' }).waitFor({ timeout: 10_000 });
    await waitForStatus(page, job.id, 'completed');
    assert.match(await page.getByTestId('announce').textContent(), /completed/);
    const stepStatuses = await page.$$eval('[data-testid=step]', (els) => els.map((e) => [e.querySelector('.name').textContent, e.dataset.status]));
    assert.deepEqual(stepStatuses, [['checkout', 'completed'], ['compile', 'completed'], ['unit tests', 'completed'], ['review gate', 'completed']]);

    // Every line of the build step, once, in order, as text.
    await page.locator(`[data-testid=step][data-step-id="${build.id}"]`).click();
    await waitForLines(page, lines.length);
    await sleep(300);
    assert.deepEqual(await terminalLines(page), lines.map(plain));
    assert.equal(await page.evaluate(() => window.__injected), undefined);
    assert.equal(await page.locator('[data-testid=terminal] img, [data-testid=terminal] b').count(), 0);
    // In the rows in view (about 40: only those are drawn).
    assert.ok(await page.locator('[data-testid=terminal] span.f2').count() > 5, 'green spans');
    assert.ok(await page.locator('[data-testid=terminal] span.f1.a-b').count() > 2, 'bold red spans');
    assert.ok(await page.locator('[data-testid=terminal] span.f8').count() > 2, 'bright black spans');
    assert.ok(await page.locator('[data-testid=terminal] span.a-d').count() > 2, 'dim spans');

    // The gate's row shows its event; the test step's stderr lines are marked.
    await page.locator(`[data-testid=step][data-step-id="${tests.id}"]`).focus();
    await page.keyboard.press('Enter');
    await page.locator(`[data-testid=step][data-step-id="${tests.id}"][aria-pressed=true]`).waitFor();
    await waitForLines(page, 3);
    assert.equal(await page.locator('[data-testid=terminal] .ln.err').count(), 2);
    await page.locator(`[data-testid=step][data-step-id="${gate.id}"]`).click();
    await page.locator('[data-testid=step-events]', { hasText: 'gate.passed' }).waitFor();

    // At phone width, back to the list.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByTestId('back-to-list').click();
    await jobItem(page, job.id).waitFor({ state: 'visible' });
    assert.equal(await page.getByTestId('job-detail').isVisible(), false);
    await screenshot(page, 'dashboard-phone-list.png');
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  test('follows the tail unless the reader scrolls up, and keeps every line', async () => {
    const { page } = browser;
    const job = await pub.createJob({ workspaceId: WS, type: 'load test' });
    await pub.status(job.id, 'queued');
    await pub.status(job.id, 'running');
    const step = await pub.startStep(job.id, { name: 'flood', phase: 'execution', stepType: 'command' });
    await openAt(page, `#/${WS}/${job.id}`);
    await page.locator(`[data-testid=step][data-step-id="${step.id}"][data-status=running]`).waitFor();

    // 6000 lines in quick succession, 600 per event.
    for (let b = 0; b < 10; b += 1) {
      const text = Array.from({ length: 600 }, (_, i) => `${ESC}3${(i % 7) + 1}mline ${b * 600 + i + 1}${ESC}0m\n`).join('');
      await pub.output(job.id, step.id, text);
    }
    await waitForLines(page, 6000);
    const lastRow = () => page.$$eval('[data-testid=terminal] .ln .tx', (els) => els[els.length - 1].textContent);
    await page.waitForFunction(() => {
      const rows = document.querySelectorAll('[data-testid=terminal] .ln .tx');
      return rows.length && rows[rows.length - 1].textContent === 'line 6000';
    }, null, { timeout: 20_000 });
    assert.ok(await page.locator('[data-testid=terminal] .ln').count() < 200, 'only the rows in view are drawn');
    const atBottom = () => page.getByTestId('terminal').evaluate((el) => el.scrollTop + el.clientHeight >= el.scrollHeight - 30);
    assert.equal(await atBottom(), true, 'follows the tail');
    assert.equal(await page.getByTestId('jump-latest').isVisible(), false);

    // Scrolled up: new output does not move the view; the jump button appears; line 1 is there.
    await page.getByTestId('terminal').evaluate((el) => { el.scrollTop = 0; });
    await page.getByTestId('jump-latest').waitFor();
    await page.locator('[data-testid=terminal] .ln[data-n="1"] .tx', { hasText: 'line 1' }).waitFor();
    await pub.output(job.id, step.id, 'one more line\n');
    await waitForLines(page, 6001);
    assert.equal(await page.getByTestId('terminal').evaluate((el) => el.scrollTop), 0);
    await page.getByTestId('jump-latest').click();
    await page.waitForFunction(() => {
      const rows = document.querySelectorAll('[data-testid=terminal] .ln .tx');
      return rows.length && rows[rows.length - 1].textContent === 'one more line';
    });
    assert.equal(await lastRow(), 'one more line');
    assert.equal(await atBottom(), true);
    assert.equal(await page.getByTestId('jump-latest').isVisible(), false);
    await pub.status(job.id, 'cancelled', { error: 'stopped by the test' });
    await page.getByTestId('detail-error').filter({ hasText: 'stopped by the test' }).waitFor();
  });

  test('a token for every workspace lets the reader type one', async () => {
    const { page } = browser;
    await openAt(page, `#/${WS}`);
    await page.getByTestId('change-token').click();
    await page.getByTestId('token-input').fill(mintToken(server.secret, { sub: 'ops', workspaces: ['*'] }));
    await page.keyboard.press('Enter');
    const input = page.getByTestId('workspace-input');
    await input.waitFor();
    assert.equal(await page.getByTestId('workspace-select').isVisible(), false);
    const other = producer(server, mintToken(server.secret, { workspaces: ['typed-ws'], scope: 'subscribe publish' }));
    const job = await other.createJob({ workspaceId: 'typed-ws', type: 'backfill' });
    await input.fill('typed-ws');
    await input.press('Enter');
    await page.waitForURL('**/#/typed-ws');
    await jobItem(page, job.id).waitFor();
    await page.getByTestId('change-token').click();
    await page.getByTestId('token-input').fill(viewToken);
    await page.getByTestId('token-submit').click();
    await page.locator('[data-testid=connection][data-state=live]').waitFor();
  });

  test('shows reconnects and resumes from the last seq after a server restart', async () => {
    const { page } = browser;
    const job = await pub.createJob({ workspaceId: WS, type: 'deploy' });
    await pub.status(job.id, 'queued');
    await pub.status(job.id, 'running');
    const step = await pub.startStep(job.id, { name: 'rollout', phase: 'execution', stepType: 'command' });
    const line = (i) => `${ESC}32mrollout${ESC}0m batch ${i}`;
    for (let i = 1; i <= 30; i += 1) await pub.output(job.id, step.id, `${line(i)}\n`);
    await openAt(page, `#/${WS}/${job.id}`);
    await waitForLines(page, 30);
    await page.locator('[data-testid=connection][data-state=live]').waitFor();

    const restarting = server.restart();
    await page.locator('[data-testid=connection]:not([data-state=live])').waitFor({ timeout: 15_000 });
    await restarting;
    for (let i = 31; i <= 60; i += 1) await pub.output(job.id, step.id, `${line(i)}\n`);
    await page.locator('[data-testid=connection][data-state=live]').waitFor({ timeout: 30_000 });
    await waitForLines(page, 60);
    for (let i = 61; i <= 70; i += 1) await pub.output(job.id, step.id, `${line(i)}\n`);
    await pub.completeStep(job.id, step.id);
    await pub.status(job.id, 'completed');
    await page.getByTestId('detail-status').filter({ hasText: 'completed' }).waitFor({ timeout: 10_000 });
    await waitForLines(page, 70);
    await sleep(300);
    const expected = Array.from({ length: 70 }, (_, i) => plain(line(i + 1)));
    assert.deepEqual(await terminalLines(page), expected);
    assert.match(await page.getByTestId('reconnects').textContent(), /^\d+ reconnects?$/);
  });
});

describe('dashboard in demo mode', () => {
  let server;
  let origin;
  let browser;

  before(async () => {
    server = await startServer({ extraArgs: ['--demo'] });
    origin = await dashboardOrigin(server);
    browser = await launchBrowser();
  });
  reportAndCleanUp(() => ({ browser, server }));

  test('opens on the demo workspace with its token, no prompt', async () => {
    const { page } = browser;
    await page.goto(`${origin}/`);
    await page.locator('[data-testid=connection][data-state=live]').waitFor({ timeout: 10_000 });
    assert.equal(await page.getByTestId('token-prompt').isVisible(), false);
    assert.equal(await page.locator('#demo-tag').isVisible(), true);
    assert.equal(await page.getByTestId('workspace-select').inputValue(), 'demo');
    const running = page.locator('[data-testid=job-item][data-status=running]').first();
    await running.waitFor({ timeout: 20_000 });
    await running.click();
    await page.locator('[data-testid=terminal] .ln').first().waitFor({ timeout: 20_000 });
    await sleep(2500);
    await screenshot(page, 'demo-wide.png');
  });
});
