// Plays an HLS package in headless Chromium with hls.js, to the end.
//
// usage: node play.mjs <hls_dir> [timeout_seconds]
//
// Serves <hls_dir> and hls.js from 127.0.0.1 on a free port, opens a page that
// plays master.m3u8 muted, waits for the video's `ended` event and prints one
// JSON line: {ended, currentTime, duration, fatalErrors, errors, levels,
// audioTracks, events}. Exits 0 only if the video ended, its currentTime is
// within 0.2 s of its duration and hls.js reported no fatal error.

import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const hlsDir = process.argv[2];
const timeoutMs = Number(process.argv[3] ?? 60) * 1000;
if (!hlsDir) {
  console.error('usage: node play.mjs <hls_dir> [timeout_seconds]');
  process.exit(2);
}
const root = path.resolve(hlsDir);
const hlsJs = path.join(here, 'node_modules', 'hls.js', 'dist', 'hls.min.js');
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const TYPES = {
  '.m3u8': 'application/vnd.apple.mpegurl',
  '.ts': 'video/mp2t',
  '.webp': 'image/webp',
  '.json': 'application/json',
  '.js': 'text/javascript',
};

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>segswarm playback</title></head>
<body>
<video id="v" muted playsinline></video>
<script src="/hls.min.js"></script>
<script>
  window.result = { ended: false, fatalErrors: [], errors: [], events: [] };
  const video = document.getElementById('v');
  const log = (e) => window.result.events.push(e);
  video.addEventListener('ended', () => { window.result.ended = true; log('ended'); });
  video.addEventListener('error', () => {
    window.result.fatalErrors.push('video element error ' + (video.error && video.error.message));
  });
  if (!Hls.isSupported()) {
    window.result.fatalErrors.push('hls.js: MSE not supported in this browser');
  } else {
    const hls = new Hls({ debug: false, enableWorker: true });
    hls.on(Hls.Events.ERROR, (_, data) => {
      const text = data.type + '/' + data.details + (data.reason ? ' ' + data.reason : '');
      (data.fatal ? window.result.fatalErrors : window.result.errors).push(text);
    });
    hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
      window.result.levels = data.levels.map((l) => l.width + 'x' + l.height);
      log('manifest_parsed');
      video.play().catch((e) => window.result.fatalErrors.push('play(): ' + e));
    });
    hls.on(Hls.Events.AUDIO_TRACKS_UPDATED, (_, data) => {
      window.result.audioTracks = data.audioTracks.map((t) => t.lang || t.name);
    });
    hls.loadSource('/hls/master.m3u8');
    hls.attachMedia(video);
  }
</script>
</body></html>`;

function serve(req, res) {
  const url = new URL(req.url, 'http://localhost');
  let file;
  if (url.pathname === '/' || url.pathname === '/index.html') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
    return;
  } else if (url.pathname === '/hls.min.js') {
    file = hlsJs;
  } else if (url.pathname.startsWith('/hls/')) {
    file = path.join(root, decodeURIComponent(url.pathname.slice('/hls/'.length)));
    if (!file.startsWith(root + path.sep)) {
      res.writeHead(403).end();
      return;
    }
  } else {
    res.writeHead(404).end();
    return;
  }
  let size;
  try {
    const st = statSync(file);
    if (!st.isFile()) throw new Error('not a file');
    size = st.size;
  } catch {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'content-length': size,
    'cache-control': 'no-store',
  });
  createReadStream(file).pipe(res);
}

const server = createServer(serve);
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

let browser;
let result = { ended: false, fatalErrors: [] };
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
  const page = await browser.newPage();
  page.on('pageerror', (e) => result.fatalErrors.push('page error: ' + e.message));
  await page.goto(`http://127.0.0.1:${port}/`);
  try {
    await page.waitForFunction(
      () => window.result.ended || window.result.fatalErrors.length > 0,
      null,
      { timeout: timeoutMs, polling: 100 },
    );
  } catch (e) {
    result.fatalErrors.push(`timeout after ${timeoutMs / 1000} s waiting for ended`);
  }
  const state = await page.evaluate(() => ({
    ...window.result,
    currentTime: document.getElementById('v').currentTime,
    duration: document.getElementById('v').duration,
  }));
  result = { ...state, fatalErrors: [...state.fatalErrors, ...result.fatalErrors] };
  const ok =
    result.ended &&
    Number.isFinite(result.duration) &&
    Math.abs(result.currentTime - result.duration) <= 0.2 &&
    result.fatalErrors.length === 0;
  exitCode = ok ? 0 : 1;
} catch (e) {
  result.fatalErrors.push('harness: ' + (e && e.stack ? e.stack : String(e)));
} finally {
  if (browser) await browser.close().catch(() => {});
  server.close();
}
console.log(JSON.stringify(result));
process.exit(exitCode);
