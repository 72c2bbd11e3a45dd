#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium, installing Debian's
# `chromium` package first if none is found (idempotent: with Chromium
# present it only looks it up). CHROMIUM names a binary to use instead.
# Used by `.ci/run` before the tests and by the browser test's set-up.
set -euo pipefail

find_chromium() {
    if [[ -n "${CHROMIUM:-}" ]]; then
        command -v "$CHROMIUM"
        return
    fi
    command -v chromium || command -v chromium-browser
}

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi
if [[ -n "${CHROMIUM:-}" ]]; then
    echo "CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Chromium is not installed and apt-get is not available: install chromium (or set CHROMIUM)" >&2
    exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
fi
echo "Chromium not found; installing Debian's chromium package" >&2
# Parallel callers wait for the package lock instead of failing on it.
apt_get=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
if ! "${apt_get[@]}" install -y --no-install-recommends chromium >&2; then
    "${apt_get[@]}" update >&2
    "${apt_get[@]}" install -y --no-install-recommends chromium >&2
fi
find_chromium
