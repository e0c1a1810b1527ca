#!/usr/bin/env bash
# Installs, from their registries, the services the test suite runs beside Shelfcast:
# the Fluentd forward-protocol receiver (tests/fluentd_receiver, pinned by its package-lock.json).
# Idempotent: does nothing when the installed packages already match the lock file.
# Without npm it says so and exits 0; the tests that need the receiver then skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

receiver=tests/fluentd_receiver
stamp="$receiver/node_modules/.shelfcast-lock.sha256"

if ! command -v npm >/dev/null 2>&1; then
    echo "install_test_services: npm not found; the Fluentd receiver tests will be skipped" >&2
    exit 0
fi

wanted=$(sha256sum "$receiver/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi

echo "install_test_services: npm ci in $receiver"
(cd "$receiver" && npm ci --no-audit --no-fund --loglevel=error)
echo "$wanted" > "$stamp"
