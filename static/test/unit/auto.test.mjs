// Automatic measurements: navigation timing phases and Web Vitals mapping.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fakeBrowser, install, NAV_ENTRY } from './fake-browser.mjs';
import { navigationObservations, vitalReporter, latestReporter } from '../../src/auto.js';
import { createClient } from '../../src/client.js';

const pack = JSON.parse(readFileSync(new URL('../../../shared/packs/browser.json', import.meta.url)));

let b;
beforeEach(() => {
  mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  b = install(fakeBrowser({ readyState: 'loading' }));
});
afterEach(() => mock.timers.reset());

const phases = (obs) =>
  Object.fromEntries(
    obs
      .filter(([n]) => n === 'browser_navigation_phase_seconds')
      .map(([, l, v]) => [l.phase, v]),
  );

test('navigation phases from PerformanceNavigationTiming, in seconds, not overlapping', () => {
  const obs = navigationObservations(NAV_ENTRY);
  assert.deepEqual(phases(obs), {
    redirect: 0,
    dns: 0.01,
    connect: 0.008, // connectStart -> secureConnectionStart
    tls: 0.03, // secureConnectionStart -> connectEnd
    request: 0.1, // requestStart -> responseStart
    response: 0.02,
    dom_processing: 0.4, // responseEnd -> domComplete
    load_event: 0.01,
  });
  assert.deepEqual(obs.at(-1), ['browser_page_load_seconds', {}, 0.581]);
  assert.equal(obs.length, 9);
});

test('no TLS: tls is 0 and connect is the whole connection; negative gaps clamp to 0', () => {
  const p = phases(
    navigationObservations({ ...NAV_ENTRY, secureConnectionStart: 0, redirectEnd: -5, redirectStart: 3 }),
  );
  assert.equal(p.tls, 0);
  assert.equal(p.connect, 0.038);
  assert.equal(p.redirect, 0);
  // Missing fields (an old browser) give 0, never NaN.
  const q = phases(navigationObservations({ loadEventEnd: 100 }));
  assert.ok(Object.values(q).every((v) => v === 0));
});

test('no navigation phases before the load event finished, without an entry, or when prerendered', () => {
  assert.deepEqual(navigationObservations({ ...NAV_ENTRY, loadEventEnd: 0 }), []);
  assert.deepEqual(navigationObservations(undefined), []);
  assert.deepEqual(navigationObservations({ ...NAV_ENTRY, activationStart: 300 }), []);
});

test('web-vitals values: ms to seconds, CLS as is, once per metric id, not rounded', () => {
  const seen = [];
  const observe = (...a) => seen.push(a);
  const lcp = vitalReporter(observe, 'browser_lcp_seconds', 1e3);
  const cls = vitalReporter(observe, 'browser_cls', 1);
  lcp({ name: 'LCP', id: 'v6-1', value: 2500 });
  lcp({ name: 'LCP', id: 'v6-1', value: 2600 }); // same page view: ignored
  lcp({ name: 'LCP', id: 'v6-2', value: 2500.04 }); // bfcache restore: new id
  cls({ name: 'CLS', id: 'v6-3', value: 0.1 });
  assert.deepEqual(seen, [
    ['browser_lcp_seconds', {}, 2.5],
    ['browser_lcp_seconds', {}, 2.50004],
    ['browser_cls', {}, 0.1],
  ]);
  // A threshold in ms divides to exactly the bucket bound in the pack.
  assert.equal(200 / 1e3, 0.2);
  assert.equal(1800 / 1e3, 1.8);
});

test('INP: the latest of every change is recorded at finish (page hide), once per metric id', () => {
  const seen = [];
  const [keep, finish] = latestReporter((...a) => seen.push(a), 'browser_inp_seconds', 1e3);
  finish();
  assert.deepEqual(seen, [], 'no interaction, no INP');
  // web-vitals (reportAllChanges) reports each increase, the last one possibly
  // during the hide itself, before the client's hide handler calls finish.
  keep({ name: 'INP', id: 'v6-1', value: 8 });
  keep({ name: 'INP', id: 'v6-1', value: 120 });
  finish();
  keep({ name: 'INP', id: 'v6-1', value: 300 }); // a later hide of the same page view
  finish();
  keep({ name: 'INP', id: 'v6-2', value: 40 }); // after a bfcache restore
  finish();
  assert.deepEqual(seen, [
    ['browser_inp_seconds', {}, 0.12],
    ['browser_inp_seconds', {}, 0.04],
  ]);
});

test('the client measures after load and every automatic sample is allowed by the pack', () => {
  const c = createClient({ endpoint: 'http://h' });
  mock.timers.tick(0);
  assert.equal(c.stats().queued, 0, 'nothing before the load event');
  b.document.readyState = 'complete';
  b.win.dispatch('load');
  mock.timers.tick(0);
  b.hide();
  const sent = b.sent();
  const byName = Object.fromEntries(pack.allowedMetrics.map((m) => [m.name, m]));
  const names = new Set(sent.map((s) => s.metricName));
  assert.deepEqual(
    [...names].sort(),
    ['browser_navigation_phase_seconds', 'browser_page_load_seconds', 'browser_ttfb_seconds'],
  );
  for (const s of sent) {
    const m = byName[s.metricName];
    assert.ok(m, `${s.metricName} is in the pack`);
    assert.equal(s.metricType, m.type);
    assert.deepEqual(Object.keys(s.labels).sort(), m.labels.map((l) => l.name).sort());
    for (const l of m.labels) assert.ok(l.allowedValues.includes(s.labels[l.name]), s.labels[l.name]);
    for (const v of s.observations) assert.ok(Number.isFinite(v) && v >= 0);
  }
  assert.deepEqual(
    sent.find((s) => s.metricName === 'browser_ttfb_seconds').observations,
    [0.151],
  );
});

test('autoMetrics: false (or "false") measures nothing by itself', () => {
  for (const autoMetrics of [false, 'false']) {
    install((b = fakeBrowser({ readyState: 'complete' })));
    createClient({ autoMetrics });
    mock.timers.tick(100);
    b.hide();
    assert.equal(b.sent().length, 0);
  }
});
