// Drives a pod's dashboard (served at `/`) in headless Chromium.
//
// usage: node dashboard.mjs '<json config>'
//   {"base": "http://127.0.0.1:PORT", "scenario": "full" | "token",
//    "source1": "...", "source2": "...", "screenshot": "/path.png",   (full)
//    "token": "...", "expectJob": "<id>"}                             (token)
//
// full: submits job 1 through the form, records every value its progress bar
// takes until it shows `done`, plays it (hls.js) until the video's `ended`
// event, submits job 2 and cancels it from the page until it shows
// `canceled`, takes a screenshot, then checks the page at phone width.
// token: the page must ask for the token; after it is typed, the given job
// must be listed.
//
// Every request the page makes is recorded. Prints one JSON line; exits 0
// when the scenario ran to its end (the Rust test asserts on the details).

import { chromium } from 'playwright-core';

const config = JSON.parse(process.argv[2] ?? '{}');
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const origin = new URL(config.base).origin;
const result = { requests: [], foreignRequests: [], pageErrors: [], steps: [] };
const step = (name) => result.steps.push(name);

// Records every value the main progress bar of each job takes, before any
// page script runs.
function watchProgress() {
  window.__progress = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const bar = r.target;
      const item = bar.parentElement && bar.parentElement.parentElement;
      if (bar.tagName !== 'PROGRESS' || !item || !item.classList.contains('job')) continue;
      const id = item.dataset.jobId;
      const values = (window.__progress[id] ||= []);
      const value = Number(bar.getAttribute('value'));
      if (values[values.length - 1] !== value) values.push(value);
    }
  }).observe(document, { attributes: true, subtree: true, attributeFilter: ['value'] });
}

async function submit(page, source) {
  const before = await page.getAttribute('#submit-status', 'data-job-id');
  await page.fill('#source', source);
  await page.fill('#ladder', '240p');
  await page.selectOption('#job-mode', 'ingest');
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.waitForFunction(
    (prev) => {
      const id = document.getElementById('submit-status').dataset.jobId;
      return id && id !== prev;
    },
    before,
    { timeout: 30000 },
  );
  return page.getAttribute('#submit-status', 'data-job-id');
}

const job = (id) => `li.job[data-job-id="${id}"]`;

async function full(page) {
  await page.goto(config.base + '/');
  await page.waitForFunction(() => document.getElementById('mode').textContent !== '…');
  result.mode = await page.textContent('#mode');
  result.workerId = await page.textContent('#worker-id');
  step('opened');

  const id1 = await submit(page, config.source1);
  result.job1 = id1;
  await page.waitForSelector(`${job(id1)}[data-status="done"]`, { timeout: 120000 });
  result.job1Progress = await page.evaluate((id) => window.__progress[id] || [], id1);
  result.job1BarValue = await page.$eval(`${job(id1)} .meter progress`, (p) => p.value);
  result.job1Renditions = await page.$$eval(`${job(id1)} .renditions li`, (lis) =>
    lis.map((li) => Array.from(li.children, (c) => c.textContent).filter(Boolean).join(' ')),
  );
  step('job1 done');

  await page.click(`${job(id1)} button.play`);
  await page.waitForFunction(() => document.getElementById('quality').options.length > 1, null, {
    timeout: 30000,
  });
  result.qualityOptions = await page.$$eval('#quality option', (os) => os.map((o) => o.textContent));
  await page.waitForFunction(() => document.getElementById('video').ended, null, {
    timeout: 60000,
    polling: 100,
  });
  result.played = await page.$eval('#video', (v) => ({
    ended: v.ended,
    currentTime: v.currentTime,
    duration: v.duration,
  }));
  step('job1 played');

  const id2 = await submit(page, config.source2);
  result.job2 = id2;
  await page.waitForSelector(`${job(id2)} button.cancel`, { state: 'visible', timeout: 30000 });
  result.job2StatusBeforeCancel = await page.getAttribute(job(id2), 'data-status');
  // Holders appear while job 2 runs (best effort: it may still be probing).
  result.holdersSeen = await page
    .waitForFunction(() => document.querySelectorAll('#holders tr').length > 0, null, {
      timeout: 8000,
    })
    .then(() =>
      page.$$eval('#holders tr', (trs) =>
        trs.map((tr) => Array.from(tr.children, (c) => c.textContent).join(' ')),
      ),
    )
    .catch(() => []);
  await page.click(`${job(id2)} button.cancel`);
  await page.waitForSelector(`${job(id2)}[data-status="canceled"]`, { timeout: 30000 });
  result.job2CancelHidden = await page.$eval(`${job(id2)} button.cancel`, (b) => b.hidden);
  step('job2 canceled');

  await page.waitForTimeout(300);
  await page.screenshot({ path: config.screenshot, fullPage: true });
  step('screenshot');

  await page.setViewportSize({ width: 360, height: 740 });
  await page.waitForTimeout(200);
  result.phone = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  step('phone width');
}

async function token(page) {
  await page.goto(config.base + '/');
  await page.waitForSelector('#token-panel', { state: 'visible', timeout: 15000 });
  result.askedForToken = true;
  step('asked');
  await page.getByLabel('Token', { exact: true }).fill(config.token);
  await page.getByRole('button', { name: 'Use token' }).click();
  await page.waitForSelector(job(config.expectJob), { timeout: 15000 });
  result.listed = await page.$$eval('li.job', (lis) => lis.map((li) => li.dataset.jobId));
  await page.waitForFunction(() => document.getElementById('mode').textContent !== '…');
  result.mode = await page.textContent('#mode');
  result.tokenPanelHidden = await page.$eval('#token-panel', (p) => p.hidden);
  result.storedToken = await page.evaluate(() => sessionStorage.getItem('segswarm.token'));
  step('listed');
}

let browser;
let exitCode = 1;
try {
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  await page.addInitScript(watchProgress);
  page.on('request', (request) => {
    const url = request.url();
    result.requests.push(request.method() + ' ' + url);
    if (url.startsWith('data:')) return; // inline, never leaves the page
    let requestOrigin;
    try {
      requestOrigin = new URL(url).origin; // blob: URLs carry their creator's origin
    } catch {
      requestOrigin = 'unparsable';
    }
    if (requestOrigin !== origin) result.foreignRequests.push(url);
  });
  page.on('pageerror', (e) => result.pageErrors.push(e.message));
  if (config.scenario === 'token') await token(page);
  else await full(page);
  exitCode = 0;
} catch (e) {
  result.error = e && e.stack ? e.stack : String(e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
console.log(JSON.stringify(result));
process.exit(exitCode);
