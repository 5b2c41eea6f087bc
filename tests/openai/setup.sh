#!/usr/bin/env bash
# A virtual environment with the official `openai` Python client (version pinned in
# requirements.txt), for tests/openai_client.rs. Idempotent: does nothing when it is up to date.
# Usage: tests/openai/setup.sh [VENV]   (default: target/openai-venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/../../target/openai-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$here/requirements.txt" "$stamp"; then
  exit 0
fi
command -v "$python" >/dev/null 2>&1 || { echo "setup.sh: $python not found (needed for the openai client test)" >&2; exit 1; }
rm -rf "$venv"
"$python" -m venv "$venv"
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >"$venv/pip.log" 2>&1; then
  echo "setup.sh: pip could not install $(cat "$here/requirements.txt"): $(tail -n1 "$venv/pip.log")" >&2
  exit 1
fi
cp "$here/requirements.txt" "$stamp"
echo "setup.sh: openai client ready in $venv"
