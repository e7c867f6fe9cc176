// Tests of the built script-tag client (aggregatorClient.js) run in a vm
// context with a fake browser: the original snippet's queue, the CSP install's
// data-* attributes, and that nothing escapes into the page.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';
import { fakeBrowser } from './fake-browser.mjs';

/** A batch's URL without its batch id, which must be there: 128 random bits in hex. */
const withoutBatch = (url) => {
  assert.match(url, /\?batch=[0-9a-f]{32}$/);
  return url.replace(/\?batch=[0-9a-f]{32}$/, '');
};

const CODE = readFileSync(new URL('../../aggregatorClient.js', import.meta.url), 'utf8');
// The snippet from the README of the original aggregator, with the stub
// function named through window.PrometheusAggregatorObject.
const SNIPPET = `(function(w,d,s,g,n){w['PrometheusAggregatorObject']=n;w[n]=w[n]||function(){(w[n].q=w[n].q||[]).push(arguments)};var a=d.createElement(s),m=d.getElementsByTagName(s)[0];a.async=1;a.src=g+'/static/aggregatorClient.js';m.parentNode.insertBefore(a,m)})(window,document,'script',ORIGIN,'prometheusAggregator');`;
// The seed's own snippet (PrometheusAggregatorObjectName, aggregatorServerRoot).
const SEED_SNIPPET = `(function(i,s,o,g,r,a,m){i['PrometheusAggregatorObjectName']=r;i[r]=i[r]||function(){
(i[r].q=i[r].q||[]).push(arguments)},i[r].l=1*new Date();a=s.createElement(o),
m=s.getElementsByTagName(o)[0];a.async=1;a.src=(g+'/static/aggregatorClient.js');m.parentNode.insertBefore(a,m);
i[r].aggregatorServerRoot = g;
})(window,document,'script',ORIGIN,'pa');`;

// Mocked timers also keep the client's interval from holding the process open.
beforeEach(() => mock.timers.enable({ apis: ['setInterval', 'setTimeout'] }));
afterEach(() => mock.timers.reset());

/** A page: fake browser globals in a vm context, with DOM bits the snippet uses. */
function page(opts = {}) {
  const b = fakeBrowser(opts);
  const inserted = [];
  Object.assign(b.document, {
    createElement: () => ({}),
    getElementsByTagName: () => [{ parentNode: { insertBefore: (a) => inserted.push(a) } }],
  });
  const ctx = vm.createContext({
    ...b.g,
    URL,
    TextEncoder,
    // Node 20's mocked setTimeout loses a call without a delay; browsers take it as 0.
    setTimeout: (f, ms, ...a) => setTimeout(f, ms || 0, ...a),
    setInterval,
    clearInterval,
    clearTimeout,
  });
  ctx.window = vm.runInContext('this', ctx);
  const run = (code) => vm.runInContext(code, ctx);
  // Loads the client as the <script> element `src` (what the snippet inserted).
  const load = (src, dataset = {}) => {
    b.document.currentScript = { src, dataset };
    run(CODE);
    b.document.currentScript = null;
  };
  return { ...b, ctx, run, load, inserted };
}

const origin = (s, o) => s.replace('ORIGIN', JSON.stringify(o));

test('the original snippet: calls queued before load are replayed in order', () => {
  const p = page();
  p.run(origin(SNIPPET, 'http://127.0.0.1:3000'));
  p.run(`
    prometheusAggregator('init', 'http://127.0.0.1:3000', {autoMetrics: false});
    prometheusAggregator('increment', 'demo_feature_usage_total', {feature: 'search'}, 1);
    prometheusAggregator('observe', 'demo_third_party_api_seconds', {api: 'maps'}, 0.42);
    prometheusAggregator('increment', 'demo_feature_usage_total', {feature: 'search'}, 2);
  `);
  assert.equal(p.inserted[0].src, 'http://127.0.0.1:3000/static/aggregatorClient.js');
  assert.equal(p.inserted[0].async, 1);
  assert.equal(p.beacons.length, 0);
  p.load(p.inserted[0].src);
  // After load, the same function name is the real client.
  p.run(`prometheusAggregator('observe', 'demo_third_party_api_seconds', {api: 'maps'}, 1.5)`);
  assert.equal(p.run(`prometheusAggregator('stats')`).queued, 2);
  mock.timers.tick(10000);
  assert.equal(p.beacons.length, 1);
  assert.equal(withoutBatch(p.beacons[0].url), 'http://127.0.0.1:3000/record');
  assert.deepEqual(p.beacons[0].body, [
    {
      metricName: 'demo_feature_usage_total',
      metricType: 'counter',
      labels: { feature: 'search' },
      inc: 3,
    },
    {
      metricName: 'demo_third_party_api_seconds',
      metricType: 'histogram',
      labels: { api: 'maps' },
      observations: [0.42, 1.5],
    },
  ]);
});

test('without init the endpoint is where the script came from, path prefix kept', () => {
  const p = page();
  p.run(origin(SNIPPET, 'https://rum.example.com/pum'));
  p.run(`prometheusAggregator('increment', 'c', {}, 1); prometheusAggregator('flush')`);
  p.load(p.inserted[0].src + '?v=2');
  assert.equal(withoutBatch(p.beacons[0].url), 'https://rum.example.com/pum/record');
  assert.equal(p.beacons.length, 1, "a queued 'flush' flushes once replayed");
});

