#!/usr/bin/env bash
# Tests pum's Cloudflare Worker end to end under real local workerd (`wrangler dev`), read back
# through `pum-collector serve --source cloudflare` (collector/tests/cloudflare.rs, which runs the
# end-to-end suite every ingest passes), plus the Worker's and the shard's tests and
# `wrangler deploy --dry-run`.
#
# Installs what it needs first (edge/worker/tools.sh), builds the Worker once (edge/worker/build.sh)
# and runs the tests, which start `wrangler dev` with PUM_WORKER_PREBUILT=1 so that they reuse
# that build.
#
# Usage: edge/worker/test.sh            (exit status: the tests')
set -euo pipefail
cd "$(dirname "$0")/../.."

. edge/worker/tools.sh

# --- build ---------------------------------------------------------------------------------------
say "build"
sh edge/worker/build.sh
# The collector without the DynamoDB source: these tests read the Worker only.
collector=(-p pum-collector --no-default-features)
cargo build "${collector[@]}" --tests

# --- tests ---------------------------------------------------------------------------------------
say "unit tests of the Worker crate, the shard (the store conformance suite on SQLite) and the collector's Cloudflare source"
cargo test -p pum-worker -p pum-shard
cargo test "${collector[@]}" --lib sources::cloudflare

say "end to end under wrangler dev"
# The tests stop every wrangler they start; should the run itself be killed, this stops them.
pids=$(mktemp)
trap 'while read -r p; do kill -KILL -- "-$p" 2>/dev/null || true; done <"$pids"; rm -f "$pids"' EXIT
PUM_WRANGLER_PIDS=$pids cargo test "${collector[@]}" --test cloudflare -- --ignored --test-threads 2
