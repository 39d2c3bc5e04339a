// Browser tests of the Cohort dashboard: Debian's Chromium driven by
// playwright-core against a dashboard whose coordinator ran a real job.
//
//   node browser-test.mjs URL TOKEN SCREENSHOT_DIR
//
// URL is the dashboard's root (http://HOST:PORT/), TOKEN an operator token.
// Exits non-zero on the first failed check, or when Chromium cannot start
// (CHROMIUM overrides /usr/bin/chromium). tests/dashboard_browser.rs runs it.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

// --live JOB_ID: instead, open JOB_ID's page while the job waits for its
// hospitals, print "live: page open" (the caller then starts them) and
// check that the page follows the job to its end without a reload.
const args = process.argv.slice(2);
const liveJob = args[0] === '--live' ? args.splice(0, 2)[1] : null;
const [url, token, shots] = args;
if (!url || !token || !shots) {
  console.error('usage: node browser-test.mjs [--live JOB_ID] URL TOKEN SCREENSHOT_DIR');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

function check(condition, what) {
  if (!condition) throw new Error('FAILED: ' + what);
  console.log('ok - ' + what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // /dev/shm is small in containers; Chromium then uses /tmp instead.
  args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage'],
});
// A laptop-sized page signed in once with ?token=, collecting script
// errors and CSP violations (they show as console errors).
async function signIn() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  page.on('console', m => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(url + '?token=' + encodeURIComponent(token));
  return { context, page, errors };
}

async function live(jobId) {
  const { context, page, errors } = await signIn();
  await page.goto(url + '#/jobs/' + jobId);
  await page.waitForSelector('#job-summary');
  const before = await (await context.request.get(url + 'api/jobs/' + jobId)).json();
  check(before.status.rounds_completed === 0, `the job has not started (${before.status.state})`);
  check(await page.locator('#live').count() === 1, 'the page of a job that has not finished says it is live');
  await page.evaluate(() => { window.loadedOnce = true; });
  console.log('live: page open');
  // Every round count the page shows on its way, without reloading.
  const seen = new Set();
  const deadline = Date.now() + 240_000;
  for (;;) {
    const shown = await page.evaluate(() => ({
      reloaded: window.loadedOnce !== true,
      rounds: document.querySelector('#job-summary')?.dataset.roundsCompleted,
      state: document.querySelector('h1 .badge')?.textContent,
    }));
    if (shown.reloaded) throw new Error('FAILED: the page reloaded');
    if (shown.rounds !== undefined) seen.add(Number(shown.rounds));
    if (shown.state === 'completed' || shown.state === 'failed') break;
    if (Date.now() > deadline) throw new Error('FAILED: the page did not show the job finishing within 4 minutes');
    await page.waitForTimeout(250);
  }
  const after = await (await context.request.get(url + 'api/jobs/' + jobId)).json();
  check(after.status.state === 'completed', 'the job completed');
  check(seen.has(0) && seen.has(after.status.rounds_completed),
    `the page went from 0 to ${after.status.rounds_completed} completed rounds by itself (saw ${[...seen].sort((a, b) => a - b).join(', ')})`);
  const points = await page.locator('#chart-loss circle[data-series="validation_loss"]').count();
  check(points === after.status.rounds_completed, `the live page's curve has one point per round (${points})`);
  check(await page.locator('#live').count() === 0, 'the finished job is no longer marked live');
  // Its privacy budgets and rewards, as the API has them.
  for (const h of after.privacy.hospitals) {
    const shown = await page.locator(`#budgets tr[data-hospital="${h.name}"] td`).nth(1).innerText();
    check(h.epsilon_spent > 0 && shown === h.epsilon_spent.toFixed(3),
      `${h.name}'s ε spent is shown (${shown} of ${after.privacy.target_epsilon})`);
  }
  const paid = after.rewards.rounds.reduce((n, r) => n + r.hospitals.length, 0);
  check(paid > 0 && await page.locator('#rewards tbody tr').count() === paid,
    `values and rewards per hospital per round are shown (${paid} rows)`);
  check(await page.locator('#reward-totals tbody tr').count() === after.rewards.hospitals.length,
    'reward totals per hospital are shown');
  await page.screenshot({ path: join(shots, 'job-live-finished.png'), fullPage: true });
  check(errors.length === 0, 'no script errors or CSP violations: ' + errors.join(' | '));
}

async function full() {
  // A request without a token is refused, and says nothing more.
  const anonymous = await browser.newContext();
  const refusedApi = await anonymous.request.get(url + 'api/jobs');
  check(refusedApi.status() === 401, 'GET /api/jobs without a token is refused with 401');
  check((await refusedApi.text()).trim() === 'unauthorized', 'the refusal leaks no detail');
  const anonPage = await anonymous.newPage();
  const refusedPage = await anonPage.goto(url);
  check(refusedPage.status() === 401, 'the dashboard page without a token is refused with 401');
  const forged = await anonymous.request.get(url + 'api/jobs', { headers: { Authorization: 'Bearer ' + token.slice(0, -4) + 'AAAA' } });
  check(forged.status() === 401, 'a token with an altered signature is refused with 401');
  await anonymous.close();

  // ?token= once: an HttpOnly cookie, then the jobs list.
  const { context, page, errors } = await signIn();
  check(!page.url().includes('token='), 'the token leaves the address bar after the first visit');
  const cookies = await context.cookies();
  const cookie = cookies.find(c => c.name === 'cohort_dashboard');
  check(cookie && cookie.httpOnly, 'the token is kept in an HttpOnly cookie');

  const jobs = await (await context.request.get(url + 'api/jobs')).json();
  check(jobs.length >= 1, `the API lists the job (${jobs.length})`);
  const job = jobs[0];
  await page.waitForSelector(`#jobs tr[data-job-id="${job.job_id}"]`);
  const listed = await page.locator('#jobs tbody tr').count();
  check(listed === jobs.length, `the jobs list shows every job the API lists (${listed})`);
  check((await page.locator(`#jobs tr[data-job-id="${job.job_id}"]`).innerText()).includes(job.state), 'the job row shows its state');
  await page.screenshot({ path: join(shots, 'jobs.png'), fullPage: true });

  // The job page: one point per completed round, the API's numbers.
  const detail = await (await context.request.get(url + 'api/jobs/' + job.job_id)).json();
  const rounds = detail.status.rounds.filter(r => r.round > 0 && r.metrics);
  check(rounds.length === detail.status.rounds_completed && rounds.length > 0,
    `the API has metrics for each of the ${detail.status.rounds_completed} completed rounds`);
  await page.click(`#jobs tr[data-job-id="${job.job_id}"] a`);
  const points = page.locator('#chart-loss circle[data-series="validation_loss"]');
  await points.first().waitFor();
  const plotted = await points.evaluateAll(cs => cs.map(c => [Number(c.dataset.round), Number(c.dataset.value)]));
  check(plotted.length === detail.status.rounds_completed,
    `the loss curve has one point per completed round (${plotted.length})`);
  plotted.forEach(([round, value], i) => {
    check(round === rounds[i].round && Math.abs(value - rounds[i].metrics.loss) < 1e-12,
      `point ${i + 1} is round ${rounds[i].round}'s validation loss ${rounds[i].metrics.loss}`);
  });
  const auc = await page.locator('#chart-quality circle[data-series="validation_auc"]').count();
  check(auc === rounds.length, 'the AUC curve has one point per completed round');
  check(await page.locator('#rounds tbody tr').count() === detail.status.rounds.filter(r => r.round > 0).length,
    'the rounds table has a row per completed round');
  const apiRounds = detail.status.rounds.filter(r => r.round > 0);
  const shownBytes = await page.locator('#rounds tbody tr').evaluateAll(rows =>
    rows.map(row => [...row.querySelectorAll('td[data-bytes]')].map(td => td.dataset.bytes)));
  check(apiRounds.every((r, i) => r.task_bytes_sent > 0 && r.answer_bytes_received > 0 &&
      shownBytes[i][0] === String(r.task_bytes_sent) && shownBytes[i][1] === String(r.answer_bytes_received)),
    "the rounds table shows each round's task and answer bytes as the API reports them");
  const trainAuc = await page.locator('#chart-quality circle[data-series="train_auc"]').count();
  check(trainAuc === apiRounds.filter(r => r.train_auc != null).length,
    `the training AUC curve has a point per round that reports one (${trainAuc}; none under DP)`);
  check(await page.locator('#model-signature').innerText() === detail.model.signature.status,
    `the model's signature status is shown (${detail.model.signature.status})`);
  check(detail.model.signature.status === 'verified', "the model's signature verifies");
  await page.screenshot({ path: join(shots, 'job.png'), fullPage: true });

  // Readable on a phone: nothing wider than the screen but the scrollable tables.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the job page fits a phone's width (overflow ${overflow}px)`);
  await page.screenshot({ path: join(shots, 'job-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  // The ledger explorer: a real entry's inclusion proof checks out in the
  // browser; the same entry, altered, does not.
  const entry = detail.model.signature.ledger_entry;
  check(Number.isInteger(entry), `the model's ledger entry is known (${entry})`);
  await page.goto(url + '#/ledger/' + entry);
  await page.waitForSelector('#proof-result.ok, #proof-result.bad');
  check(await page.locator('#proof-result.ok').count() === 1,
    `entry ${entry}'s inclusion proof verifies in the browser: ${await page.locator('#proof-result').innerText()}`);
  check(await page.locator('#ledger-verified.ok').count() === 1, "the coordinator's ledger check passes");
  await page.screenshot({ path: join(shots, 'ledger-proof-ok.png'), fullPage: true });

  const leaf = await page.locator('#proof-leaf').inputValue();
  const tampered = leaf.replace(/"round":(\d+)/, (_, r) => `"round":${Number(r) + 1}`);
  check(tampered !== leaf, 'the entry was altered');
  await page.fill('#proof-leaf', tampered);
  await page.click('#proof-verify');
  await page.waitForSelector('#proof-result.bad');
  check(await page.locator('#proof-result').getAttribute('data-verdict') === 'not-included',
    `the altered entry fails the check: ${await page.locator('#proof-result').innerText()}`);
  await page.screenshot({ path: join(shots, 'ledger-proof-tampered.png'), fullPage: true });

  check(errors.length === 0, 'no script errors or CSP violations: ' + errors.join(' | '));
}

try {
  if (liveJob) await live(liveJob);
  else await full();
  console.log('screenshots in ' + shots);
} finally {
  await browser.close();
}
