// The flush on page hide delivers by itself: with a flush interval of an hour
// no interval tick can run during the test, and the page is shown to have
// sent nothing (no sendBeacon or fetch to /record, the batch still queued in
// the client, nothing in /metrics) until it is left or closed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer,
  launchBrowser,
  scrape,
  value,
  waitForMetrics,
  expectSeries,
  autoMetricCounts,
  pageSettled,
  debugDump,
} from './harness.mjs';

const HOUR_MS = 3600000;

// Runs before the page's scripts: counts what the page sends to /record,
// forwarding every call unchanged.
const COUNT_SENDS = () => {
  window.__sends = 0;
  const isRecord = (u) => /\/record(\?|$)/.test(String(u && u.url ? u.url : u));
  const beacon = Navigator.prototype.sendBeacon;
  Navigator.prototype.sendBeacon = function (url, body) {
    if (isRecord(url)) window.__sends++;
    return beacon.call(this, url, body);
  };
  const f = window.fetch;
  window.fetch = function (input, init) {
    if (isRecord(input)) window.__sends++;
    return f.call(this, input, init);
  };
};

// A page on the server's origin with the CSP-friendly install and an hour's
// flush interval (standalone serves fixed pages, so the test serves this one
// through the browser; the client script and /record are the real server's).
const LONG_INTERVAL_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pum e2e: long flush interval</title>
<script async src="/static/aggregatorClient.js" data-flush-interval="${HOUR_MS}"></script>
</head><body><h1>Flush on hide</h1><p>Nothing is sent until this page is hidden.</p>
<button id="b">Click</button></body></html>`;

/** Records known values and checks that nothing left the page yet. */
async function recordAndCheckNothingSent(page, metricsUrl) {
  await page.evaluate(() => {
    prometheusAggregator('increment', 'demo_feature_usage_total', { feature: 'search' }, 3);
    prometheusAggregator('increment', 'demo_feature_usage_total', { feature: 'export' });
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 0.25);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', { api: 'maps' }, 4.5);
  });
  const state = await page.evaluate(() => ({
    sends: window.__sends,
    queued: prometheusAggregator('stats').queued,
  }));
  assert.equal(state.sends, 0, 'no flush happened before the page was hidden');
  assert.ok(state.queued >= 3, `the batch is still in the client (queued ${state.queued})`);
  const before = await scrape(metricsUrl);
  assert.equal(value(before, 'demo_feature_usage_total', { feature: 'search' }), 0);
  assert.equal(value(before, 'demo_third_party_api_seconds_count', { api: 'maps' }), 0);
  assert.equal(value(before, 'pum_pushes_total', { result: 'accepted' }), 0, 'no push reached the server');
}

const RECORDED = [
  ['demo_feature_usage_total', { feature: 'search' }, 3],
  ['demo_feature_usage_total', { feature: 'export' }, 1],
  ['demo_third_party_api_seconds_count', { api: 'maps' }, 2],
  ['demo_third_party_api_seconds_sum', { api: 'maps' }, 4.75],
  ['demo_third_party_api_seconds_bucket', { api: 'maps', le: '0.25' }, 1],
  ['demo_third_party_api_seconds_bucket', { api: 'maps', le: '2.5' }, 1],
  ['demo_third_party_api_seconds_bucket', { api: 'maps', le: '5' }, 2],
];

test('flush on hide: CSP install with data-flush-interval of an hour, page left by navigation', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const browser = await launchBrowser();
  t.after(browser.close);
  const page = await browser.context.newPage();
  await page.addInitScript(COUNT_SENDS);
  const url = server.origin + '/e2e/long-interval';
  await page.route(url, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: LONG_INTERVAL_PAGE }),
  );
  await page.goto(url);
  // Loaded: stop intercepting, so nothing stands between the page and the server.
  await page.unrouteAll();
  await page.click('#b');
  await pageSettled(page, { clicked: true });
  await recordAndCheckNothingSent(page, server.metricsUrl);

  await page.goto('about:blank');

  const m = await waitForMetrics(server.metricsUrl, expectSeries([...RECORDED, ...autoMetricCounts(1)]));
  debugDump(m);
});

test('flush on hide: original snippet, interval set to an hour by init, page closed', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const browser = await launchBrowser();
  t.after(browser.close);
  const page = await browser.context.newPage();
  await page.addInitScript(COUNT_SENDS);
  await page.goto(server.origin + '/');
  await page.waitForFunction(() => window.prometheusAggregator && window.prometheusAggregator.pum);
  // Replaces the default 10 s timer; the check below shows no tick ran before.
  const sendsAtInit = await page.evaluate((ms) => {
    prometheusAggregator('init', { flushInterval: ms });
    return window.__sends;
  }, HOUR_MS);
  assert.equal(sendsAtInit, 0, 'no interval tick before init');
  await page.click('button[data-feature="share"]');
  await pageSettled(page, { clicked: true });
  await recordAndCheckNothingSent(page, server.metricsUrl);

  // Closing the tab (unload handlers run) hides the page for good.
  await page.close({ runBeforeUnload: true });

  const m = await waitForMetrics(
    server.metricsUrl,
    expectSeries([
      ...RECORDED,
      ['demo_feature_usage_total', { feature: 'share' }, 1],
      ...autoMetricCounts(1),
    ]),
  );
  debugDump(m);
});

// web-vitals counts an interaction in an idle callback that Chromium may run
// up to a second later; a page left right after a click (the usual last act
// of a visit) must still report its INP.
test('flush on hide: a click right before leaving still gives INP', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const browser = await launchBrowser();
  t.after(browser.close);
  const page = await browser.context.newPage();
  await page.goto(server.origin + '/');
  await pageSettled(page);
  await page.click('button[data-feature="export"]');
  // The browser has timed the interaction; leave at once.
  await page.waitForFunction(() => performance.getEntriesByType('first-input').length > 0);
  await page.goto('about:blank');

  const m = await waitForMetrics(
    server.metricsUrl,
    expectSeries([['demo_feature_usage_total', { feature: 'export' }, 1], ...autoMetricCounts(1)]),
  );
  debugDump(m);
});
