#!/usr/bin/env bash
# Runs the Prometheus/Grafana/Kubernetes kit's tests (deploy/tests/).
#
# Needs: Debian's prometheus package (prometheus, promtool), python3 with venv,
# and pum-collector (built here with cargo when target/release/pum-collector is
# missing; PUM_COLLECTOR_BIN points at another binary). Installs its Python
# packages into deploy/tests/.venv (PUM_DEPLOY_VENV to move it), only when a
# pinned version is missing. Extra arguments go to pytest, e.g. -k e2e.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${PUM_DEPLOY_VENV:-$here/.venv}"

for t in prometheus promtool; do
    if ! command -v "$t" >/dev/null; then
        echo "run.sh: $t not found; install Debian's prometheus package: apt-get install -y prometheus" >&2
        exit 1
    fi
done

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Install only when a pinned version is missing or different: reruns stay offline.
if ! "$venv/bin/python" - "$here/requirements.txt" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = re.split(r"==", line)
    try:
        if version(name) != want:
            missing.append(line)
    except PackageNotFoundError:
        missing.append(line)
if missing:
    print("run.sh: installing", " ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

if [ -z "${PUM_COLLECTOR_BIN:-}" ] && [ ! -x "$repo/target/release/pum-collector" ]; then
    echo "run.sh: building pum-collector" >&2
    (cd "$repo" && cargo build --release -p pum-collector)
fi

cd "$here"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest "$@"
