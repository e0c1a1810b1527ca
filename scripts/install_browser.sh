#!/usr/bin/env bash
# Installs headless Chromium for the end-to-end test of the web app (tests/e2e), from Debian's
# packages `chromium` and `chromium-driver`. Idempotent: does nothing when both are installed.
# Needs root (or sudo) and the Debian archive; without apt-get it says so and exits 0, and the
# e2e test then skips with a reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: apt-get not found; the Chromium end-to-end test will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install_browser: apt-get install chromium chromium-driver"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver
chromium --version
