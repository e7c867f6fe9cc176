// Seed compatibility of what standalone serves: the original snippet loads
// `origin + '/static/aggregatorClient.js'`, which must come as JavaScript,
// cacheable, and be the committed build.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startServer } from './harness.mjs';

const BUILT = readFileSync(new URL('../../aggregatorClient.js', import.meta.url), 'utf8');

test('GET /static/aggregatorClient.js: JavaScript content type, cache header, the committed build', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const r = await fetch(server.origin + '/static/aggregatorClient.js');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') || '', /^(text|application)\/javascript\b/);
  const cache = r.headers.get('cache-control') || '';
  const maxAge = /(?:^|,)\s*max-age=(\d+)/.exec(cache);
  assert.ok(maxAge && +maxAge[1] > 0, `cacheable (cache-control: ${cache})`);
  assert.doesNotMatch(cache, /no-store|no-cache|private/);
  assert.equal(
    await r.text(),
    BUILT,
    'the server serves static/aggregatorClient.js as committed (rebuild pum-collector after `npm run build`)',
  );
});

test('GET /static/demo.js and the demo pages are served', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const js = await fetch(server.origin + '/static/demo.js');
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type') || '', /javascript/);
  for (const path of ['/', '/demo', '/demo/csp']) {
    const r = await fetch(server.origin + path);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-type') || '', /^text\/html/, path);
    assert.match(await r.text(), /\/static\/aggregatorClient\.js/, path);
  }
});
