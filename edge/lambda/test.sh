#!/usr/bin/env bash
# Every test of the AWS edge: the DynamoDB store (conformance suite and its own properties, against
# a local DynamoDB-compatible server), the Lambda handler on recorded events, end to end through
# `cargo lambda watch` with the real collector, and the SAM template's linters.
#
# Installs what it needs first, idempotently (each tool's version is checked before pip runs).
# The tests start and stop their own servers on 127.0.0.1 and free ports.
#
# Usage: edge/lambda/test.sh            (from anywhere; exits non-zero on any failure)
#        edge/lambda/test.sh --bench N  (after the tests, edge/lambda/bench.sh's figures for N pushes)
set -euo pipefail
cd "$(dirname "$0")/../.."
export SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true
BENCH=
if [ "${1:-}" = "--bench" ]; then BENCH=${2:-200}; fi

say() { printf '\n== %s\n' "$*"; }
SUMMARY=()
summarize() { # summarize LABEL LOG: keeps the runner's closing lines
  local label=$1 log=$2 line
  while IFS= read -r line; do SUMMARY+=("$label: ${line#"$label: "}"); done \
    < <(grep -E '^(test result:|e2e: [0-9]+ passed|bench: )' "$log" | grep -v ' 0 passed; 0 failed; 0 ignored' || true)
}

# --- tools ---------------------------------------------------------------------------------------
say "tools"
PY=${PUM_PYTHON:-python3}
pip_need() { # pip_need MODULE MIN_VERSION: true when MODULE is missing or older
  "$PY" - "$1" "$2" <<'EOF'
import sys
from importlib import metadata
name, want = sys.argv[1], sys.argv[2]
try:
    have = metadata.version(name)
except metadata.PackageNotFoundError:
    sys.exit(0)
def key(v):
    return [int(p) if p.isdigit() else 0 for p in v.split(".")[:3]]
sys.exit(0 if key(have) < key(want) else 1)
EOF
}
# moto[server]: the local DynamoDB (TransactWriteItems, TTL); flask and werkzeug come with [server].
if pip_need moto 5.0.0 || ! "$PY" -c 'import flask, werkzeug, moto.dynamodb' 2>/dev/null; then
  "$PY" -m pip install -q 'moto[server]>=5.0,<6'
fi
pip_need cargo-lambda 1.9.0 && "$PY" -m pip install -q 'cargo-lambda>=1.9,<2'
pip_need cfn-lint 1.0.0 && "$PY" -m pip install -q 'cfn-lint>=1,<2'
pip_need aws-sam-cli 1.100.0 && "$PY" -m pip install -q 'aws-sam-cli>=1.100,<2'
# pyenv only sees new commands (cargo-lambda, cfn-lint, sam) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "moto $("$PY" -c 'import moto; print(moto.__version__)'), $(cargo lambda --version), $(cfn-lint --version), $(sam --version)"

# --- template ------------------------------------------------------------------------------------
say "template.yaml"
cfn-lint template.yaml
if ! out=$(sam validate --lint --template template.yaml --region eu-west-1 2>&1); then
  echo "$out"; exit 1
fi
echo "$out" | grep -i 'valid SAM Template'
SUMMARY+=("template: cfn-lint template.yaml ok; sam validate --lint ok")

# --- build ---------------------------------------------------------------------------------------
say "build"
# Exactly as `cargo lambda watch` builds the function (`cargo run -p pum-lambda --bin pum-lambda`),
# so that its start finds the build fresh; the collector is built on its own for the same reason.
cargo build -q -p pum-lambda --bin pum-lambda
cargo build -q -p pum-collector --bin pum-collector
export PUM_COLLECTOR_BIN=$PWD/target/debug/pum-collector

# --- tests ---------------------------------------------------------------------------------------
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
FAILED=0
run() { # run LABEL CMD...: runs a test command, tees its log, keeps its summary
  local label=$1; shift
  say "$label: $*"
  if "$@" 2>&1 | tee "$LOGS/$label.log"; then :; else FAILED=1; fi
  summarize "$label" "$LOGS/$label.log"
}
run store cargo test -p pum-dynamodb --lib --test conformance
run handler cargo test -p pum-lambda --lib --bins --test handler
run e2e cargo test -p pum-lambda --test e2e

if [ -n "$BENCH" ]; then
  run bench cargo test -p pum-lambda --test e2e -- --bench "$BENCH"
fi

say "summary (edge/lambda/test.sh)"
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" != 0 ]; then
  echo "edge/lambda/test.sh: FAILED"
  exit 1
fi
echo "edge/lambda/test.sh: all passed"
