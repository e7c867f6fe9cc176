#!/usr/bin/env bash
# Latency, DynamoDB requests and write units per push of fixtures/beacon.json, each push a new
# batch, through `cargo lambda watch` over loopback against DynamoDB Local, one push at a time, N
# pushes (default 200), with a baseline from the same run (the path without the store). Needs
# what edge/lambda/test.sh installs. Usage: edge/lambda/bench.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200}
cargo build -q -p pum-lambda --bin pum-lambda
cargo build -q -p pum-collector --bin pum-collector
PUM_COLLECTOR_BIN=$PWD/target/debug/pum-collector \
  cargo test -q -p pum-lambda --test e2e -- --bench "$N" | grep '^bench:'
