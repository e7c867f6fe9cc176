// Shared pieces of the end-to-end tests: a real standalone server per test, a
// real headless Chromium (Debian's, never a downloaded one) with a fresh
// profile, and /metrics read through a small exposition parser.
//
// Nothing here sleeps for a fixed time: every wait polls a condition and gives
// up after a bounded time with a message that says what was still missing.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository root (static/test/e2e -> ../../..). */
export const REPO = resolve(here, '../../..');
/** The standalone binary: $PUM_COLLECTOR_BIN, or the debug build of the workspace. */
export const COLLECTOR_BIN =
  process.env.PUM_COLLECTOR_BIN || join(REPO, 'target/debug/pum-collector');
/** The browser: Debian's chromium package (CI installs it with apt). */
export const CHROMIUM = process.env.PUM_CHROMIUM || '/usr/bin/chromium';

/** Upper bound for one wait (server start, a page condition, metrics arriving). */
export const WAIT_MS = 20000;

/**
 * Starts `pum-collector standalone` on free ports (port 0) with a fresh data
 * dir, and resolves once both listeners printed their addresses. `stop()`
 * ends it (SIGTERM, then SIGKILL if it does not exit) and removes the data
 * dir; it is safe to call twice.
 */
export async function startServer(extraArgs = []) {
  if (!existsSync(COLLECTOR_BIN))
    throw new Error(
      `${COLLECTOR_BIN} not found: run \`cargo build -p pum-collector\` or set PUM_COLLECTOR_BIN`,
    );
  const dataDir = mkdtempSync(join(tmpdir(), 'pum-e2e-data-'));
  const child = spawn(
    COLLECTOR_BIN,
    [
      'standalone',
      '--ingest-listen',
      '127.0.0.1:0',
      '--metrics-listen',
      '127.0.0.1:0',
      '--data-dir',
      dataDir,
      ...extraArgs,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    const addrs = await new Promise((ok, fail) => {
      const timer = setTimeout(
        () => fail(new Error(`pum-collector printed no addresses in ${WAIT_MS} ms`)),
        WAIT_MS,
      );
      child.once('error', fail);
      exited.then(({ code, signal }) =>
        fail(new Error(`pum-collector exited early (${code ?? signal})`)),
      );
      child.stdout.on('data', (d) => {
        stdout += d;
        const ingest = /pum: ingest listening on (http:\/\/\S+)/.exec(stdout);
        const metrics = /pum: metrics listening on (http:\/\/\S+)/.exec(stdout);
        if (ingest && metrics) {
          clearTimeout(timer);
          ok({ origin: ingest[1].replace(/\/+$/, ''), metricsUrl: metrics[1] });
        }
      });
    });
    return { ...addrs, stop, logs: () => stdout + stderr };
  } catch (e) {
    await stop();
    e.message += `\n--- pum-collector output ---\n${stdout}${stderr}`;
    throw e;
  }
}

/**
 * Launches Chromium with a fresh, temporary user-data-dir (a persistent
 * context is how Playwright takes one). `close()` also removes the profile.
 */
export async function launchBrowser() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'pum-e2e-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-quic',
      ],
    });
  } catch (e) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  context.setDefaultTimeout(WAIT_MS);
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/**
 * Parses Prometheus text exposition into a Map `name{k="v",...}` -> number,
 * labels sorted by name so lookups do not depend on the output order.
 */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels = {};
    for (const [, k, v] of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[k] = v;
    out.set(key(m[1], labels), Number(m[3]));
  }
  return out;
}

/** The map key of a series. */
export const key = (name, labels = {}) =>
  name +
  '{' +
  Object.keys(labels)
    .sort()
    .map((k) => `${k}="${labels[k]}"`)
    .join(',') +
  '}';

/** Fetches and parses /metrics. */
export async function scrape(metricsUrl) {
  const r = await fetch(metricsUrl);
  if (r.status != 200) throw new Error(`GET ${metricsUrl}: ${r.status}`);
  return parseMetrics(await r.text());
}

/** A series' value, 0 when absent (a counter or histogram nothing was recorded into). */
export const value = (metrics, name, labels) => metrics.get(key(name, labels)) ?? 0;

/** With PUM_E2E_DEBUG set, prints a scrape's series (no buckets) as test diagnostics. */
export const debugDump = (metrics) => {
  if (process.env.PUM_E2E_DEBUG)
    console.log(
      [...metrics]
        .filter(([k]) => !k.includes('_bucket{') && !k.startsWith('pum_store_'))
        .map(([k, v]) => `${k} ${v}`)
        .join('\n'),
    );
};

/** The series of pum's data (not its self-metrics that change on every scrape). */
const dataSeries = (metrics) =>
  JSON.stringify(
    [...metrics].filter(
      ([k]) =>
        !k.startsWith('pum_store_') && !k.startsWith('pum_snapshot_') && !k.startsWith('pum_series'),
    ),
  );

/**
 * Polls /metrics until `check(metrics)` returns no problems (an empty array)
 * on two consecutive scrapes with identical data series, i.e. everything
 * expected arrived and nothing more is still coming in. Gives up after
 * `timeout` ms listing what was still wrong. Resolves to the last scrape.
 */
