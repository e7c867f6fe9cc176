// pum's Worker under local workerd (`wrangler dev`), measured in one run on one machine. Run it
// through edge/worker/bench.sh, which builds what it needs first.
//
// 1. Rows written per push (group commit): for 1, 8 and 64 clients each pushing its next push when
//    the last is answered, and for a steady 1 and 100 pushes a second, a fresh `wrangler dev` with
//    the default settings takes pushes of fixtures/beacon.json, each with a batch id of its own;
//    the shards' counters (`GET /export/shards`) give the rows their groups wrote, and with the
//    folds', the allowlist's and each setAlarm's; the export must count every push.
// 2. CPU per 1000 pushes, beside standalone mode and beside a hello-world JavaScript Worker.
//
// For each server of part 2: start it, send a warmup, read the CPU time (utime + stime from /proc) of its
// processes, send N requests over C keep-alive connections (loopback only), read the CPU time
// again, and check every request got 200. Pushes are fixtures/beacon.json. `wrangler dev` runs
// two workerd processes: the Worker's own (the Worker and its Durable Objects) and a local dev
// proxy in front of it that production does not have; they are reported apart. Baselines: a
// hello-world JavaScript Worker under the same wrangler (what local workerd spends on any request),
// and pum's own `GET /healthz`. After the pushes the bench waits until the export counts every
// push, so that the shards' folds and KV writes are in the Worker's figure too.
//
// Usage: node edge/worker/bench.mjs [--rows-only] [--row-pushes N] [--pushes N] [--connections C]
//        [--var NAME:VALUE]... (vars for part 1's Workers, to compare settings)

import { spawn } from "node:child_process";
import { readFileSync, readdirSync, mkdtempSync, mkdirSync, rmSync, openSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import { Agent, request } from "node:http";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const PUSHES = opt("pushes", 2000);
const CONNECTIONS = opt("connections", 8);
// Rows written per push: pushes sent at each concurrency (closed loop: each client sends its next
// push when the last is answered).
const ROW_PUSHES = opt("row-pushes", 1280);
const ROWS_ONLY = args.includes("--rows-only");
const CONCURRENCY = [1, 8, 64];
// And at a steady rate (open loop: a push every 1/rate s, whether or not the last was answered),
// [pushes a second, seconds].
const RATES = [
  [1, 30],
  [100, 15],
];
// Extra vars for the rows part (--var NAME:VALUE, repeatable), to compare settings.
const VARS = args.flatMap((a, i) => (a === "--var" ? ["--var", args[i + 1]] : []));
const WARMUP = Math.min(200, PUSHES);
const TOKEN = "bench-token";
const beacon = readFileSync(join(root, "fixtures/beacon.json"));
const TICKS = 100; // clock ticks per second of /proc/*/stat (USER_HZ on Linux)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// utime + stime of a process, in ms, with its command name and process group.
function proc(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const end = stat.lastIndexOf(")");
    const comm = stat.slice(stat.indexOf("(") + 1, end);
    const f = stat.slice(end + 2).split(" ");
    // f[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
    return { pid, comm, pgrp: Number(f[2]), cpuMs: ((Number(f[11]) + Number(f[12])) * 1000) / TICKS };
  } catch {
    return null;
  }
}

// The processes of a process group, each with its role.
function group(pgid) {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .map((d) => proc(Number(d)))
    .filter((p) => p && p.pgrp === pgid)
    .map((p) => {
      let cmdline = "";
      try {
        cmdline = readFileSync(`/proc/${p.pid}/cmdline`, "utf8");
      } catch {}
      // wrangler dev runs two workerd: the Worker's own (with the inspector) and its local dev
      // proxy in front of it (which production does not have).
      const role = p.comm !== "workerd" ? "wrangler" : cmdline.includes("--inspector-addr") ? "worker" : "proxy";
      return { ...p, role };
    });
}

