#!/usr/bin/env node
// tests/browser/check_page.mjs: loads one page (an HTML report or the live console) in headless
// Chromium and checks it the way a person would look at it, for the Rust tests.
//
//   node tests/browser/check_page.mjs --url URL --screenshot PATH [--header 'Name: value']...
//        [--min-charts N] [--timeout-ms 20000] [--text 'must appear']...
//
// URL is http://127.0.0.1:PORT/... or file:///... . The page's contract: it sets
// document.documentElement.dataset.ready = "true" once rendered with its data; every chart is an
// <svg class="ws-chart"> (named by its <title> child or aria-label) whose data points are the
// descendants carrying a data-value attribute. The check fails when the page is not ready within
// --timeout-ms, logs a console error, throws, has a request fail (network error or HTTP >= 400),
// requests anything outside its own origin / file: / data: / blob: (such requests are aborted: no
// network at view time), has fewer charts than --min-charts or a chart with no points, or lacks a
// --text in document.body.innerText. A full-page PNG goes to PATH in every case it can be taken.
//
// Prints one JSON line on stdout: {"ok","url","title","ready","charts":[{"id","title","points"}],
// "console_errors","page_errors","external_requests","failed_requests","missing_text","screenshot",
// "error"}; "error" sums up why when not ok (else null). Exit 0 when ok, 1 when not, 2 on bad usage.
//
// Needs tests/browser/setup.sh TARGET_DIR (make browser): playwright-core is loaded from
// $BROWSER_MODULES (a node_modules folder), else from <repo>/target/browser/node_modules, else
// from Node's usual resolution. Chromium is $CHROMIUM, else /usr/bin/chromium.
import { createRequire } from 'node:module';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function usage(msg) {
  process.stderr.write(
    `check_page.mjs: ${msg}\nusage: node tests/browser/check_page.mjs --url URL --screenshot PATH ` +
      `[--header 'Name: value']... [--min-charts N] [--timeout-ms 20000] [--text 'must appear']...\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { headers: {}, texts: [], minCharts: 0, timeoutMs: 20000, url: null, screenshot: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--url': opts.url = value(); break;
      case '--screenshot': opts.screenshot = value(); break;
      case '--text': opts.texts.push(value()); break;
      case '--header': {
        const h = value();
        const colon = h.indexOf(':');
        if (colon <= 0) usage(`--header wants 'Name: value', got '${h}'`);
        opts.headers[h.slice(0, colon).trim()] = h.slice(colon + 1).trim();
        break;
      }
      case '--min-charts': {
        opts.minCharts = Number(value());
        if (!Number.isInteger(opts.minCharts) || opts.minCharts < 0) usage('--min-charts wants a whole number');
        break;
      }
      case '--timeout-ms': {
        opts.timeoutMs = Number(value());
        if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs <= 0) usage('--timeout-ms wants a positive whole number');
        break;
      }
      default: usage(`unknown argument '${flag}'`);
    }
  }
  if (!opts.url) usage('--url is required');
  if (!opts.screenshot) usage('--screenshot is required');
  try {
    const u = new URL(opts.url);
    if (!['http:', 'https:', 'file:'].includes(u.protocol)) usage(`--url must be http(s):// or file://, got '${opts.url}'`);
  } catch {
    usage(`--url is not a URL: '${opts.url}'`);
  }
  return opts;
}

function loadPlaywright() {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [];
  if (process.env.BROWSER_MODULES) candidates.push(resolve(process.env.BROWSER_MODULES));
  candidates.push(join(here, '..', '..', 'target', 'browser', 'node_modules'));
  for (const modules of candidates) {
    if (existsSync(join(modules, 'playwright-core', 'package.json'))) {
      // A require rooted in the folder that holds node_modules resolves from it.
      return createRequire(join(dirname(modules), 'check_page.cjs'))('playwright-core');
    }
  }
  try {
    return createRequire(import.meta.url)('playwright-core');
  } catch {
    throw new Error(
      `playwright-core not found in ${candidates.join(' or ')}: run tests/browser/setup.sh target/browser ` +
        `(make browser), or set BROWSER_MODULES to a node_modules folder that has it`,
    );
  }
}

