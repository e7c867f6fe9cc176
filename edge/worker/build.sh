#!/bin/sh
# The Worker's build, run by wrangler ([build] command in wrangler.toml) from the repository root:
#   1. compiles edge/worker to wasm and its JS glue with worker-build (into edge/worker/build/);
#   2. lays out the static assets (edge/worker/build/public/) from the core: the same files at
#      the same URL paths as standalone mode, and their cache and CSP headers as `_headers`
#      (edge/worker/src/bin/assets.rs).
#
# worker-build downloads wasm-bindgen, wasm-opt and esbuild unless WASM_BINDGEN_BIN, WASM_OPT_BIN
# and ESBUILD_BIN name local ones; this script points them at the ones edge/worker/test.sh
# installs (cargo's wasm-bindgen-cli, the root package.json's binaryen and esbuild) when present.
#
# PUM_WORKER_PREBUILT=1 skips both steps when a build exists (the tests build once, then start
# `wrangler dev` several times, some at once).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/edge/worker/build"
public="$out/public"
PATH="$root/node_modules/.bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export PATH

if [ "${PUM_WORKER_PREBUILT:-}" = 1 ] && [ -f "$out/index.js" ] && [ -f "$out/index_bg.wasm" ] &&
  [ -f "$public/_headers" ]; then
  echo "pum: using the Worker built before (PUM_WORKER_PREBUILT=1)"
  exit 0
fi
if [ -z "${WASM_BINDGEN_BIN:-}" ] && command -v wasm-bindgen >/dev/null 2>&1; then
  WASM_BINDGEN_BIN=$(command -v wasm-bindgen)
  export WASM_BINDGEN_BIN
fi
if [ -z "${WASM_OPT_BIN:-}" ] && [ -x "$root/node_modules/.bin/wasm-opt" ]; then
  export WASM_OPT_BIN="$root/node_modules/.bin/wasm-opt"
fi
if [ -z "${ESBUILD_BIN:-}" ] && [ -x "$root/node_modules/.bin/esbuild" ]; then
  export ESBUILD_BIN="$root/node_modules/.bin/esbuild"
fi
# A build-time allowlist (see build.rs), relative to where wrangler was run (the root).
if [ -n "${PUM_ALLOWLIST:-}" ]; then
  PUM_ALLOWLIST=$(cd "$root" && realpath "$PUM_ALLOWLIST")
  export PUM_ALLOWLIST
fi
command -v worker-build >/dev/null 2>&1 || {
  echo "pum: worker-build is missing: cargo install worker-build --version 0.8.7 --locked" >&2
  exit 1
}
(cd "$root/edge/worker" && worker-build --release)
(cd "$root" && cargo run --quiet --locked -p pum-worker --bin assets -- "$public")
