// The demo page with the original Google-Analytics-style snippet, in a real
// Chromium against a real standalone server: custom counters and observations
// arrive exactly, and every page view brings its navigation timing and Web
// Vitals, all delivered when the page is left (no interval tick is waited for).
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
  value,
  debugDump,
} from './harness.mjs';

test('original snippet: custom metrics exact, navigation timing and Web Vitals once per page view', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const browser = await launchBrowser();
  t.after(browser.close);
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  // Page view 1: `/`, the feature buttons and the simulated third-party API.
  const res = await page.goto(server.origin + '/');
  assert.equal(res.status(), 200);
  await page.waitForFunction(() => window.prometheusAggregator && window.prometheusAggregator.pum);
  await recordCalls(page);
  await clickTimes(page, 'button[data-feature="search"]', 3);
  await clickTimes(page, 'button[data-feature="share"]', 2);
  await clickTimes(page, 'button[data-feature="export"]', 1);
  await callApi(page, 'maps', 2);
  await callApi(page, 'payments', 1);
  // Direct API calls with values whose sums are exact.
  await page.evaluate(() => {
    prometheusAggregator('increment', 'demo_feature_usage_total', { feature: 'export' }, 4);
    prometheusAggregator('increment', 'demo_feature_usage_total', { feature: 'share' });
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'payments' }, 1.5);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'payments' }, 0.25);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 0.125);
  });
  await pageSettled(page, { clicked: true });
  const calls = await recordedCalls(page);
  assert.equal(calls.length, 3 + 2 + 1 + 2 + 1 + 5, 'every click reached prometheusAggregator');

  // Page view 2: `/demo` (leaving `/` hides it and flushes its batch).
  await page.goto(server.origin + '/demo');
  await page.waitForFunction(() => window.prometheusAggregator && window.prometheusAggregator.pum);
  await recordCalls(page);
  await clickTimes(page, 'button[data-feature="search"]', 2);
  await callApi(page, 'maps', 1);
  await page.evaluate(() =>
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 2),
  );
  await pageSettled(page, { clicked: true });
  calls.push(...(await recordedCalls(page)));

  // Leaving the second page flushes it.
  await page.goto('about:blank');

  const expected = expectedFromCalls(calls);
  // Spelled out, so a bug in the folding cannot hide one in the client.
  for (const [name, labels, want] of [
    ['demo_feature_usage_total', { feature: 'search' }, 5],
    ['demo_feature_usage_total', { feature: 'share' }, 3],
    ['demo_feature_usage_total', { feature: 'export' }, 5],
    ['demo_third_party_api_seconds_count', { api: 'maps' }, 5],
    ['demo_third_party_api_seconds_count', { api: 'payments' }, 3],
  ])
    assert.deepEqual(
      expected.find(([n, l]) => n == name && l.feature == labels.feature && l.api == labels.api).slice(0, 3),
      [name, labels, want],
    );

  const m = await waitForMetrics(server.metricsUrl, expectSeries([...expected, ...autoMetricCounts(2)]));
  // The exact sums: the values the page observed, as the server rounds them.
  assert.ok(value(m, 'demo_third_party_api_seconds_sum', { api: 'payments' }) >= 1.75);
  assert.ok(value(m, 'pum_pushes_total', { result: 'accepted' }) >= 2, 'at least one push per page view');
  assert.deepEqual(errors, [], 'no uncaught errors in the page');
  debugDump(m);
});
