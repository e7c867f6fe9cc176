// The Worker's CPU per push: the push path (benches/wasm-push) compiled to wasm and run under
// this Node's V8, as workerd runs the Worker, beside the same code native, in one run. Run it
// through edge/worker/cpu-bench.sh, which builds what it reads:
//   DIR/wasm     the wasm-bindgen module (--target nodejs), optimized as the Worker is;
//   DIR/counted  the same module with a wasm instruction counter (pum-wasm-push instrument),
//                its glue extended with `instructions()`, which reads the counter;
//   NATIVE       the native runner (pum-wasm-push), also run under valgrind's cachegrind.
//
// Per fixture and per push: wall time, the median of ROUNDS rounds of PUSHES pushes after WARMUP
// pushes, wasm and native rounds in turn (wasm timed here with process.hrtime, native by the
// runner with Instant), and the median of the rounds' ratios of the two; wasm
// instructions executed (the counter read around one round); x86 instructions executed
// (cachegrind's I refs of two native runs that differ only in their number of pushes, divided
// by that difference, so that start-up and warm-up cancel out). Every round is checked: every
// push answered as expected and applied, the shard's totals exactly the pushes' deltas.
//
// Prints a table, and exits 1 when the slowest fixture's wasm time per push is over the budget.
//
// Usage: node bench.mjs --dir DIR --native NATIVE [--profile NAME] [--warmup W] [--rounds R]
//        [--pushes N]

import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { join, resolve } from "node:path";

const BUDGET_MS = 0.2;
const FIXTURES = ["beacon", "mixed"];

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const DIR = resolve(opt("dir", "target/cpu-bench"));
const NATIVE = resolve(opt("native", "target/release/pum-wasm-push"));
const PROFILE = opt("profile", "release");
// V8 runs the module in its baseline compiler (Liftoff) first and moves hot functions to its
// optimizing one (TurboFan) in the background; here that takes several thousand pushes.
const WARMUP = Number(opt("warmup", 10000));
const ROUNDS = Number(opt("rounds", 9));
const PUSHES = Number(opt("pushes", 5000));
// The two native runs under cachegrind: PUSHES and three times as many.
const CG = [PUSHES, 3 * PUSHES];

const require = createRequire(import.meta.url);
const timed = require(join(DIR, "wasm", "pum_wasm_push.js"));
const counted = require(join(DIR, "counted", "pum_wasm_push.js"));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const nsOf = (t0, t1) => Number(t1 - t0);

// Warm-up: the allowlist described and compiled in the shard, V8's optimizing tier reached.
function warm(module, fixture) {
  const bench = new module.PushBench(fixture);
  bench.run(WARMUP);
  bench.fold();
  bench.check();
  return bench;
}

// The native runner, a round per request (`pum-wasm-push rounds`).
class Native {
  constructor(fixture) {
    this.child = spawn(NATIVE, ["rounds", fixture, String(WARMUP), String(PUSHES)], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    this.lines = createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
  }
  async line() {
    const { value, done } = await this.lines.next();
    if (done) throw new Error("the native runner stopped (its error is above)");
    return value;
  }
  // After its warm-up, so that it does not run beside the first wasm round.
  async ready() {
    const line = await this.line();
    if (line !== "ready") throw new Error(`the native runner said ${line}`);
  }
  async round() {
    this.child.stdin.write("round\n");
    return JSON.parse(await this.line());
  }
  close() {
    this.child.stdin.end();
  }
}

// ROUNDS rounds of each, wasm and native in turn, so that other work on the machine slows both
// alike; each round checked.
async function times(fixture) {
  const bench = warm(timed, fixture);
  const native = new Native(fixture);
  await native.ready();
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    bench.run(PUSHES);
    const t1 = process.hrtime.bigint();
    const folded = bench.fold();
    const t2 = process.hrtime.bigint();
    const check = bench.check();
    const n = await native.round();
    rounds.push({ push: nsOf(t0, t1) / PUSHES, fold: nsOf(t1, t2) / Math.max(1, folded), native: n, check });
  }
  native.close();
  return {
    bodyBytes: bench.bodyBytes(),
    wasmNs: median(rounds.map((r) => r.push)),
    nativeNs: median(rounds.map((r) => r.native.pushNs)),
    ratio: median(rounds.map((r) => r.push / r.native.pushNs)),
    wasmFoldNs: median(rounds.map((r) => r.fold)),
    nativeFoldNs: median(rounds.map((r) => r.native.foldNs)),
    foldRatio: median(rounds.map((r) => r.fold / r.native.foldNs)),
    check: rounds.at(-1).check,
  };
}

