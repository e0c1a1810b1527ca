#!/usr/bin/env bash
# Installs, from their registries, the Node.js packages the test suite runs beside Shelfcast, each pinned by its
# package-lock.json: the Fluentd forward-protocol receiver (tests/fluentd_receiver) and axe-core, the
# accessibility checker the browser tests run in each page (tests/e2e/axe).
# Idempotent: does nothing for a folder whose installed packages already match its lock file.
# Without npm it says so and exits 0; the tests that need these packages then skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
    echo "install_test_services: npm not found; the Fluentd receiver and accessibility tests will be skipped" >&2
    exit 0
fi

for folder in tests/fluentd_receiver tests/e2e/axe; do
    stamp="$folder/node_modules/.shelfcast-lock.sha256"
    wanted=$(sha256sum "$folder/package-lock.json" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        continue
    fi
    echo "install_test_services: npm ci in $folder"
    (cd "$folder" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$wanted" > "$stamp"
done
