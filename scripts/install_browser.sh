#!/usr/bin/env bash
# Installs headless Chromium for the end-to-end test of the web app (tests/e2e), from Debian's
# packages `chromium` and `chromium-driver`. Idempotent: does nothing when both are installed.
# Needs root (or sudo) and the Debian archive; without apt-get it says so and exits 0, and the
# e2e test then skips with a reason.
set -euo pipefail
"$(dirname "$0")/apt_install.sh" "the Chromium end-to-end test" chromium,chromedriver chromium chromium-driver
