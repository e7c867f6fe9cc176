// The CSP-friendly install (`<script async src=... data-...>`, no inline code)
// on /demo/csp, whose Content-Security-Policy forbids inline script: it records
// and delivers like the snippet, without a single CSP violation, and the
// policy really is enforced on that page.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer,
  launchBrowser,
  waitForMetrics,
  expectSeries,
  autoMetricCounts,
  pageSettled,
  recordCalls,
  recordedCalls,
  expectedFromCalls,
  clickTimes,
  callApi,
  debugDump,
} from './harness.mjs';

// Runs before the page's own scripts (injected by the DevTools protocol, so
// the page's CSP does not apply to it): collects CSP violation reports.
const WATCH_CSP = () => {
  window.__csp = [];
  document.addEventListener(
    'securitypolicyviolation',
    (e) =>
      window.__csp.push({
        directive: e.effectiveDirective,
        blocked: e.blockedURI,
        source: e.sourceFile,
        sample: e.sample,
      }),
    true,
  );
};

test('CSP install: no violation, inline script forbidden, metrics delivered on leave', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const browser = await launchBrowser();
  t.after(browser.close);
  const page = await browser.context.newPage();
  await page.addInitScript(WATCH_CSP);
  const console_ = [];
  page.on('console', (msg) => console_.push(`${msg.type()}: ${msg.text()}`));
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  const res = await page.goto(server.origin + '/demo/csp');
  assert.equal(res.status(), 200);
  const scriptSrc = (res.headers()['content-security-policy'] || '')
    .split(';')
    .map((d) => d.trim().split(/\s+/))
    .find(([name]) => name == 'script-src');
  assert.deepEqual(scriptSrc, ['script-src', "'self'"], 'the page is served with script-src \'self\'');

  await page.waitForFunction(() => window.prometheusAggregator && window.prometheusAggregator.pum);
  await recordCalls(page);
  await clickTimes(page, 'button[data-feature="search"]', 2);
  await clickTimes(page, 'button[data-feature="export"]', 3);
  await callApi(page, 'payments', 2);
  await page.evaluate(() => {
    prometheusAggregator('increment', 'demo_feature_usage_total', { feature: 'share' }, 7);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 0.5);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 0.75);
  });
  await pageSettled(page, { clicked: true });
  const calls = await recordedCalls(page);
  assert.equal(calls.length, 2 + 3 + 2 + 3);

  // The page, the client and web-vitals ran without tripping the policy.
  assert.deepEqual(await page.evaluate(() => window.__csp), [], 'no securitypolicyviolation event');
  assert.deepEqual(
    console_.filter((l) => /Content Security Policy|Refused to/i.test(l)),
    [],
    'no CSP message in the console',
  );

  // And the policy is real: an inline script is refused and reported.
  // (Whether Playwright itself reports the refusal varies; the page's own
  // report and the flag below are what count.)
  await page.addScriptTag({ content: 'window.__inlineRan = true;' }).catch(() => {});
  await page.waitForFunction(() => window.__csp.length > 0);
  assert.equal(await page.evaluate(() => window.__inlineRan), undefined, 'the inline script did not run');
  const [v] = await page.evaluate(() => window.__csp);
  assert.match(v.directive, /^script-src/);
  assert.equal(v.blocked, 'inline');

  await page.goto('about:blank');

  const expected = expectedFromCalls(calls);
  const m = await waitForMetrics(server.metricsUrl, expectSeries([...expected, ...autoMetricCounts(1)]));
  debugDump(m);
  assert.deepEqual(errors, [], 'no uncaught errors in the page');
});