function get(port, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function waitHealthy(port, seconds, what) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      if ((await get(port, "/healthz")).status === 200) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${what} did not come up`);
    await sleep(250);
  }
}

// N pushes (or GETs of `path`) over C keep-alive connections; resolves with the count of 200s.
// With `batch`, each push names a batch id of its own (`batch` + its number).
async function send(port, n, path, connections = CONNECTIONS, batch) {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  let next = 0;
  let ok = 0;
  const one = (i) =>
    new Promise((resolve, reject) => {
      const req = request(
        {
          host: "127.0.0.1",
          port,
          path: path ?? (batch ? `/record?batch=${batch}${String(i).padStart(12, "0")}` : "/record"),
          method: path ? "GET" : "POST",
          agent,
          headers: path ? {} : { "content-type": "text/plain;charset=UTF-8", "content-length": beacon.length },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode));
        },
      );
      req.on("error", reject);
      req.end(path ? undefined : beacon);
    });
  const lanes = Array.from({ length: connections }, async () => {
    while (next < n) {
      next++;
      if ((await one(next)) === 200) ok++;
    }
  });
  await Promise.all(lanes);
  agent.destroy();
  return ok;
}

// Pushes the export counts (metrics_aggregator_record_total, over the shards).
async function exportedPushes(port) {
  const r = await get(port, "/export", { authorization: `Bearer ${TOKEN}` });
  let counted = 0;
  for (const sh of JSON.parse(r.body).shards ?? [])
    for (const se of sh.snapshot.series)
      if (se.metric === "metrics_aggregator_record_total") counted += Number(BigInt(se.counter) / 1000000n);
  return counted;
}

// Waits until the export counts `want` pushes, at most `ms`; resolves with the last count.
async function waitCounted(port, want, ms) {
  const deadline = Date.now() + ms;
  let counted = 0;
  while (Date.now() < deadline) {
    counted = await exportedPushes(port);
    if (counted >= want) break;
    await sleep(500);
  }
  return counted;
}

// Pushes at `rate` a second for `seconds`, each with a batch id of its own (`batch` + its
// number), not waiting for answers; resolves with the count of 200s once all are answered.
async function sendAtRate(port, rate, seconds, batch) {
  const agent = new Agent({ keepAlive: true, maxSockets: 512 });
  const n = Math.round(rate * seconds);
  const t0 = Date.now();
  const answers = [];
  for (let i = 0; i < n; i++) {
    const wait = t0 + (i * 1000) / rate - Date.now();
    if (wait > 0) await sleep(wait);
    answers.push(
      new Promise((resolve) => {
        const req = request(
          {
            host: "127.0.0.1",
            port,
            path: `/record?batch=${batch}${String(i).padStart(12, "0")}`,
            method: "POST",
            agent,
            headers: { "content-type": "text/plain;charset=UTF-8", "content-length": beacon.length },
          },
          (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode));
          },
        );
        req.on("error", () => resolve(0));
        req.end(beacon);
      }),
    );
  }
  const codes = await Promise.all(answers);
  agent.destroy();
  return { n, ok: codes.filter((c) => c === 200).length, secs: (Date.now() - t0) / 1000 };
}

function start(cmd, argv, env, log) {
  const out = openSync(log, "w");
  return spawn(cmd, argv, {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", out, out],
    detached: true, // its own process group: measured, and stopped, as a whole
  });
}

function stop(child) {
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {}
}

// Warmup, then N requests between two readings of the CPU time.
async function measure(child, port, cpuOf, path) {
  await send(port, WARMUP, path);
  const before = cpuOf(child);
  const t0 = process.hrtime.bigint();
  const ok = await send(port, PUSHES, path);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ok, secs, before, after: cpuOf(child) };
}

const work = mkdtempSync(join(tmpdir(), "pum-bench-"));
const children = [];
process.on("exit", () => {
  children.forEach(stop);
  rmSync(work, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

try {
  const wranglerDev = async (cwd, name, extra) => {
    const port = await freePort();
    const child = spawn(
      join(root, "node_modules/.bin/wrangler"),
      ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(await freePort()), "--persist-to", join(work, name), "--show-interactive-dev-session=false", "--log-level", "warn", ...extra],
      {
        cwd,
        env: {
          ...process.env,
          PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}`,
          PUM_WORKER_PREBUILT: "1",
          WRANGLER_SEND_METRICS: "false",
          CLOUDFLARE_CF_FETCH_ENABLED: "false",
        },
        stdio: ["ignore", openSync(join(work, `${name}.log`), "w"), openSync(join(work, `${name}.err`), "w")],
        detached: true, // its own process group: measured, and stopped, as a whole
      },
    );
    children.push(child);
    await waitHealthy(port, 180, `wrangler dev (${name})`);
    return { child, port };
  };
  const cpuWorker = (c) => {
    const procs = group(c.pid);
    const sum = (role) => procs.filter((p) => p.role === role).reduce((a, p) => a + p.cpuMs, 0);
    return { worker: sum("worker"), proxy: sum("proxy"), wrangler: sum("wrangler") };
  };

  // Rows written per push at 1, 8 and 64 concurrent clients, each on a fresh state with the
  // default settings: every push with a batch id of its own, then wait until the export counts
  // them all (the shards folded and published), and read the shards' counters.
  const rowTable = [];
  const rowRun = async (label, name, push) => {
    const dev = await wranglerDev(root, name, ["--var", `PUM_EXPORT_TOKEN:${TOKEN}`, "--var", "PUM_RATE_LIMIT:0", ...VARS]);
    const sent = await push(dev.port);
    // The shards' counters live in memory: read them before an idle shard may be evicted.
    const shards = JSON.parse((await get(dev.port, "/export/shards", { authorization: `Bearer ${TOKEN}` })).body).shards;
    const counted = await waitCounted(dev.port, sent.n, 120_000);
    const sum = (k) => shards.reduce((a, sh) => a + (sh.stats[k] ?? 0), 0);
    const pushes = sum("pushes");
    const byPushes = sum("rows_written_by_pushes");
    const all = byPushes + sum("rows_written_by_folds") + sum("rows_written_by_describes") + sum("alarms_set");
    stop(dev.child);
    rowTable.push({ label, ...sent, counted, pushes, byPushes, all, folds: sum("folds"), kv: sum("kv_writes") });
  };
  for (const clients of CONCURRENCY) {
    await rowRun(`${clients} client${clients > 1 ? "s" : ""}`, `rows-${clients}`, async (port) => {
      const t0 = process.hrtime.bigint();
      const ok = await send(port, ROW_PUSHES, undefined, clients, `bench${clients}x`);
      return { n: ROW_PUSHES, ok, secs: Number(process.hrtime.bigint() - t0) / 1e9 };
    });
  }
  for (const [rate, seconds] of RATES) {
    await rowRun(`${rate}/s for ${seconds} s`, `rate-${rate}`, (port) => sendAtRate(port, rate, seconds, `rate${rate}x`));
  }
  console.log(`Rows written per push under wrangler dev, default settings${VARS.length ? ` and ${VARS.filter((_, i) => i % 2).join(" ")}` : ""}: pushes of fixtures/beacon.json, each`);
  console.log(`with a batch id of its own, from clients pushing in a loop (${ROW_PUSHES} pushes) or at a steady rate; "all" adds the`);
  console.log(`folds' rows, the allowlist's and each setAlarm to the rows of the pushes' groups, as counted when the last push was answered.`);
  console.log(`  load               pushes  pushes/s  group rows  rows/push (groups)  rows/push (all)  folds  KV writes`);
  for (const r of rowTable) {
    console.log(
      `  ${r.label.padEnd(17)}  ${String(r.n).padStart(6)}  ${(r.ok / r.secs).toFixed(0).padStart(8)}  ${String(r.byPushes).padStart(10)}  ${(r.byPushes / r.pushes).toFixed(3).padStart(18)}  ${(r.all / r.pushes).toFixed(3).padStart(15)}  ${String(r.folds).padStart(5)}  ${String(r.kv).padStart(9)}`,
    );
  }
  for (const r of rowTable)
    if (r.pushes !== r.n)
      console.log(`  (${r.label}: a shard restarted during the run; its counters cover the last ${r.pushes} pushes)`);
  const rowsLost = rowTable.some((r) => r.ok !== r.n || r.counted !== r.n);
  if (rowsLost) {
    console.error(`some pushes were not acknowledged, stored or counted: ${JSON.stringify(rowTable)}`);
    process.exit(1);
  }
  if (ROWS_ONLY) process.exit(0);

  // Standalone mode.
  const sPort = await freePort();
  const standalone = start(
    join(root, "target/release/pum-collector"),
    ["standalone", "--ingest-listen", `127.0.0.1:${sPort}`, "--metrics-listen", `127.0.0.1:${await freePort()}`, "--data-dir", join(work, "standalone")],
    { PUM_LOG: "warn" },
    join(work, "standalone.log"),
  );
  children.push(standalone);
  await waitHealthy(sPort, 30, "standalone");
  const cpuStandalone = (c) => ({ server: proc(c.pid).cpuMs });
  const s = await measure(standalone, sPort, cpuStandalone);
  stop(standalone);

  // Baseline: a hello-world JavaScript Worker under the same local workerd, answering 200 at once.
  const helloDir = join(work, "hello");
  mkdirSync(helloDir);
  writeFileSync(join(helloDir, "wrangler.toml"), 'name = "hello"\nmain = "index.js"\ncompatibility_date = "2026-11-01"\n');
  writeFileSync(join(helloDir, "index.js"), 'export default { fetch() { return new Response("{}"); } };\n');
  const hello = await wranglerDev(helloDir, "hello", []);
  const hw = await measure(hello.child, hello.port, cpuWorker, "/healthz");
  stop(hello.child);

  // pum's Worker: first /healthz (the Worker answers at once), then pushes.
  const pum = await wranglerDev(root, "pum", ["--var", `PUM_EXPORT_TOKEN:${TOKEN}`]);
  const h = await measure(pum.child, pum.port, cpuWorker, "/healthz");
  const w = await measure(pum.child, pum.port, cpuWorker);
  // Let the shards fold and publish, and count that CPU too; check nothing was lost.
  const counted = await waitCounted(pum.port, WARMUP + PUSHES, 120_000);
  const folded = cpuWorker(pum.child);
  stop(pum.child);

  const per1000 = (ms) => ((ms * 1000) / PUSHES).toFixed(0).padStart(6);
  const d = (m, k) => m.after[k] - m.before[k];
  const sCpu = d(s, "server");
  const pushCpu = folded.worker - w.before.worker;
  console.log(`${PUSHES} requests each, over ${CONNECTIONS} keep-alive connections after ${WARMUP} warmup; pushes are fixtures/beacon.json (${beacon.length} bytes).`);
  console.log(`CPU is utime+stime from /proc, in ms per 1000 requests. Under wrangler dev, "workerd" is the Worker's own process; its local dev proxy (not in production) is shown apart.`);
  console.log(`  standalone, push:           ${per1000(sCpu)}  (${s.ok}/${PUSHES} answered 200 in ${s.secs.toFixed(1)} s)`);
  console.log(`  hello-world JS Worker:      ${per1000(d(hw, "worker"))}  workerd, ${per1000(d(hw, "proxy"))} proxy`);
  console.log(`  pum Worker, GET /healthz:   ${per1000(d(h, "worker"))}  workerd, ${per1000(d(h, "proxy"))} proxy`);
  console.log(`  pum Worker, push:           ${per1000(pushCpu)}  workerd with the folds and KV writes, ${per1000(d(w, "proxy"))} proxy, ${per1000(d(w, "wrangler"))} wrangler's node  (${w.ok}/${PUSHES} answered 200 in ${w.secs.toFixed(1)} s; the export counts ${counted} of ${WARMUP + PUSHES})`);
  console.log(`  pum Worker push / hello-world: ${(pushCpu / d(hw, "worker")).toFixed(1)}x; push / standalone push: ${(pushCpu / sCpu).toFixed(1)}x; push - /healthz: ${per1000(pushCpu - d(h, "worker")).trim()} (the core, one Durable Object request, one SQLite row, the folds)`);
  if (s.ok !== PUSHES || w.ok !== PUSHES || counted !== WARMUP + PUSHES) {
    console.error("some pushes were not acknowledged or not counted");
    process.exit(1);
  }
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
