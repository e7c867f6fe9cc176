// A minimal fake of the browser globals the client touches: window events
// (with capture before bubble, as for an event dispatched at document and
// propagated through window), document, navigator.sendBeacon, fetch and
// performance. Only for unit tests; the real-browser tests run Chromium.

/** Window-like event target: capture listeners run first, then the others. */
export class FakeTarget {
  listeners = [];
  addEventListener = (type, fn, opt) => {
    const capture = opt === true || !!(opt && opt.capture);
    this.listeners.push({ type, fn, capture, once: !!(opt && opt.once) });
  };
  removeEventListener = (type, fn, opt) => {
    const capture = opt === true || !!(opt && opt.capture);
    this.listeners = this.listeners.filter(
      (l) => !(l.type === type && l.fn === fn && l.capture === capture),
    );
  };
  dispatch(type, extra = {}) {
    const ev = { type, isTrusted: true, timeStamp: 1000, persisted: false, ...extra };
    const all = this.listeners.filter((l) => l.type === type);
    for (const l of [...all.filter((l) => l.capture), ...all.filter((l) => !l.capture)]) {
      if (l.once) this.removeEventListener(type, l.fn, { capture: l.capture });
      l.fn(ev);
    }
  }
}

/** A finished navigation entry (times in ms). */
export const NAV_ENTRY = {
  entryType: 'navigation',
  name: 'http://127.0.0.1:9102/',
  type: 'navigate',
  startTime: 0,
  redirectStart: 0,
  redirectEnd: 0,
  fetchStart: 1,
  domainLookupStart: 2,
  domainLookupEnd: 12,
  connectStart: 12,
  secureConnectionStart: 20,
  connectEnd: 50,
  requestStart: 51,
  responseStart: 151,
  responseEnd: 171,
  domInteractive: 300,
  domContentLoadedEventStart: 300,
  domContentLoadedEventEnd: 310,
  domComplete: 571,
  loadEventStart: 571,
  loadEventEnd: 581,
  activationStart: 0,
};

/**
 * Builds a fake browser. Returns the globals object (install it with
 * `install(g)` or hand it to vm.createContext) and the captured sends.
 */
export function fakeBrowser({
  beacon = () => true,
  fetchImpl = () => Promise.resolve({ status: 200, headers: new Map() }),
  navEntry = NAV_ENTRY,
  readyState = 'complete',
  script = null,
  withBeacon = true,
} = {}) {
  const win = new FakeTarget();
  const beacons = [];
  const fetches = [];
  const document = {
    visibilityState: 'visible',
    readyState,
    prerendering: undefined,
    currentScript: script,
  };
  const navigator = {};
  if (withBeacon)
    navigator.sendBeacon = (url, body) => {
      beacons.push({ url, body: JSON.parse(body), type: typeof body });
      return beacon(url, body);
    };
  const performance = {
    now: () => 10000,
    getEntriesByType: (t) => (t === 'navigation' && navEntry ? [navEntry] : []),
  };
  const g = {
    addEventListener: win.addEventListener,
    removeEventListener: win.removeEventListener,
    document,
    navigator,
    performance,
    // Browsers have Web Crypto, which names each batch.
    crypto: globalThis.crypto,
    fetch: (url, init) => {
      fetches.push({ url, init, body: JSON.parse(init.body) });
      return fetchImpl(url, init);
    },
  };
  return {
    g,
    win,
    document,
    beacons,
    fetches,
    /** The page turns hidden: visibilitychange, as a browser dispatches it. */
    hide() {
      document.visibilityState = 'hidden';
      win.dispatch('visibilitychange');
    },
    show() {
      document.visibilityState = 'visible';
      win.dispatch('visibilitychange');
    },
    /** All samples sent so far, beacons and fetches, in order. */
    sent() {
      return [...beacons, ...fetches].flatMap((s) => s.body);
    },
  };
}

/** Puts a fake browser's globals on globalThis (tests run one file per process). */
export function install(b) {
  for (const [k, v] of Object.entries(b.g)) {
    Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  }
  // Node 20's mocked setTimeout loses a call without a delay (web-vitals makes
  // such calls); browsers take it as 0. Call install() after enabling mocks.
  const st = globalThis.setTimeout;
  if (!st.pumWrapped) {
    globalThis.setTimeout = Object.assign((f, ms, ...a) => st(f, ms || 0, ...a), { pumWrapped: 1 });
  }
  return b;
}

/** Lets pending promise callbacks (fetch .then) run. */
export const settle = () => new Promise((r) => setImmediate(r));
