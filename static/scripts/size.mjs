// Prints the built client's size minified + gzipped (zlib level 9), in bytes,
// and fails when it reaches the budget: 5 KB (5120 bytes), web-vitals included.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 5120;
const file = new URL('../aggregatorClient.js', import.meta.url);
const raw = readFileSync(file);
const gz = gzipSync(raw, { level: 9 }).length;
console.log(`aggregatorClient.js: ${raw.length} bytes minified, ${gz} bytes min+gzip (budget < ${BUDGET})`);
if (gz >= BUDGET) {
  console.error(`over budget by ${gz - BUDGET + 1} bytes`);
  process.exit(1);
}
