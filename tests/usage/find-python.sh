#!/usr/bin/env bash
# Prints a Python interpreter of version 3.12 or later (the FOCUS validator needs one): python3
# itself when recent enough, else python3.13 / python3.12 on PATH, else one of pyenv's.
# Exits 1, saying so, when there is none.
set -euo pipefail
recent() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
for p in python3 python3.13 python3.12 \
  "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && recent "$p"; then
    command -v "$p"
    exit 0
  fi
done
echo "find-python.sh: no Python >= 3.12 here (python3 is $(python3 -V 2>&1)); the FOCUS validator needs one" >&2
exit 1
