#!/bin/sh
# The Worker's build, run by wrangler ([build] command in wrangler.toml) from the repository root:
#   1. compiles edge/worker to wasm and its JS glue with worker-build (into edge/worker/build/);
#   2. lays out the static assets (edge/worker/build/public/) so that their URLs are standalone
#      mode's: /static/aggregatorClient.js, /static/demo.js, / and /demo, /demo/csp.
#
# worker-build downloads wasm-bindgen, wasm-opt and esbuild unless WASM_BINDGEN_BIN, WASM_OPT_BIN
# and ESBUILD_BIN name local ones; this script points them at the ones edge/worker/test.sh
# installs (cargo's wasm-bindgen-cli, the root package.json's binaryen and esbuild) when present.
#
# PUM_WORKER_PREBUILT=1 skips step 1 when a build exists (the tests build once, then start
# `wrangler dev` several times).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/edge/worker/build"
PATH="$root/node_modules/.bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export PATH

if [ "${PUM_WORKER_PREBUILT:-}" = 1 ] && [ -f "$out/index.js" ] && [ -f "$out/index_bg.wasm" ]; then
  echo "pum: using the Worker built before (PUM_WORKER_PREBUILT=1)"
else
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
fi

public="$out/public"
# Each file is copied to a temporary name and renamed into place: several `wrangler dev`
# instances (the tests start them in parallel) may run this at once, and a reader must never see
# a missing or half-written file.
mkdir -p "$public/static" "$public/demo"
place() { # place SOURCE DEST
  cp "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
}
place "$root/static/aggregatorClient.js" "$public/static/aggregatorClient.js"
place "$root/static/demo/demo.js" "$public/static/demo.js"
place "$root/static/demo/index.html" "$public/index.html"
place "$root/static/demo/index.html" "$public/demo.html"
place "$root/static/demo/csp.html" "$public/demo/csp.html"
# The same headers standalone mode sends with these files.
cat > "$public/_headers.tmp.$$" <<'HEADERS'
/static/*
  Cache-Control: public, max-age=604800, stale-while-revalidate=86400
  Access-Control-Allow-Origin: *
/demo/csp
  Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'
HEADERS
mv -f "$public/_headers.tmp.$$" "$public/_headers"
