// The built-in allowlist pack and the example allowlist agree with the client
// and with web-vitals' thresholds, and the demo pages only use allowed metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  CLSThresholds,
  FCPThresholds,
  INPThresholds,
  LCPThresholds,
  TTFBThresholds,
} from 'web-vitals';

const read = (p) => readFileSync(new URL(p, import.meta.url), 'utf8');
const pack = JSON.parse(read('../../../shared/packs/browser.json')).allowedMetrics;
const example = JSON.parse(read('../../../examples/allowlist/example.json')).allowedMetrics;
const get = (list, name) => list.find((m) => m.name === name);

test('the pack has every automatic metric, histograms with 8-12 increasing buckets', () => {
  assert.deepEqual(pack.map((m) => m.name).sort(), [
    'browser_cls',
    'browser_fcp_seconds',
    'browser_inp_seconds',
    'browser_lcp_seconds',
    'browser_navigation_phase_seconds',
    'browser_page_load_seconds',
    'browser_ttfb_seconds',
  ]);
  for (const m of pack) {
    assert.equal(m.type, 'histogram');
    assert.ok(m.help.length > 10);
    assert.ok(m.buckets.length >= 8 && m.buckets.length <= 12, `${m.name}: ${m.buckets.length}`);
    assert.ok(m.buckets.every((v, i) => i === 0 || v > m.buckets[i - 1]), m.name);
  }
  assert.deepEqual(get(pack, 'browser_navigation_phase_seconds').labels, [
    {
      name: 'phase',
      allowedValues: ['redirect', 'dns', 'connect', 'tls', 'request', 'response', 'dom_processing', 'load_event'],
    },
  ]);
});

test("bucket bounds include web-vitals' good/poor thresholds exactly", () => {
  for (const [name, thresholds, scale] of [
    ['browser_lcp_seconds', LCPThresholds, 1e3],
    ['browser_inp_seconds', INPThresholds, 1e3],
    ['browser_cls', CLSThresholds, 1],
    ['browser_fcp_seconds', FCPThresholds, 1e3],
    ['browser_ttfb_seconds', TTFBThresholds, 1e3],
  ]) {
    const { buckets, labels } = get(pack, name);
    assert.deepEqual(labels, []);
    for (const t of thresholds) assert.ok(buckets.includes(t / scale), `${name} has ${t / scale}`);
  }
  assert.deepEqual([LCPThresholds, INPThresholds, CLSThresholds, FCPThresholds, TTFBThresholds], [
    [2500, 4000],
    [200, 500],
    [0.1, 0.25],
    [1800, 3000],
    [800, 1800],
  ]);
});

test("the example allowlist allows the demo's two metrics exactly", () => {
  assert.deepEqual(
    example.map(({ name, type, labels }) => ({ name, type, labels })),
    [
      {
        name: 'demo_feature_usage_total',
        type: 'counter',
        labels: [{ name: 'feature', allowedValues: ['search', 'share', 'export'] }],
      },
      {
        name: 'demo_third_party_api_seconds',
        type: 'histogram',
        labels: [{ name: 'api', allowedValues: ['maps', 'payments'] }],
      },
    ],
  );
});

test('the demo pages only use metrics and label values the example allows', () => {
  const sources = [read('../../demo/index.html'), read('../../demo/demo.js')];
  for (const src of sources) {
    const used = [...src.matchAll(/\bdemo_[a-z_]+/g)].map((m) => m[0]);
    assert.ok(used.length >= 2);
    for (const n of used) assert.ok(get(example, n), n);
    for (const [, label, value] of src.matchAll(/data-(feature|api)="([^"]*)"/g)) {
      const m = example.find((m) => m.labels[0].name === label);
      assert.ok(m.labels[0].allowedValues.includes(value), `${label}=${value}`);
    }
  }
  // The CSP page has no inline script at all.
  const csp = read('../../demo/csp.html');
  for (const tag of csp.match(/<script\b[^>]*>/g)) assert.match(tag, /\bsrc=/);
  assert.doesNotMatch(csp, /\son[a-z]+=/i, 'no inline event handlers');
});
