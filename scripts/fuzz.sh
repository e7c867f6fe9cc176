#!/usr/bin/env bash
# Builds, and optionally runs, the cargo-fuzz target over parse+validate (fuzz/fuzz_targets/push.rs).
#
#   scripts/fuzz.sh               build the target (what CI does)
#   scripts/fuzz.sh run SECONDS   build, then fuzz for SECONDS, seeded from fixtures/
#
# cargo-fuzz needs nightly (sanitizers); `cargo +nightly` overrides rust-toolchain.toml. The seed
# corpus is made in a temporary directory from fixtures/beacon.json and the bodies of
# fixtures/bad-pushes.json, so nothing the fuzzer finds lands in the repository; crashes go to
# fuzz/artifacts/push/ (ignored by git). Needs python3 to decode the bad-push corpus.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# grep reads all of the list (no -q): under pipefail an early exit could fail the pipe.
rustup toolchain list | grep nightly >/dev/null || rustup toolchain install nightly --profile minimal

cargo +nightly fuzz build push

case "${1:-build}" in
  build) exit 0 ;;
  run) seconds="${2:?usage: scripts/fuzz.sh run SECONDS}" ;;
  *) echo "usage: scripts/fuzz.sh [build | run SECONDS]" >&2; exit 2 ;;
esac

corpus="$(mktemp -d "${TMPDIR:-/tmp}/pum-fuzz-corpus.XXXXXX")"
trap 'rm -rf "$corpus"' EXIT

# A seed is one byte choosing the Content-Type (see CONTENT_TYPES in push.rs) and the body.
# Seeds are cut to 8 KiB, the longest input the run tries (-max_len): the 64 KiB oversized body
# would otherwise raise every input's length limit and slow the fuzzer down, for code that only
# compares a length; a cut nesting of 8 KiB of `[` still tests the depth limit.
python3 - "$root/fixtures" "$corpus" <<'PY'
import json, pathlib, re, sys

fixtures, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
selectors = {"application/json": b"0", "text/plain;charset=UTF-8": b"1", None: b"2",
             "application/x-www-form-urlencoded": b"3"}

def body(case):
    if "body" in case:
        return case["body"].encode()
    if "bodyJson" in case:
        return json.dumps(case["bodyJson"], separators=(",", ":")).encode()
    g = case["generate"]
    unit = g["repeat"].encode()
    if g.get("rawBytes"):
        unit = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), unit)
    return g["prefix"].encode() + g["separator"].encode().join([unit] * g["times"]) + g["suffix"].encode()

(corpus / "beacon").write_bytes(b"1" + (fixtures / "beacon.json").read_bytes())
cases = json.loads((fixtures / "bad-pushes.json").read_text())["cases"]
for i, case in enumerate(cases):
    data = selectors.get(case.get("contentType"), b"7") + body(case)
    (corpus / f"bad-{i:02}").write_bytes(data[:8192])
PY
echo "seeds: $(ls "$corpus" | wc -l) in $corpus"

cargo +nightly fuzz run push "$corpus" -- -max_total_time="$seconds" -max_len=8192
