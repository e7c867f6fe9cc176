// CPU per 1000 pushes of the Worker under local workerd (`wrangler dev`), beside standalone mode
// and beside a hello-world JavaScript Worker, all measured in the same run on the same machine.
// Run it through edge/worker/bench.sh, which builds what it needs first.
//
// For each server: start it, send a warmup, read the CPU time (utime + stime from /proc) of its
// processes, send N requests over C keep-alive connections (loopback only), read the CPU time
// again, and check every request got 200. Pushes are fixtures/beacon.json. `wrangler dev` runs
// two workerd processes: the Worker's own (the Worker and its Durable Objects) and a local dev
// proxy in front of it that production does not have; they are reported apart. Baselines: a
// hello-world JavaScript Worker under the same wrangler (what local workerd spends on any request),
// and pum's own `GET /healthz`. After the pushes the bench waits until the export counts every
// push, so that the shards' folds and KV writes are in the Worker's figure too.
//
// Usage: node edge/worker/bench.mjs [--pushes N] [--connections C]

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
async function send(port, n, path) {
  const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  let next = 0;
  let ok = 0;
  const one = () =>
    new Promise((resolve, reject) => {
      const req = request(
        {
          host: "127.0.0.1",
          port,
          path: path ?? "/record",
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
  const lanes = Array.from({ length: CONNECTIONS }, async () => {
    while (next < n) {
      next++;
      if ((await one()) === 200) ok++;
    }
  });
  await Promise.all(lanes);
  agent.destroy();
  return ok;
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
  let counted = 0;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const r = await get(pum.port, "/export", { authorization: `Bearer ${TOKEN}` });
    const doc = JSON.parse(r.body);
    counted = 0;
    for (const sh of doc.shards)
      for (const se of sh.snapshot.series)
        if (se.metric === "metrics_aggregator_record_total") counted += Number(BigInt(se.counter) / 1000000n);
    if (counted >= WARMUP + PUSHES) break;
    await sleep(500);
  }
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
