#!/usr/bin/env bash
# Install the headless browser the web tests drive (Debian's chromium), only when missing.
# Playwright cannot download its own browser builds offline, so the tests launch this one
# with executable_path="/usr/bin/chromium".
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# fonts: without recommends, a bare system would render page text as empty boxes
$SUDO apt-get install -y --no-install-recommends chromium fonts-liberation fonts-dejavu-core
/usr/bin/chromium --version
