# shellcheck shell=bash
# Installs what building and running pum's Worker needs, each only when missing or at the wrong
# version. Sourced, from the repository root, by edge/worker/test.sh and edge/worker/bench.sh:
#   - the wasm32-unknown-unknown target;
#   - worker-build (cargo install, pinned below);
#   - wasm-bindgen-cli at exactly Cargo.lock's wasm-bindgen version (worker-build would download
#     one otherwise);
#   - the root package.json's npm tools (wrangler, Node 22 for it, binaryen's wasm-opt, esbuild),
#     with `npm ci` when package-lock.json changed since the last install.
# Leaves node_modules/.bin (Node 22 first) and cargo's bin on PATH, wrangler's telemetry off, and
# defines `say`.

WORKER_BUILD_VERSION=0.8.7

export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
export PATH="$PWD/node_modules/.bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { printf '\n== %s\n' "$*"; }

say "tools"
rustup target list --installed | grep -qx wasm32-unknown-unknown ||
  rustup target add wasm32-unknown-unknown

if [ "$(worker-build --version 2>/dev/null || true)" != "$WORKER_BUILD_VERSION" ]; then
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

bindgen_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen_version" ]; then
  echo "wasm-bindgen is not in Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $bindgen_version" ]; then
  # Not --locked: the CLI's own lockfile may pin versions this toolchain does not build.
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

pum_npm_stamp=node_modules/.pum-package-lock.json
if [ ! -x node_modules/.bin/wrangler ] || ! cmp -s package-lock.json "$pum_npm_stamp"; then
  npm ci --no-audit --no-fund </dev/null
  cp package-lock.json "$pum_npm_stamp"
fi
echo "worker-build $(worker-build --version), $(wasm-bindgen --version), wrangler $(wrangler --version </dev/null), node $(node --version)"
