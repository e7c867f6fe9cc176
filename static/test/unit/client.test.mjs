// Unit tests of the client's logic (src/client.js) against a fake browser.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { fakeBrowser, install, settle } from './fake-browser.mjs';
import { createClient } from '../../src/client.js';

// No automatic metrics here: these tests look at custom metrics only.
const make = (o = {}) => createClient({ autoMetrics: false, ...o });

// The URL a batch is sent to, without its batch id (checked to be 128 random bits in hex).
const base = (url) => {
  const m = /^(.*)\?batch=([0-9a-f]{32})$/.exec(url);
  assert.ok(m, `${url} names its batch`);
  return m[1];
};

let b;
beforeEach(() => {
  mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  b = install(fakeBrowser());
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

test('counters with the same name and labels are merged, label order and types ignored', () => {
  const c = make({ endpoint: 'http://h:3000' });
  c.increment('demo_feature_usage_total', { feature: 'search', n: 1 }, 1);
  c.increment('demo_feature_usage_total', { n: '1', feature: 'search' }, 2);
  c.increment('demo_feature_usage_total', { feature: 'share' });
  c.flush();
  assert.equal(b.beacons.length, 1);
  assert.equal(base(b.beacons[0].url), 'http://h:3000/record');
  assert.equal(b.beacons[0].type, 'string');
  assert.deepEqual(b.beacons[0].body, [
    {
      metricName: 'demo_feature_usage_total',
      metricType: 'counter',
      labels: { feature: 'search', n: '1' },
      inc: 3,
    },
    {
      metricName: 'demo_feature_usage_total',
      metricType: 'counter',
      labels: { feature: 'share' },
      inc: 1,
    },
  ]);
});

test('observations of one series are appended; counters and histograms batch in one push', () => {
  const c = make();
  c.observe('demo_third_party_api_seconds', { api: 'maps' }, 0.12);
  c.increment('demo_feature_usage_total', { feature: 'export' }, 1);
  c.observe('demo_third_party_api_seconds', { api: 'maps' }, 3.4);
  c.observe('demo_third_party_api_seconds', { api: 'payments' }, '0.5');
  c.flush();
  c.flush(); // nothing left: no empty push
  assert.equal(b.beacons.length, 1);
  assert.equal(base(b.beacons[0].url), '/record', 'default endpoint is the page origin');
  assert.deepEqual(b.beacons[0].body, [
    {
      metricName: 'demo_third_party_api_seconds',
      metricType: 'histogram',
      labels: { api: 'maps' },
      observations: [0.12, 3.4],
    },
    { metricName: 'demo_feature_usage_total', metricType: 'counter', labels: { feature: 'export' }, inc: 1 },
    {
      metricName: 'demo_third_party_api_seconds',
      metricType: 'histogram',
      labels: { api: 'payments' },
      observations: [0.5],
    },
  ]);
});

test('a series over 100 observations is split into samples of at most 100', () => {
  const c = make();
  for (let i = 0; i < 250; i++) c.observe('h', { a: 'x' }, i);
  c.flush();
  const body = b.beacons[0].body;
  assert.deepEqual(
    body.map((s) => s.observations.length),
    [100, 100, 50],
  );
  assert.deepEqual(body.flatMap((s) => s.observations), [...Array(250).keys()]);
});

test('the buffer keeps at most 200 samples, drops the oldest and counts them', () => {
  const c = make();
  for (let i = 0; i < 250; i++) c.increment('c', { i }, 1);
  assert.deepEqual(c.stats(), { queued: 200, dropped: 50 });
  c.flush();
  const body = b.beacons[0].body;
  assert.equal(body.length, 200);
  assert.equal(body[0].labels.i, '50');
  assert.equal(body[199].labels.i, '249');
  // A dropped series starts afresh when seen again.
  c.increment('c', { i: 0 }, 1);
  c.flush();
  assert.deepEqual(b.beacons[1].body, [
    { metricName: 'c', metricType: 'counter', labels: { i: '0' }, inc: 1 },
  ]);
});

test('the buffer keeps the serialized batch under the byte bound (UTF-8)', () => {
  const c = make();
  const long = 'é'.repeat(1000); // 2000 bytes in UTF-8
  for (let i = 0; i < 100; i++) c.increment('c', { i, long }, 1);
  const { queued, dropped } = c.stats();
  assert.ok(queued < 100 && queued > 20, `queued ${queued}`);
  assert.equal(queued + dropped, 100);
  c.flush();
  const bytes = Buffer.byteLength(JSON.stringify(b.beacons[0].body));
  assert.ok(bytes <= 60000, `${bytes} bytes`);
  // Histograms count their observations too.
  const h = make({ maxBytes: 2000 });
  for (let i = 0; i < 1000; i++) h.observe('h', {}, 1.2345678);
  h.flush();
  assert.ok(Buffer.byteLength(JSON.stringify(b.beacons[1].body)) <= 2000);
  assert.ok(h.stats().dropped > 0);
});

test('maxSamples can lower the bound but never raise it over the server limit', () => {
  const low = make({ maxSamples: 3 });
  for (let i = 0; i < 5; i++) low.increment('c', { i }, 1);
  assert.deepEqual(low.stats(), { queued: 3, dropped: 2 });
  const high = make({ maxSamples: 1000 });
  for (let i = 0; i < 300; i++) high.increment('c', { i }, 1);
  assert.equal(high.stats().queued, 200);
});

test('invalid values are ignored, label values become strings', () => {
  const c = make();
  c.increment('c', {}, -1);
  c.increment('c', {}, NaN);
  c.increment('c', {}, Infinity);
  c.observe('h', {}, undefined);
  c.observe('h', {}, null);
  c.observe('h', {}, 'abc');
  c.increment(42, {}, 1);
  c.increment(undefined);
  c.observe('h', null, 2);
  c.increment('c', { ok: true, n: null, o: { x: 1 } }, 5);
  c.flush();
  assert.deepEqual(b.beacons[0].body, [
    { metricName: 'h', metricType: 'histogram', labels: {}, observations: [2] },
    {
      metricName: 'c',
      metricType: 'counter',
      labels: { n: 'null', o: '[object Object]', ok: 'true' },
      inc: 5,
    },
  ]);
});

test('flushes every flushInterval (default 10 s)', () => {
  const c = make();
  c.increment('c', {}, 1);
  mock.timers.tick(9999);
  assert.equal(b.beacons.length, 0);
  mock.timers.tick(1);
  assert.equal(b.beacons.length, 1);
  mock.timers.tick(30000); // empty buffer: nothing sent
  assert.equal(b.beacons.length, 1);

  const d = make({ flushInterval: '2500' }); // data-* attributes are strings
  d.increment('d', {}, 1);
  mock.timers.tick(2500);
  assert.equal(b.beacons.length, 2);

  const e = make({ flushInterval: 0 }); // 0: only on hide or flush()
  e.increment('e', {}, 1);
  mock.timers.tick(100000);
  assert.equal(b.beacons.length, 2);
});

test('set() changes the endpoint and interval later (the init command)', () => {
  const c = make({ endpoint: 'http://a/' });
  c.set({ endpoint: 'https://b.example/pum//' });
  c.set({ flushInterval: 1000 });
  c.increment('c', {}, 1);
  mock.timers.tick(1000);
  assert.equal(base(b.beacons[0].url), 'https://b.example/pum/record');
});

test('flushes when the page turns hidden, without any interval tick', () => {
  const c = make();
  c.increment('c', {}, 1);
  b.show(); // visible again: no flush
  assert.equal(b.beacons.length, 0);
  b.hide();
  assert.equal(b.beacons.length, 1);
  assert.deepEqual(b.beacons[0].body, [
    { metricName: 'c', metricType: 'counter', labels: {}, inc: 1 },
  ]);
});

test('flushes on pagehide, without any interval tick', () => {
  const c = make();
  c.observe('h', {}, 1);
  b.win.dispatch('pagehide', { persisted: false });
  assert.equal(b.beacons.length, 1);
});

test('a value recorded by a capture-phase hide listener (as web-vitals does) goes out in the same beacon', () => {
  const c = make();
  // web-vitals registers on window with capture: true; the client's own
  // listener is a bubble-phase one, so it runs after it whatever the order of
  // registration.
  addEventListener('visibilitychange', () => c.observe('browser_cls', {}, 0.05), true);
  b.hide();
  assert.equal(b.beacons.length, 1);
  assert.deepEqual(b.beacons[0].body, [
    { metricName: 'browser_cls', metricType: 'histogram', labels: {}, observations: [0.05] },
  ]);
  const mine = b.win.listeners.filter((l) => l.type === 'visibilitychange' && !l.capture);
  assert.equal(mine.length, 1);
});

test('falls back to fetch keepalive when sendBeacon refuses, text/plain body', async () => {
  install((b = fakeBrowser({ beacon: () => false })));
  const c = make({ endpoint: 'http://h' });
  c.increment('c', {}, 1);
  c.flush();
  await settle();
  assert.equal(b.beacons.length, 1);
  assert.equal(b.fetches.length, 1);
  const { url, init } = b.fetches[0];
  assert.equal(base(url), 'http://h/record');
  assert.equal(init.method, 'POST');
  assert.equal(init.keepalive, true);
  assert.equal(init.credentials, 'omit');
  assert.equal(typeof init.body, 'string'); // fetch sends it as text/plain;charset=UTF-8
  assert.equal(init.headers, undefined); // so no preflight
  mock.timers.tick(120000);
  await settle();
  assert.equal(b.fetches.length, 1, 'a 200 is not retried');
});

test('uses fetch when sendBeacon is missing or throws', async () => {
  install((b = fakeBrowser({ withBeacon: false })));
  make().increment('c', {}, 1);
  b.hide();
  await settle();
  assert.equal(b.fetches.length, 1);

  install(
    (b = fakeBrowser({
      beacon: () => {
        throw new TypeError('beacon');
      },
    })),
  );
  const c = make();
  c.increment('c', {}, 1);
  c.flush();
  assert.equal(b.fetches.length, 1);
});

test('a failed fetch is retried once, after 1 s', async () => {
  install(
    (b = fakeBrowser({ beacon: () => false, fetchImpl: () => Promise.reject(new TypeError('net')) })),
  );
  const c = make();
  c.increment('c', {}, 1);
  c.flush();
  await settle();
  assert.equal(b.fetches.length, 1);
  mock.timers.tick(999);
  assert.equal(b.fetches.length, 1);
  mock.timers.tick(1);
  await settle();
  assert.equal(b.fetches.length, 2);
  assert.deepEqual(b.fetches[1].body, b.fetches[0].body);
  assert.equal(b.fetches[1].url, b.fetches[0].url, 'the retry names the same batch');
  mock.timers.tick(600000);
  await settle();
  assert.equal(b.fetches.length, 2, 'only once');
});

test('a 503 is retried once after Retry-After; a 4xx is not retried', async () => {
  let status = 503;
  install(
    (b = fakeBrowser({
      beacon: () => false,
      fetchImpl: () => Promise.resolve({ status, headers: new Map([['Retry-After', '5']]) }),
    })),
  );
  const c = make();
  c.increment('c', {}, 1);
  c.flush();
  await settle();
  mock.timers.tick(4999);
  assert.equal(b.fetches.length, 1);
  mock.timers.tick(1);
  await settle();
  assert.equal(b.fetches.length, 2);
  mock.timers.tick(600000);
  await settle();
  assert.equal(b.fetches.length, 2);

  status = 400;
  c.increment('c', {}, 1);
  c.flush();
  await settle();
  mock.timers.tick(600000);
  await settle();
  assert.equal(b.fetches.length, 3);
});

test('a fetch that throws synchronously is retried once and never reaches the page', () => {
  let calls = 0;
  install(
    (b = fakeBrowser({
      beacon: () => false,
      fetchImpl: () => {
        calls++;
        throw new TypeError('sync');
      },
    })),
  );
  const c = make();
  c.increment('c', {}, 1);
  assert.doesNotThrow(() => c.flush());
  mock.timers.tick(1000);
  assert.equal(calls, 2);
});

test('sampleRate is decided once per page view', () => {
  const r = mock.method(Math, 'random', () => 0.3);
  const inn = make({ sampleRate: 0.5 });
  const out = make({ sampleRate: '0.2' });
  assert.equal(r.mock.callCount(), 2);
  r.mock.mockImplementation(() => 0.99);
  inn.increment('in', {}, 1); // stays in
  out.increment('out', {}, 1);
  inn.flush();
  out.flush();
  b.hide();
  mock.timers.tick(100000);
  assert.equal(r.mock.callCount(), 2, 'no further draws');
  assert.deepEqual(b.sent().map((s) => s.metricName), ['in']);
  assert.equal(out.stats().queued, 0);
});

test('sampleRate 0 records nothing and registers nothing; out-of-range values are clamped', () => {
  const before = b.win.listeners.length;
  const c = make({ sampleRate: 0, autoMetrics: true });
  c.increment('c', {}, 1);
  c.flush();
  b.hide();
  assert.equal(b.sent().length, 0);
  assert.equal(b.win.listeners.length, before);
  mock.method(Math, 'random', () => 0.999999);
  const all = make({ sampleRate: 7 });
  all.increment('c', {}, 1);
  all.flush();
  assert.equal(b.sent().length, 1);
  const bad = make({ sampleRate: 'nope' }); // invalid: default 1
  bad.increment('c', {}, 1);
  bad.flush();
  assert.equal(b.sent().length, 2);
});

test('never throws into the page', () => {
  const c = make();
  const evil = {};
  Object.defineProperty(evil, 'k', {
    enumerable: true,
    get() {
      throw new Error('getter');
    },
  });
  assert.doesNotThrow(() => c.increment('c', evil, 1));
  assert.doesNotThrow(() =>
    c.increment('c', { toString: 1, v: { toString: () => { throw new Error('x'); } } }, 1),
  );
  assert.doesNotThrow(() => c.observe('h', {}, Symbol('s')));
  assert.doesNotThrow(() => c.increment('c', {}, 10n));
  assert.doesNotThrow(() => c.set(null));
  assert.doesNotThrow(() => c.flush());
  // No browser at all (a worker, a test runner): creation and use still work.
  for (const k of ['addEventListener', 'document', 'navigator', 'fetch', 'performance'])
    delete globalThis[k];
  let d;
  assert.doesNotThrow(() => (d = createClient()));
  assert.doesNotThrow(() => d.increment('c', {}, 1));
  assert.doesNotThrow(() => d.flush());
  assert.doesNotThrow(() => mock.timers.tick(20000));
});

test('stores nothing: no cookies, no storage', () => {
  const touched = [];
  for (const k of ['localStorage', 'sessionStorage', 'indexedDB'])
    Object.defineProperty(globalThis, k, {
      configurable: true,
      get() {
        touched.push(k);
      },
    });
  Object.defineProperty(b.document, 'cookie', {
    get() {
      touched.push('cookie');
    },
    set() {
      touched.push('cookie');
    },
  });
  const c = createClient({ endpoint: 'http://h' });
  c.increment('c', {}, 1);
  b.hide();
  b.win.dispatch('load');
  mock.timers.tick(20000);
  assert.deepEqual(touched, []);
});

test('every batch has its own random id; the retry of a batch reuses it', async () => {
  install((b = fakeBrowser({ beacon: () => false, fetchImpl: () => Promise.resolve({ status: 503, headers: new Map() }) })));
  const c = make({ endpoint: 'http://h' });
  for (let i = 0; i < 3; i++) {
    c.increment('c', {}, 1);
    c.flush();
  }
  await settle();
  mock.timers.tick(1000);
  await settle();
  assert.equal(b.fetches.length, 6);
  const ids = b.fetches.map((f) => /batch=([0-9a-f]{32})$/.exec(f.url)[1]);
  assert.equal(new Set(ids).size, 3, 'three batches, three ids');
  assert.deepEqual(ids.slice(3), ids.slice(0, 3), 'each retry reuses its batch id');
});
