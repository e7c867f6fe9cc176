// Automatic measurements: navigation timing phases and Core Web Vitals.
// Metric names are fixed: the built-in allowlist pack (shared/packs/browser.json)
// and the dashboards use them.
import { onCLS, onFCP, onINP, onLCP, onTTFB } from 'web-vitals';

// [phase, start field, end field] of PerformanceNavigationTiming. The phases do
// not overlap, so stacked they draw GitHub's frontend response time graph:
// `connect` ends where TLS starts (secureConnectionStart) when there is TLS,
// and `tls` is 0 without it. Fields are read by name, so `S` stands for
// secureConnectionStart-or-connectEnd, computed below.
const PHASES = [
  ['redirect', 'redirectStart', 'redirectEnd'],
  ['dns', 'domainLookupStart', 'domainLookupEnd'],
  ['connect', 'connectStart', 'S'],
  ['tls', 'S', 'connectEnd'],
  ['request', 'requestStart', 'responseStart'],
  ['response', 'responseStart', 'responseEnd'],
  ['dom_processing', 'responseEnd', 'domComplete'],
  ['load_event', 'loadEventStart', 'loadEventEnd'],
];

/**
 * Turns a finished PerformanceNavigationTiming entry into observations
 * `[metricName, labels, seconds]`. Returns [] when the entry is missing, the
 * load event has not finished, or the page was prerendered (its phases then
 * say nothing about what the user waited for).
 */
export const navigationObservations = (t) => {
  if (!t || !(t.loadEventEnd > 0) || t.activationStart > 0) return [];
  const f = (k) =>
    k == 'S' ? (t.secureConnectionStart > 0 ? t.secureConnectionStart : t.connectEnd) : t[k];
  const out = PHASES.map(([phase, a, b]) => [
    'browser_navigation_phase_seconds',
    { phase },
    Math.max(0, f(b) - f(a)) / 1e3 || 0,
  ]);
  out.push(['browser_page_load_seconds', {}, t.loadEventEnd / 1e3]);
  return out;
};

/**
 * Returns a web-vitals callback that records `metric.value / scale` into the
 * histogram `name`, once per metric id. A metric id is one page view (the
 * first load, or a back/forward cache restore); web-vitals may report CLS and
 * INP again on a later hide, but a histogram cannot take an observation back,
 * so the first report (at the first hide, with `reportAllChanges: false`) is
 * the one kept. Values are not rounded: a value on a good/poor threshold stays
 * in the bucket web-vitals rates it in.
 */
export const vitalReporter = (observe, name, scale) => {
  const seen = {};
  return (m) => {
    if (!seen[m.id]) {
      seen[m.id] = 1;
      observe(name, {}, m.value / scale);
    }
  };
};

/**
 * For a metric reported with every change (reportAllChanges): returns
 * `[keep, finish]`; `keep` is the web-vitals callback and holds the latest
 * report, `finish()` records it as vitalReporter does, once per metric id.
 */
export const latestReporter = (observe, name, scale) => {
  let last;
  const report = vitalReporter(observe, name, scale);
  return [(m) => (last = m), () => last && report(last)];
};

/**
 * Starts every automatic measurement; `safe` wraps callbacks so they never
 * throw. Returns `finish`, which the client calls when the page turns hidden,
 * after every web-vitals listener ran and before it flushes.
 */
export const startAuto = (observe, safe) => {
  // [web-vitals function, metric name, divisor: ms -> s, CLS unitless]
  for (const [on, name, scale] of [
    [onLCP, 'browser_lcp_seconds', 1e3],
    [onCLS, 'browser_cls', 1],
    [onFCP, 'browser_fcp_seconds', 1e3],
    [onTTFB, 'browser_ttfb_seconds', 1e3],
  ])
    safe(on)(safe(vitalReporter(observe, name, scale)));
  // INP: web-vitals counts interactions in an idle callback (up to 1 s later in
  // Chromium, later still on a busy page). When the page is hidden before that
  // callback ran, its report at hide comes first and goes out without those
  // interactions (no INP at all when they were the only ones), and the update
  // that follows is only reported with reportAllChanges. So INP comes with
  // every change, and the client's hide handler, which runs after all of
  // web-vitals' listeners, records the latest value by calling `finish`.
  const [keepInp, finish] = latestReporter(observe, 'browser_inp_seconds', 1e3);
  safe(onINP)(safe(keepInp), { reportAllChanges: true });
  // loadEventEnd is set after the load handlers ran: measure one task later.
  const nav = () =>
    setTimeout(
      safe(() => {
        for (const o of navigationObservations(performance.getEntriesByType('navigation')[0]))
          observe(...o);
      }),
      0,
    );
  document.readyState == 'complete' ? nav() : addEventListener('load', nav);
  return finish;
};
