#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
# Installs it with apt when /usr/bin/chromium is missing; needs root or sudo.
set -euo pipefail

[[ -x /usr/bin/chromium ]] && exit 0
SUDO=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-chromium: run as root or install sudo (apt-get install chromium)" >&2; exit 1; }
    SUDO=sudo
fi
echo "install-chromium: apt-get install chromium" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
