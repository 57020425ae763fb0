#!/usr/bin/env bash
# Installs the Debian packages netwatch needs, only when one is missing, so `make setup`
# stays fast and idempotent. Needs root on a machine that lacks any of them.
set -euo pipefail
missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "netwatch setup: missing Debian packages: ${missing[*]} (run 'sudo make setup')" >&2
    exit 1
fi
echo "netwatch setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
