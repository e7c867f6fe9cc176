#!/usr/bin/env bash
# What a push costs on AWS, measured through `cargo lambda watch` (the optimised build) over
# loopback against DynamoDB Local:
# - latency of N pushes of fixtures/beacon.json (default 200), one at a time, each a new batch,
#   with a baseline from the same run (GET /healthz, the path without the store), and the
#   function's CPU time per push and peak memory (what sizes the Lambda's memory);
# - write units per accepted push, the log's and the fold's, for the beacon mix and a mixed
#   workload, with one fold per 90 pushes (the default 90 s batching window at 1 push a second)
#   and per 1,000 (the default batch size, at 1,000 pushes a second). The target is at most 1.2.
# Needs what edge/lambda/test.sh installs. Usage: edge/lambda/bench.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200}
cargo build -q -p pum-collector --bin pum-collector
PUM_COLLECTOR_BIN=$PWD/target/debug/pum-collector \
  cargo test -q -p pum-lambda --test e2e -- --bench "$N" | grep '^bench:'
