#!/usr/bin/env bash
# pum's load benchmark: server CPU per push of standalone ingest against a hello-world baseline,
# both measured in the same run (see benches/load/src/main.rs). Builds both servers in release,
# then runs the benchmark with its defaults; extra arguments go to pum-loadbench (try --help).
# Usage: benches/load.sh [--requests N] [--connections N] [--rounds N] ...
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pum-collector -p pum-loadbench
exec target/release/pum-loadbench "$@"