// Requests the page may make: its own origin (http pages only), and local schemes.
function isLocal(requestUrl, pageOrigin) {
  let u;
  try {
    u = new URL(requestUrl);
  } catch {
    return false;
  }
  if (['file:', 'data:', 'blob:', 'about:'].includes(u.protocol)) return true;
  return pageOrigin !== null && u.origin === pageOrigin;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const remaining = () => Math.max(1, opts.timeoutMs - (Date.now() - started));
  const pageUrl = new URL(opts.url);
  const pageOrigin = pageUrl.protocol === 'file:' ? null : pageUrl.origin;
  const report = {
    ok: false,
    url: opts.url,
    title: null,
    ready: false,
    charts: [],
    console_errors: [],
    page_errors: [],
    external_requests: [],
    failed_requests: [],
    missing_text: [],
    screenshot: null,
    error: null,
  };
  const external = new Set();
  const failedUrls = new Set();
  const consoleErrors = [];

  let browser;
  try {
    const { chromium } = loadPlaywright();
    const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
    if (!existsSync(executablePath)) {
      throw new Error(`no Chromium at ${executablePath}: run tests/browser/setup.sh target/browser (make browser), or set CHROMIUM`);
    }
    browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: remaining() });
    const context = await browser.newContext({
      extraHTTPHeaders: opts.headers,
      viewport: { width: 1280, height: 900 },
      serviceWorkers: 'block',
    });
    // No network at view time: anything outside the page's origin is recorded and aborted.
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (isLocal(url, pageOrigin)) return route.continue();
      external.add(url);
      return route.abort('blockedbyclient');
    });
    const page = await context.newPage();
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const loc = msg.location();
      consoleErrors.push({ text: msg.text(), url: (loc && loc.url) || null, line: loc ? loc.lineNumber + 1 : 0 });
    });
    page.on('pageerror', (err) => report.page_errors.push(err.stack || String(err)));
    page.on('request', (req) => {
      // Requests the router never sees (e.g. from a file: page) still count.
      if (!isLocal(req.url(), pageOrigin)) external.add(req.url());
    });
    page.on('websocket', (ws) => {
      const u = new URL(ws.url());
      const httpOrigin = `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}`;
      if (httpOrigin !== pageOrigin) external.add(ws.url());
    });
    page.on('requestfailed', (req) => {
      if (external.has(req.url())) return; // reported under external_requests
      failedUrls.add(req.url());
      report.failed_requests.push(`${req.method()} ${req.url()}: ${req.failure()?.errorText ?? 'failed'}`);
    });
    page.on('response', (res) => {
      if (res.status() < 400) return;
      failedUrls.add(res.url());
      report.failed_requests.push(`${res.request().method()} ${res.url()}: HTTP ${res.status()}`);
    });

    try {
      await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: remaining() });
      await page.waitForFunction(() => document.documentElement.dataset.ready === 'true', null, {
        timeout: remaining(),
        polling: 50,
      });
      report.ready = true;
    } catch (e) {
      report.error = `not ready within ${opts.timeoutMs} ms (document.documentElement.dataset.ready !== "true"): ${String(e.message).split('\n')[0]}`;
    }

    // What is on the page, ready or not (helps to see why it was not).
    try {
      report.title = await page.title();
      report.charts = await page.$$eval('svg.ws-chart', (svgs) =>
        svgs.map((svg) => {
          const title = svg.querySelector(':scope > title');
          return {
            id: svg.id || null,
            title: (title && title.textContent.trim()) || svg.getAttribute('aria-label') || null,
            points: svg.querySelectorAll('[data-value]').length,
          };
        }),
      );
      const text = await page.evaluate(() => (document.body ? document.body.innerText : ''));
      report.missing_text = opts.texts.filter((t) => !text.includes(t));
      const shot = resolve(opts.screenshot);
      mkdirSync(dirname(shot), { recursive: true });
      await page.screenshot({ path: shot, fullPage: true, timeout: Math.max(5000, remaining()) });
      report.screenshot = opts.screenshot;
    } catch (e) {
      report.error = report.error ?? `inspecting the page failed: ${String(e.message).split('\n')[0]}`;
    }
  } catch (e) {
    report.error = String(e.message || e).split('\n')[0];
  } finally {
    if (browser) await browser.close().catch(() => {});
  }

  report.external_requests = [...external];
  // Chromium also logs each failed or blocked load as a console error: those are already reported
  // under failed_requests / external_requests, so they are left out here.
  report.console_errors = consoleErrors
    .filter((e) => !(e.text.startsWith('Failed to load resource') && (external.has(e.url) || failedUrls.has(e.url))))
    .map((e) => (e.url ? `${e.text} (${e.url}:${e.line})` : e.text));
  // `error` sums up every reason the check failed (null when ok), for the tests' messages.
  const problems = report.error ? [report.error] : [];
  if (report.charts.length < opts.minCharts) problems.push(`${report.charts.length} charts, wanted at least ${opts.minCharts}`);
  const empty = report.charts.filter((c) => c.points === 0).map((c) => c.id || c.title || '(unnamed)');
  if (empty.length) problems.push(`charts with no points: ${empty.join(', ')}`);
  const count = (list, what) => list.length && problems.push(`${list.length} ${what}`);
  count(report.console_errors, 'console error(s)');
  count(report.page_errors, 'uncaught page error(s)');
  count(report.external_requests, 'request(s) outside the page (no network at view time)');
  count(report.failed_requests, 'failed request(s)');
  if (report.missing_text.length) problems.push(`text not on the page: ${report.missing_text.map((t) => JSON.stringify(t)).join(', ')}`);
  if (report.screenshot === null && !report.error) problems.push('no screenshot');
  report.ok = report.ready && problems.length === 0;
  report.error = problems.length ? problems.join('; ') : null;
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(report.ok ? 0 : 1);
}

main();
