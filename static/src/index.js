// ES module entry for bundlers: `import { createClient } from './aggregatorClient.mjs'`.
export { createClient } from './client.js';
