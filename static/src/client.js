// The pum client: batches counters and histogram observations in memory and
// sends them to `{endpoint}/record` in the wire format of the original Node
// aggregator. Nothing here may throw into the page.
import { startAuto } from './auto.js';

/** Server limit: observations per histogram sample. */
const MAX_OBSERVATIONS = 100;
/** Server limit: samples per push (also the default buffer bound). */
const MAX_SAMPLES = 200;
/** Default bound of the serialized batch in UTF-8 bytes; the server takes 64 KiB. */
const MAX_BYTES = 60000;
/** Default flush interval in ms, as in the original client. */
const FLUSH_INTERVAL = 10000;

/** Wraps `f` so that nothing it throws reaches the caller (the page). */
export const safe =
  (f) =>
  (...a) => {
    try {
      return f(...a);
    } catch (e) {}
  };

// An option as a number >= 0, or the default when absent, empty or invalid.
const num = (v, d) => (v == null || v === '' || !(+v >= 0) ? d : +v);

/**
 * Creates a client. Options (all optional; data-* attributes give strings,
 * which are accepted too):
 * - endpoint: where `/record` lives (default '': the page's own origin);
 * - flushInterval: ms between flushes (default 10000; 0 flushes only on page
 *   hide and on `flush()`);
 * - sampleRate: 0..1, the share of page views that record anything at all,
 *   decided once here (default 1);
 * - autoMetrics: false (or 'false') turns off navigation timing and Web Vitals;
 * - maxSamples (default and at most 200), maxBytes (default 60000): the buffer
 *   bound; past it the oldest samples are dropped and counted in stats().
 * Returns {increment, observe, flush, set, stats}.
 */
export function createClient(o) {
  o = o || {};
  const sampled = Math.random() < Math.min(num(o.sampleRate, 1), 1);
  const maxSamples = Math.min(num(o.maxSamples, MAX_SAMPLES), MAX_SAMPLES);
  const maxBytes = num(o.maxBytes, MAX_BYTES);
  let url = '/record';
  let timer;
  let dropped = 0;
  // Pending samples in arrival order: {k: series key, s: wire sample, b: bytes}.
  let entries = [];
  // Series key -> its entry still open for merging (a histogram chunk under 100).
  let open = {};
  let bytes = 2; // the brackets of the JSON array

  const grow = (e, n) => {
    e.b += n;
    bytes += n;
    while (entries.length > maxSamples || bytes > maxBytes) {
      const d = entries.shift();
      bytes -= d.b;
      dropped++;
      if (open[d.k] == d) delete open[d.k];
    }
  };

  const add = (counter, name, labels, v) => {
    if (!sampled || typeof name != 'string' || !isFinite(v) || (counter && v < 0)) return;
    const l = {};
    if (labels && typeof labels == 'object')
      for (const k of Object.keys(labels).sort()) l[k] = String(labels[k]);
    const k = counter + name + JSON.stringify(l);
    let e = open[k];
    if (e) {
      if (counter) return void (e.s.inc += v);
      if (e.s.observations.length < MAX_OBSERVATIONS) {
        e.s.observations.push(v);
        return grow(e, String(v).length + 1);
      }
    }
    const s = {
      metricName: name,
      metricType: counter ? 'counter' : 'histogram',
      labels: l,
      [counter ? 'inc' : 'observations']: counter ? v : [v],
    };
    entries.push((e = open[k] = { k, s, b: 0 }));
    // +1 for the comma; counters get room for their `inc` to grow.
    grow(e, new TextEncoder().encode(JSON.stringify(s)).length + 1 + (counter ? 20 : 0));
  };

  // POST with fetch keepalive; a network error, 429 or 5xx is retried once,
  // after Retry-After seconds (at most 60) or 1 s, to the same URL: the same
  // batch id, so that the ingest counts the batch once even if the first
  // attempt was stored and only its answer lost.
  const post = (u, body, retry) => {
    const again = safe(
      (r) =>
        retry &&
        setTimeout(
          () => post(u, body, 0),
          Math.min(+(r && r.headers.get('Retry-After')) || 1, 60) * 1e3,
        ),
    );
    try {
      fetch(u, {
        method: 'POST',
        body,
        keepalive: true,
        credentials: 'omit',
        // A string body is sent as text/plain;charset=UTF-8, like the beacon.
      }).then((r) => (r.status > 499 || r.status == 429) && again(r), () => again());
    } catch (e) {
      again();
    }
  };

  const flush = () => {
    if (!entries.length) return;
    const body = JSON.stringify(entries.map((e) => e.s));
    // Each batch is named by a random 128-bit id (POST /record?batch=ID), which
    // every send of it reuses: the ingest applies an id once.
    const u =
      url +
      '?batch=' +
      crypto.getRandomValues(new Uint8Array(16)).reduce((s, x) => s + (x | 256).toString(16).slice(1), '');
    entries = [];
    open = {};
    bytes = 2;
    let queued;
    try {
      // A string body goes out as text/plain;charset=UTF-8: no CORS preflight.
      queued = navigator.sendBeacon(u, body);
    } catch (e) {}
    if (!queued) post(u, body, 1);
  };

  // Changes endpoint and flush interval after creation (the `init` command).
  const set = (p) => {
    if (p.endpoint != null) url = String(p.endpoint).replace(/\/+$/, '') + '/record';
    if (p.flushInterval != null || timer === undefined) {
      clearInterval(timer);
      const ms = num(p.flushInterval, FLUSH_INTERVAL);
      timer = sampled && ms && setInterval(safe(flush), ms);
    }
  };

  const observe = (name, labels, v) => v != null && add('', name, labels, +v);
  const client = {
    increment: safe((name, labels, v) => add('c', name, labels, v === undefined ? 1 : +v)),
    observe: safe(observe),
    flush: safe(flush),
    set: safe(set),
    stats: () => ({ queued: entries.length, dropped }),
  };

  try {
    set(o);
    if (sampled) {
      let finish;
      if (o.autoMetrics !== false && o.autoMetrics !== 'false')
        finish = safe(startAuto)(client.observe, safe);
      // Registered on window without capture, so this runs after web-vitals'
      // capture-phase visibilitychange listeners on window (which report CLS
      // and LCP, and update INP, synchronously when the page turns hidden);
      // `finish` then records INP: the final values are in the buffer before
      // the beacon goes.
      addEventListener(
        'visibilitychange',
        safe(() => document.visibilityState == 'hidden' && (finish && safe(finish)(), flush())),
      );
      addEventListener('pagehide', client.flush);
    }
  } catch (e) {}
  return client;
}
