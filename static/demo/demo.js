// Wires the buttons of the CSP-friendly demo page (demo/csp.html, served at
// /demo/csp). No inline script: this file is served at /static/demo.js.
(function () {
  // The same command queue as the snippet's, in case this runs before the
  // async client has loaded: it replays the queue when it arrives.
  var n = 'prometheusAggregator';
  window[n] = window[n] || function () { (window[n].q = window[n].q || []).push(arguments); };
  function pa() { window[n].apply(window, arguments); }

  var log = document.getElementById('log');
  function note(text) { log.textContent = new Date().toLocaleTimeString() + '  ' + text + '\n' + log.textContent; }
  // Simulated latency in ms: maps is usually fast, payments slower and spread out.
  var latency = { maps: [40, 400], payments: [150, 1800] };

  document.addEventListener('click', function (e) {
    var t = e.target.closest('button');
    if (!t) return;
    if (t.dataset.feature) {
      pa('increment', 'demo_feature_usage_total', { feature: t.dataset.feature }, 1);
      note('demo_feature_usage_total{feature="' + t.dataset.feature + '"} +1');
    } else if (t.dataset.api) {
      var api = t.dataset.api, r = latency[api], start = performance.now();
      t.disabled = true;
      setTimeout(function () {
        var seconds = (performance.now() - start) / 1000;
        pa('observe', 'demo_third_party_api_seconds', { api: api }, seconds);
        note('demo_third_party_api_seconds{api="' + api + '"} observed ' + seconds.toFixed(3) + ' s');
        t.disabled = false;
      }, r[0] + Math.random() * (r[1] - r[0]));
    } else if (t.id === 'flush') {
      pa('flush');
      note('flushed');
    }
  });
})();
