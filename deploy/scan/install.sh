#!/usr/bin/env bash
# The scanners' virtualenv (`make scan-install`): checkov, bandit, pip-audit and uv,
# exactly as deploy/scan/requirements.lock pins them, each checked against its hash,
# apart from the project's own virtualenv so that their dependencies never meet the
# project's pins. pip installs uv (its pin and hashes from the lock), uv the rest: pip
# alone took 67-70 s here, uv ~10 s (measured on this project's 2-core machines).
set -euo pipefail
venv=${1:-.venv-scan}
lock=${2:-deploy/scan/requirements.lock}
python=${PYTHON:-python3}
rm -rf "$venv"
"$python" -m venv "$venv"
# uv's own entry of the lock: its pin line and the hash lines under it
awk '/^uv==/ {keep=1; print; next} keep && /^ / {print; next} {keep=0}' "$lock" > "$venv/uv.txt"
"$venv/bin/pip" install -q --require-hashes --no-deps -r "$venv/uv.txt"
"$venv/bin/uv" pip install -q --require-hashes -r "$lock" --python "$venv/bin/python"
# checkov renders the kustomize overlays with kustomize, or with kubectl's built-in one
if ! command -v kustomize >/dev/null 2>&1 && ! command -v kubectl >/dev/null 2>&1; then
  echo "no kustomize or kubectl: building kustomize from the Go module proxy (~80 s)"
  GOBIN="$(cd "$venv" && pwd)/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
fi
