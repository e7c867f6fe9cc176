// The committed ES module build exports createClient and works.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { fakeBrowser, install } from './fake-browser.mjs';

/** A batch's URL without its batch id, which must be there: 128 random bits in hex. */
const withoutBatch = (url) => {
  assert.match(url, /\?batch=[0-9a-f]{32}$/);
  return url.replace(/\?batch=[0-9a-f]{32}$/, '');
};

test('aggregatorClient.mjs: createClient({endpoint, flushInterval, sampleRate, autoMetrics})', async () => {
  mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  const b = install(fakeBrowser());
  const { createClient } = await import('../../aggregatorClient.mjs');
  const c = createClient({ endpoint: 'https://h', flushInterval: 5000, sampleRate: 1, autoMetrics: false });
  for (const k of ['increment', 'observe', 'flush']) assert.equal(typeof c[k], 'function');
  c.increment('demo_feature_usage_total', { feature: 'export' });
  c.observe('demo_third_party_api_seconds', { api: 'payments' }, 0.25);
  mock.timers.tick(5000);
  assert.equal(b.beacons.length, 1);
  assert.equal(withoutBatch(b.beacons[0].url), 'https://h/record');
  assert.equal(b.beacons[0].body.length, 2);
  mock.timers.reset();
});
