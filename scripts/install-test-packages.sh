#!/usr/bin/env bash
# Debian's packages that the tests run for real, installed with apt when missing (needs root
# or sudo): Chromium for the browser tests (Playwright drives it; it never downloads a
# browser), and the etcd and redis servers behind Traefik's key-value providers
# (tests/test_traefik_kv.py starts its own on free ports).
set -euo pipefail

declare -A NEEDED=([/usr/bin/chromium]=chromium [/usr/bin/etcd]=etcd-server [/usr/bin/redis-server]=redis-server)
missing=()
for path in "${!NEEDED[@]}"; do
    [[ -x "$path" ]] || missing+=("${NEEDED[$path]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
SUDO=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-test-packages: run as root or install sudo (apt-get install ${missing[*]})" >&2; exit 1; }
    SUDO=sudo
fi
echo "install-test-packages: apt-get install ${missing[*]}" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