test("the seed's snippet (PrometheusAggregatorObjectName, aggregatorServerRoot) works unchanged", () => {
  const p = page();
  p.run(origin(SEED_SNIPPET, 'http://localhost:3000'));
  p.run(`pa('increment', 'app_load_succeeded', { app: 'whateverAppId'}, 1);`);
  // Served from elsewhere (a CDN): aggregatorServerRoot still names the endpoint.
  p.load('https://cdn.example.net/js/aggregatorClient.js');
  p.hide();
  assert.equal(withoutBatch(p.beacons[0].url), 'http://localhost:3000/record');
  assert.deepEqual(p.beacons[0].body[0], {
    metricName: 'app_load_succeeded',
    metricType: 'counter',
    labels: { app: 'whateverAppId' },
    inc: 1,
  });
});

test('init(options) and a later init change the endpoint and interval', () => {
  const p = page();
  p.run(origin(SNIPPET, 'http://a:3000'));
  p.run(`prometheusAggregator('init', {endpoint: 'http://b:3000', flushInterval: 1000})`);
  p.load(p.inserted[0].src);
  p.run(`prometheusAggregator('increment', 'c', {}, 1)`);
  mock.timers.tick(1000);
  assert.equal(withoutBatch(p.beacons[0].url), 'http://b:3000/record');
  p.run(`prometheusAggregator('init', 'http://c:3000/')`);
  p.run(`prometheusAggregator('increment', 'c', {}, 1)`);
  mock.timers.tick(1000);
  assert.equal(withoutBatch(p.beacons[1].url), 'http://c:3000/record');
});

test('CSP-friendly install: options from data-* attributes, window.prometheusAggregator', () => {
  const p = page();
  p.load('https://host.example/static/aggregatorClient.js', {
    endpoint: 'https://ingest.example',
    flushInterval: '3000',
    sampleRate: '1',
    autoMetrics: 'false',
  });
  assert.equal(typeof p.ctx.prometheusAggregator, 'function');
  p.run(`prometheusAggregator('increment', 'demo_feature_usage_total', {feature: 'share'})`);
  mock.timers.tick(3000);
  assert.equal(p.beacons.length, 1);
  assert.equal(withoutBatch(p.beacons[0].url), 'https://ingest.example/record');
  assert.deepEqual(p.beacons[0].body[0].inc, 1);
  assert.equal(p.win.listeners.filter((l) => l.type === 'load').length, 0, 'no auto metrics');
});

test('CSP-friendly install with no data-endpoint: the script origin', () => {
  const p = page();
  p.load('http://127.0.0.1:9102/static/aggregatorClient.js', { sampleRate: '0' });
  p.run(`prometheusAggregator('increment', 'c')`);
  p.hide();
  assert.equal(p.beacons.length, 0, 'sampled out');
  const q = page();
  q.load('http://127.0.0.1:9102/static/aggregatorClient.js');
  q.run(`prometheusAggregator('increment', 'c')`);
  q.hide();
  assert.equal(withoutBatch(q.beacons[0].url), 'http://127.0.0.1:9102/record');
});

test('loaded twice: one client, nothing counted twice', () => {
  const p = page();
  p.run(origin(SNIPPET, 'http://h'));
  p.run(`prometheusAggregator('increment', 'c', {}, 1)`);
  p.load(p.inserted[0].src);
  p.load(p.inserted[0].src);
  p.run(`prometheusAggregator('increment', 'c', {}, 1)`);
  p.hide();
  assert.equal(p.beacons.length, 1);
  assert.equal(p.beacons[0].body[0].inc, 2);
});

test('automatic metrics: navigation phases and TTFB after load, sent on hide', () => {
  const p = page({ readyState: 'loading' });
  p.load('http://h/static/aggregatorClient.js');
  p.document.readyState = 'complete';
  p.win.dispatch('load');
  mock.timers.tick(0);
  p.hide();
  const names = p.sent().map((s) => s.metricName);
  assert.ok(names.includes('browser_navigation_phase_seconds'), names.join());
  assert.ok(names.includes('browser_page_load_seconds'));
  assert.ok(names.includes('browser_ttfb_seconds'));
});

test('never throws into the page, whatever the page or the browser', () => {
  const p = page();
  p.run(origin(SNIPPET, 'http://h'));
  p.run(`prometheusAggregator('increment'); prometheusAggregator(); prometheusAggregator('bogus', 1, 2, 3);
         prometheusAggregator('observe', 'h', {get a() { throw 1 }}, 1);`);
  assert.doesNotThrow(() => p.load('not a url'));
  assert.doesNotThrow(() =>
    p.run(`prometheusAggregator('increment', 'c', null, 'x'); prometheusAggregator('init', null)`),
  );
  // A browser with nothing the client wants: no document.currentScript, no
  // sendBeacon, no fetch, no performance.
  const ctx = vm.createContext({ window: {}, document: {}, navigator: {} });
  assert.doesNotThrow(() => vm.runInContext(CODE, ctx));
  assert.doesNotThrow(() => vm.runInContext(CODE, vm.createContext({})));
});
