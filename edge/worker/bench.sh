#!/usr/bin/env bash
# pum's Worker under local workerd (edge/worker/bench.mjs), in one run: rows written per push
# with 1, 8 and 64 clients pushing at once and at a steady 1 and 100 pushes a second (group
# commit), then Worker CPU per 1000 pushes beside standalone mode's and a hello-world Worker's.
# Loopback only, a bounded number of pushes.
# Usage: edge/worker/bench.sh [--rows-only] [--row-pushes N] [--pushes N] [--connections C] [--var NAME:VALUE]...
set -euo pipefail
cd "$(dirname "$0")/../.."
. edge/worker/tools.sh
say "build"
cargo build --release -p pum-collector
sh edge/worker/build.sh
say "bench"
exec node edge/worker/bench.mjs "$@"
