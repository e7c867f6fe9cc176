// Builds the client with esbuild:
//   aggregatorClient.js  - minified IIFE for <script> installs (snippet or CSP)
//   aggregatorClient.mjs - minified ES module exporting createClient, for bundlers
// Both are committed. `node build.mjs --check` builds into a temporary folder
// and fails if a committed file differs (CI runs it), so the build must stay
// deterministic: pinned esbuild, no timestamps, no paths in the output.
import * as esbuild from 'esbuild';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes('--check');
const outdir = check ? mkdtempSync(join(tmpdir(), 'pum-client-')) : here;

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  target: 'es2022',
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
  banner: {
    js: '/*! pum browser client, Apache-2.0. Bundles web-vitals, (c) Google LLC, Apache-2.0. */',
  },
};
const outputs = [
  { entryPoints: ['src/iife.js'], format: 'iife', outfile: 'aggregatorClient.js' },
  { entryPoints: ['src/index.js'], format: 'esm', outfile: 'aggregatorClient.mjs' },
];

let stale = 0;
try {
  for (const { outfile, ...o } of outputs) {
    const out = join(outdir, outfile);
    await esbuild.build({ ...common, ...o, outfile: out });
    if (check) {
      const committed = join(here, outfile);
      const same =
        existsSync(committed) && readFileSync(committed).equals(readFileSync(out));
      console.log(`${same ? 'ok' : 'STALE'}  ${outfile}`);
      if (!same) stale++;
    } else {
      console.log(`built ${outfile}`);
    }
  }
} finally {
  if (check) rmSync(outdir, { recursive: true, force: true });
}
if (stale) {
  console.error('committed build output differs from the sources: run `npm run build` and commit');
  process.exit(1);
}
