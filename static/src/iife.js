// The script-tag entry (built to aggregatorClient.js). Two installs:
// - the original Google-Analytics-style snippet: a stub function named by
//   window.PrometheusAggregatorObject (the seed's snippet uses
//   PrometheusAggregatorObjectName; default 'prometheusAggregator') queued
//   calls in `.q`, replayed here in order;
// - the CSP-friendly `<script async src=... data-endpoint=... data-flush-interval=...
//   data-sample-rate=... data-auto-metrics=...>`, read from document.currentScript.
// Either way window[name](command, ...args) is the API afterwards.
import { createClient, safe } from './client.js';

(() => {
  try {
    const w = window;
    const name =
      w.PrometheusAggregatorObject || w.PrometheusAggregatorObjectName || 'prometheusAggregator';
    const stub = w[name];
    if (stub && stub.pum) return; // loaded twice: keep the first client
    const script = document.currentScript;
    const ds = (script && script.dataset) || {};
    const q = (stub && stub.q) || [];
    // Options, later ones winning: the endpoint the script came from (its src
    // without /static/...), the seed snippet's aggregatorServerRoot,
    // data-* attributes, then queued `init` calls.
    const o = {};
    const merge = (p) => {
      for (const k in p) if (p[k] != null) o[k] = p[k];
    };
    const src = ((script && script.src) || '').replace(/[?#].*/, '');
    const i = src.lastIndexOf('/static/');
    merge({
      endpoint: i > 0 ? src.slice(0, i) : src && new URL(src).origin,
    });
    merge({ endpoint: stub && stub.aggregatorServerRoot });
    merge(ds);
    // init(endpoint, options?) or init(options)
    const init = (a) =>
      a[1] && typeof a[1] == 'object' ? a[1] : Object.assign({ endpoint: a[1] }, a[2]);
    for (const a of q) if (a[0] == 'init') merge(init(a));
    const c = createClient(o);
    const api = safe(function (cmd, metric, labels, value) {
      if (cmd == 'increment' || cmd == 'observe') c[cmd](metric, labels, value);
      else if (cmd == 'init') c.set(init(arguments));
      else if (cmd == 'flush') c.flush();
      else if (cmd == 'stats') return c.stats();
    });
    api.pum = c;
    w[name] = api;
    for (const a of q) if (a[0] != 'init') api.apply(0, a);
  } catch (e) {}
})();
