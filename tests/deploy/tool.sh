#!/usr/bin/env bash
# tests/deploy/tool.sh NAME: makes sure a Prometheus tool from Debian's packages is unpacked under
# target/tools/ and prints the path of its binary on stdout (nothing else goes to stdout).
#
#   NAME            Debian package              binary
#   promtool        prometheus                  target/tools/prometheus/usr/bin/promtool
#   prometheus      prometheus                  target/tools/prometheus/usr/bin/prometheus
#   amtool          prometheus-alertmanager     target/tools/prometheus-alertmanager/usr/bin/amtool
#   alertmanager    prometheus-alertmanager     target/tools/prometheus-alertmanager/usr/bin/prometheus-alertmanager
#
# No installation: `apt-get download` fetches the .deb (no root needed) and `dpkg -x` unpacks it;
# nothing is written outside target/tools/. If the download fails and we are root, runs
# `apt-get update` once and retries (a fresh container has no package lists). Idempotent: a binary
# already unpacked is printed at once. Safe to run concurrently (flock on target/tools/.lock).
# Exit status 0 with the path, else non-zero with the reason on stderr.
# TOOLS_DIR overrides target/tools (an absolute path, or relative to the repository root).
set -euo pipefail

die() { echo "tool.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: tests/deploy/tool.sh promtool|amtool|prometheus|alertmanager"
case "$1" in
  promtool)     pkg=prometheus;              bin=promtool ;;
  prometheus)   pkg=prometheus;              bin=prometheus ;;
  amtool)       pkg=prometheus-alertmanager; bin=amtool ;;
  alertmanager) pkg=prometheus-alertmanager; bin=prometheus-alertmanager ;;
  *) die "unknown tool '$1' (known: promtool, amtool, prometheus, alertmanager)" ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${TOOLS_DIR:-target/tools}"
case "$tools" in /*) ;; *) tools="$root/$tools" ;; esac
dest="$tools/$pkg"
path="$dest/usr/bin/$bin"

works() { [ -x "$path" ] && "$path" --version >/dev/null 2>&1; }

if works; then echo "$path"; exit 0; fi

for cmd in apt-get dpkg-deb; do
  command -v "$cmd" >/dev/null 2>&1 ||
    die "$cmd not found: this script needs a Debian-based system (install $pkg's $bin some other way)"
done

mkdir -p "$tools"
exec 9>"$tools/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
# Another caller may have unpacked it while we waited for the lock.
if works; then echo "$path"; exit 0; fi

tmp="$(mktemp -d "$tools/.$pkg.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# As root, apt would drop to user _apt, which cannot write into our temp dir (a warning, then root).
apt_opts=()
if [ "$(id -u)" = 0 ]; then apt_opts=(-o APT::Sandbox::User=root); fi
download() { (cd "$tmp" && apt-get "${apt_opts[@]}" download "$pkg") >&2; }
if ! download; then
  if [ "$(id -u)" = 0 ]; then
    echo "tool.sh: 'apt-get download $pkg' failed; running 'apt-get update' and retrying" >&2
    apt-get update >&2 || die "apt-get update failed (no network or no apt sources?)"
    download || die "'apt-get download $pkg' failed even after apt-get update"
  else
    die "'apt-get download $pkg' failed; as non-root this script cannot refresh the package lists: run 'sudo apt-get update' and retry"
  fi
fi

deb="$(ls "$tmp"/*.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed"
[ -x "$tmp/root/usr/bin/$bin" ] || die "$(basename "$deb") has no usr/bin/$bin"
dpkg-deb -f "$deb" Version >"$tmp/root/VERSION"

rm -rf "$dest"
mv "$tmp/root" "$dest"
works || die "$path does not run ('$path --version' failed)"
echo "tool.sh: unpacked $(basename "$deb") into $dest" >&2
echo "$path"
