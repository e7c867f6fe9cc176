#!/usr/bin/env bash
# Worker CPU per 1000 pushes under local workerd beside standalone mode's, in the same run
# (edge/worker/bench.mjs). Loopback only, a bounded number of pushes.
# Usage: edge/worker/bench.sh [--pushes N] [--connections C]
set -euo pipefail
cd "$(dirname "$0")/../.."
. edge/worker/tools.sh
say "build"
cargo build --release -p pum-collector
sh edge/worker/build.sh
say "bench"
exec node edge/worker/bench.mjs "$@"
