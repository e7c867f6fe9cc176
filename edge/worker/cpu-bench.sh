#!/usr/bin/env bash
# The Worker's CPU per push, against the design's budget of 0.2 ms: the push path (validation,
# the delta record, the shard's decode, batch-id check and append; benches/wasm-push) compiled to
# wasm as the Worker is and run in a loop under Node's V8, without HTTP, the Durable Object
# request or SQLite, beside the same code native, in one run (benches/wasm-push/bench.mjs).
# Prints a table; exits 1 when the wasm time per push is over the budget.
# Usage: edge/worker/cpu-bench.sh [--pushes N] [--rounds R] [--warmup W]
set -euo pipefail
cd "$(dirname "$0")/../.."
. edge/worker/tools.sh

# The profile the Worker is built with: the workspace's [profile.worker] when there is one.
profile=release
if grep -qx '\[profile.worker\]' Cargo.toml; then
  profile=worker
fi
target=${CARGO_TARGET_DIR:-$PWD/target}
out=$target/cpu-bench
native=$target/release/pum-wasm-push

say "build (wasm: profile $profile; native: release)"
cargo build --locked --profile "$profile" -p pum-wasm-push --lib --target wasm32-unknown-unknown
cargo build --locked --release -p pum-wasm-push --bin pum-wasm-push
rm -rf "$out"
mkdir -p "$out/wasm" "$out/counted"
wasm-bindgen --target nodejs --out-dir "$out/wasm" \
  "$target/wasm32-unknown-unknown/$profile/pum_wasm_push.wasm"
# What worker-build does to the Worker's module (edge/worker/Cargo.toml: wasm-opt -Oz), with the
# features it enables.
wasm=$out/wasm/pum_wasm_push_bg.wasm
wasm-opt "$wasm" -o "$wasm.opt" -Oz --debuginfo \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling
mv "$wasm.opt" "$wasm"
"$native" instrument "$wasm" "$out/counted/pum_wasm_push_bg.wasm"
# The glue keeps the module's exports to itself: hand the counter out.
{
  cat "$out/wasm/pum_wasm_push.js"
  echo 'exports.instructions = () => wasm.pum_wasm_instructions.value;'
} >"$out/counted/pum_wasm_push.js"

say "bench"
exec node benches/wasm-push/bench.mjs --dir "$out" --native "$native" --profile "$profile" "$@"
