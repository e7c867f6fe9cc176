#!/usr/bin/env bash
# Runs every test of pum, installing what the tests need first. Each tool is checked before it is
# installed, so a second run installs nothing. Usage: scripts/test.sh
#
# Suites run one after another; a failing suite does not stop the others, and the run exits
# non-zero at the end if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never

say() { printf '\n== %s\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # apt_install COMMAND PACKAGE...: installs the packages unless COMMAND exists
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$cmd is missing; install the Debian packages $* (needs root)"
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq || die "apt-get update failed"; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# npm_ci DIR: `npm ci` unless DIR/node_modules was installed from the same lock file.
npm_ci() {
  local dir=$1 stamp="$1/node_modules/.pum-lock-sha"
  local sha; sha=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then return 0; fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $dir failed"
  echo "$sha" > "$stamp"
}

say "tools"
command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
command -v node >/dev/null || apt_install node nodejs npm
apt_install chromium chromium
apt_install promtool prometheus
npm_ci static
echo "tools ready: $(cargo --version), node $(node --version), $(chromium --version 2>/dev/null | head -1), promtool $(promtool --version 2>/dev/null | head -1 | awk '{print $3}')"

# --- suites ------------------------------------------------------------------------------------
PASSED=() FAILED=()
suite() { # suite NAME COMMAND...
  local name=$1; shift
  say "$name"
  if "$@"; then PASSED+=("$name"); else FAILED+=("$name"); echo "suite failed: $name"; fi
}

suite "rust: workspace tests" cargo test --workspace --locked
suite "rust: core builds for wasm32" cargo build -p pum-shared --target wasm32-unknown-unknown --locked
suite "client: unit tests, size, built file matches source" \
  bash -c 'cd static && npm test && npm run size && npm run check-built'
suite "client: end-to-end in Chromium" bash -c \
  'cargo build -p pum-collector --locked && cd static && PUM_COLLECTOR_BIN="$0/target/debug/pum-collector" npm run test:e2e' "$ROOT"
suite "fuzz target builds" scripts/fuzz.sh
[ -x edge/worker/test.sh ] && suite "edge: Cloudflare Worker under workerd" edge/worker/test.sh
[ -x edge/lambda/test.sh ] && suite "edge: AWS Lambda and DynamoDB" edge/lambda/test.sh
[ -x deploy/tests/run.sh ] && suite "deploy kit: Prometheus, rules, dashboard, manifests" deploy/tests/run.sh

say "summary"
for s in "${PASSED[@]}"; do echo "ok      $s"; done
for s in "${FAILED[@]}"; do echo "FAILED  $s"; done
echo "suites: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
[ "${#FAILED[@]}" = 0 ]
