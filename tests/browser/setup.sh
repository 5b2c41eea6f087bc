#!/usr/bin/env bash
# tests/browser/setup.sh: the headless browser for tests/browser/check_page.mjs, which the Rust tests
# run to check the HTML reports and the live console in a real Chromium.
#   - Chromium: Debian's `chromium` package at /usr/bin/chromium, installed with apt-get only when
#     missing (needs root, or passwordless sudo). CHROMIUM=/path/to/chromium uses that one instead
#     and skips apt entirely (check_page.mjs reads the same variable).
#   - playwright-core, pinned in tests/browser/package-lock.json, installed with `npm ci` into
#     TARGET_DIR/node_modules (no browser download: playwright-core drives the system Chromium).
# Idempotent: npm ci is skipped when TARGET_DIR/.lock-sha256 matches package.json and the lockfile.
# Safe to run concurrently (flock on TARGET_DIR/.lock).
# Usage: tests/browser/setup.sh TARGET_DIR      e.g. tests/browser/setup.sh target/browser  (make browser)
# Prints the Chromium version on stdout (nothing else); progress and errors go to stderr.
set -euo pipefail

die() { echo "browser/setup.sh: $*" >&2; exit 1; }
say() { echo "browser/setup.sh: $*" >&2; }

[ $# -eq 1 ] || { echo "usage: $0 TARGET_DIR" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$1"
chromium="${CHROMIUM:-/usr/bin/chromium}"

mkdir -p "$dest"
exec 9>"$dest/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

# 1. Chromium.
if [ ! -x "$chromium" ]; then
  [ -z "${CHROMIUM:-}" ] || die "CHROMIUM=$chromium is not an executable"
  command -v apt-get >/dev/null 2>&1 ||
    die "$chromium is missing and apt-get is unavailable: install Chromium, or set CHROMIUM=/path/to/chromium"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null ||
      die "$chromium is missing and installing it needs root: run \`sudo apt-get install -y chromium\`, or set CHROMIUM"
    sudo=(sudo -n)
  fi
  log="$dest/apt.log"
  say "installing Debian's chromium with apt-get (log: $log)"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium >>"$log" 2>&1; }
  : >"$log"
  if ! apt_install; then
    say "apt-get install failed; running apt-get update and retrying"
    "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || die "apt-get update failed: $(tail -n1 "$log") (full log: $log)"
    apt_install || die "apt-get install chromium failed: $(tail -n1 "$log") (full log: $log)"
  fi
  [ -x "$chromium" ] || die "apt-get installed chromium but $chromium is still missing (log: $log)"
fi
version="$("$chromium" --headless --no-sandbox --disable-gpu --version 2>/dev/null | tail -n1)" ||
  die "$chromium --version failed"
case "$version" in *[0-9].*) ;; *) die "$chromium --version printed no version: '$version'" ;; esac

# 2. playwright-core in TARGET_DIR/node_modules.
stamp="$dest/.lock-sha256"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ -f "$dest/node_modules/playwright-core/package.json" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  :
else
  command -v node >/dev/null 2>&1 || die "node not found (needed to run tests/browser/check_page.mjs)"
  command -v npm >/dev/null 2>&1 || die "npm not found (needed to install playwright-core)"
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "node $(node --version) is too old: playwright-core needs node >= 20"
  pin="playwright-core@$(node -p "require('$here/package.json').dependencies['playwright-core']")"
  say "installing $pin into $dest with npm ci"
  rm -f "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$dest/"
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core has no install script today; this keeps it so.
  if ! (cd "$dest" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >npm.log 2>&1); then
    die "npm ci failed: $(tail -n1 "$dest/npm.log") (full log: $dest/npm.log)"
  fi
  [ -f "$dest/node_modules/playwright-core/package.json" ] || die "npm ci did not install playwright-core (log: $dest/npm.log)"
  echo "$want" >"$stamp"
  say "$pin ready in $dest/node_modules"
fi
echo "$version"
