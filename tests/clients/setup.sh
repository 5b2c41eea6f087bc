#!/usr/bin/env bash
# A virtual environment with the official Python clients pinned in a requirements file, for the
# tests that drive a real server with them. Idempotent: does nothing when VENV was made from the
# same requirements (a copy of them is kept as VENV/.requirements).
# Usage: tests/clients/setup.sh REQUIREMENTS VENV
#   e.g. tests/clients/setup.sh tests/openai/requirements.txt target/openai-venv   (make openai-client)
#        tests/clients/setup.sh tests/v2/requirements.txt target/v2-venv           (make v2-clients)
# PYTHON picks the interpreter that makes the venv (default: python3).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 REQUIREMENTS VENV" >&2; exit 2; }
requirements="$1"
venv="$2"
python="${PYTHON:-python3}"
stamp="$venv/.requirements"
[ -f "$requirements" ] || { echo "setup.sh: no requirements file $requirements" >&2; exit 1; }
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
  exit 0
fi
pins="$(grep -v '^[[:space:]]*\(#\|$\)' "$requirements" | paste -sd ' ' -)"
command -v "$python" >/dev/null 2>&1 || { echo "setup.sh: $python not found (needed to install $pins)" >&2; exit 1; }
echo "setup.sh: installing $pins into $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >"$venv/pip.log" 2>&1; then
  echo "setup.sh: pip could not install $pins: $(tail -n1 "$venv/pip.log") (full log: $venv/pip.log)" >&2
  exit 1
fi
cp "$requirements" "$stamp"
echo "setup.sh: $pins ready in $venv"