// The wasm instructions one round executes, per push, from the instrumented module.
function wasmInstructions(fixture) {
  const bench = warm(counted, fixture);
  const before = counted.instructions();
  bench.run(PUSHES);
  const after = counted.instructions();
  bench.check();
  return Number(after - before) / PUSHES;
}

function hasValgrind() {
  return spawnSync("valgrind", ["--version"], { encoding: "utf8" }).status === 0;
}

// x86 instructions per push: cachegrind's I refs of two runs, differenced.
function nativeInstructions(fixture) {
  const refs = CG.map((pushes) => {
    const r = spawnSync(
      "valgrind",
      ["--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", NATIVE, "pushes", fixture, String(WARMUP), String(pushes)],
      { encoding: "utf8" },
    );
    const m = /I\s+refs:\s+([\d,]+)/.exec(r.stderr);
    if (r.status !== 0 || !m) throw new Error(`cachegrind of ${fixture} failed:\n${r.stdout}${r.stderr}`);
    return Number(m[1].replaceAll(",", ""));
  });
  return (refs[1] - refs[0]) / (CG[1] - CG[0]);
}

const ms = (ns) => (ns / 1e6).toFixed(4);
const int = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "n/a");
const pad = (cells, widths) => cells.map((c, i) => String(c).padEnd(widths[i])).join("  ").trimEnd();

const valgrind = hasValgrind();
const rows = [];
for (const fixture of FIXTURES) {
  rows.push({
    fixture,
    ...(await times(fixture)),
    wasmInstr: wasmInstructions(fixture),
    x86Instr: valgrind ? nativeInstructions(fixture) : NaN,
  });
}

console.log(
  `pum Worker CPU per push: the push path without HTTP, the Durable Object request or SQLite\n` +
    `wasm: profile ${PROFILE}, wasm-opt -Oz, node ${process.version} (V8 ${process.versions.v8}); ` +
    `native: ${process.arch} release; same run, same pushes\n` +
    `wall time per push: median of ${ROUNDS} rounds of ${PUSHES} pushes after ${WARMUP}, wasm and native in turn; wasm/native: median of the rounds' ratios\n` +
    `instructions per push: wasm over one round (counter), x86 by cachegrind (${CG[0]} vs ${CG[1]} pushes)\n`,
);
const widths = [12, 6, 12, 12, 11, 12, 11];
console.log(pad(["push", "bytes", "wasm ms", "native ms", "wasm/native", "wasm instr", "x86 instr"], widths));
for (const r of rows) {
  console.log(
    pad(
      [r.fixture, r.bodyBytes, ms(r.wasmNs), ms(r.nativeNs), `${r.ratio.toFixed(2)}x`, int(r.wasmInstr), int(r.x86Instr)],
      widths,
    ),
  );
}
for (const r of rows) {
  console.log(
    pad(
      [`${r.fixture} fold`, "", ms(r.wasmFoldNs), ms(r.nativeFoldNs), `${r.foldRatio.toFixed(2)}x`, "", ""],
      widths,
    ),
  );
}
console.log("(fold: the shard's alarm folding its pending records, per record; not part of the push)");
if (!valgrind) console.log("(x86 instructions: valgrind is not installed)");
console.log("");
for (const r of rows) console.log(`checked: ${r.check}`);
const worst = rows.reduce((a, b) => (b.wasmNs > a.wasmNs ? b : a));
const met = worst.wasmNs / 1e6 <= BUDGET_MS;
console.log(
  `target ${BUDGET_MS} ms per push: ${met ? "met" : "not met"} (slowest: ${worst.fixture}, ${ms(worst.wasmNs)} ms in wasm)`,
);
process.exit(met ? 0 : 1);