export async function waitForMetrics(metricsUrl, check, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let prev = null;
  let problems = ['never scraped'];
  for (;;) {
    const m = await scrape(metricsUrl);
    problems = check(m);
    if (!problems.length && prev !== null && dataSeries(m) === prev) return m;
    prev = problems.length ? null : dataSeries(m);
    if (Date.now() > deadline)
      throw new Error(`/metrics did not settle within ${timeout} ms:\n  ${problems.join('\n  ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A `check` for waitForMetrics: each of `expected` ([name, labels, value,
 * tolerance?]) must match exactly (or within tolerance, for sums of values
 * that are not exact in fixed point), and no sample or push was rejected.
 */
export const expectSeries = (expected) => (m) => {
  const problems = [];
  for (const [name, labels, want, tol = 0] of expected) {
    const got = value(m, name, labels);
    if (!(Math.abs(got - want) <= tol))
      problems.push(`${key(name, labels)} = ${got}, want ${want}${tol ? ` ± ${tol}` : ''}`);
  }
  for (const [k, v] of m)
    if ((k.startsWith('pum_samples_rejected_total') || k.startsWith('pum_pushes_rejected_total')) && v)
      problems.push(`${k} = ${v}: the server rejected what the client sent`);
  return problems;
};

/** The histograms of the built-in browser pack and the phases of navigation timing. */
export const NAV_PHASES = [
  'redirect',
  'dns',
  'connect',
  'tls',
  'request',
  'response',
  'dom_processing',
  'load_event',
];
export const VITALS = [
  'browser_fcp_seconds',
  'browser_ttfb_seconds',
  'browser_lcp_seconds',
  'browser_inp_seconds',
  'browser_cls',
];

/**
 * Expected counts of the automatic measurements after `views` page views, each
 * with at least one click and each ended by hiding the page: the client
 * records every navigation phase (0 when a phase did not happen, like DNS or
 * TLS on localhost), the page load time, and each Web Vital once per view.
 */
export const autoMetricCounts = (views) => [
  ...NAV_PHASES.map((phase) => ['browser_navigation_phase_seconds_count', { phase }, views]),
  ['browser_page_load_seconds_count', {}, views],
  ...VITALS.map((name) => [`${name}_count`, {}, views]),
];

/**
 * Waits until the page's client is loaded and has had the chance to record
 * everything a page view measures before the user leaves: the load event has
 * ended and the client's navigation timing task has run, FCP and an LCP
 * candidate exist, and (when `clicked`) the first input was timed, so that
 * INP is known at hide. These are the conditions of a real visit, not sleeps.
 */
export async function pageSettled(page, { clicked = false } = {}) {
  await page.waitForFunction(() => {
    const n = window.prometheusAggregator;
    const nav = performance.getEntriesByType('navigation')[0];
    return n && n.pum && nav && nav.loadEventEnd > 0;
  });
  await page.waitForFunction(() => performance.getEntriesByName('first-contentful-paint').length > 0);
  // LCP entries are not in the performance timeline: count them with an observer.
  await page.evaluate(() => {
    window.__pumLcp = 0;
    new PerformanceObserver((l) => (window.__pumLcp += l.getEntries().length)).observe({
      type: 'largest-contentful-paint',
      buffered: true,
    });
  });
  await page.waitForFunction(() => window.__pumLcp > 0);
  if (clicked)
    await page.waitForFunction(() => performance.getEntriesByType('first-input').length > 0);
  // The client measures navigation timing in a task queued from the load
  // event; a task queued now runs after it.
  await page.evaluate(() => new Promise((r) => setTimeout(r, 0)));
}

/**
 * Wraps the page's `prometheusAggregator` so the test knows every value the
 * page asked to record, including the demo's random simulated latencies. The
 * wrapper only records and forwards.
 */
export async function recordCalls(page) {
  await page.evaluate(() => {
    const real = window.prometheusAggregator;
    window.__pumCalls = window.__pumCalls || [];
    const w = function (...a) {
      if (a[0] == 'increment' || a[0] == 'observe') window.__pumCalls.push(JSON.parse(JSON.stringify(a)));
      return real.apply(this, a);
    };
    w.pum = real.pum;
    window.prometheusAggregator = w;
  });
}

/** Reads back the calls seen by recordCalls. */
export const recordedCalls = (page) => page.evaluate(() => window.__pumCalls);

/**
 * Folds recorded calls into the expected series: counters summed, histograms'
 * `_count` and `_sum`. The server keeps sums in millionths, so a sum of
 * arbitrary values (the demo's random latencies) may differ by half a
 * millionth per observation; a sum of exact values has no tolerance.
 */
export function expectedFromCalls(calls) {
  const series = new Map();
  const bump = (name, labels, v, tol) => {
    const k = key(name, labels);
    const s = series.get(k) || [name, labels, 0, 0];
    s[2] += v;
    s[3] += tol;
    series.set(k, s);
  };
  for (const [cmd, name, labels, v] of calls) {
    if (cmd == 'increment') bump(name, labels, v === undefined ? 1 : v, 0);
    else {
      bump(`${name}_count`, labels, 1, 0);
      // Values like 0.25 or 1.5 are exact both in binary and in millionths:
      // their sums must match to the last digit.
      const exact = Number.isInteger(v * 1024) && Number.isInteger(v * 1e6);
      bump(`${name}_sum`, labels, v, exact ? 0 : 1e-6);
    }
  }
  return [...series.values()].map(([n, l, v, tol]) => [n, l, v, tol ? tol + 1e-9 : 0]);
}

/** Clicks `selector` `n` times. */
export async function clickTimes(page, selector, n) {
  for (let i = 0; i < n; i++) await page.click(selector);
}

/**
 * Clicks a simulated third-party API button `n` times, each time waiting for
 * the simulated call to finish (the demo disables the button meanwhile).
 */
export async function callApi(page, api, n) {
  const sel = `button[data-api="${api}"]`;
  for (let i = 0; i < n; i++) {
    await page.click(sel);
    await page.waitForSelector(`${sel}:not([disabled])`);
  }
}
