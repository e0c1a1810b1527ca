#!/usr/bin/env bash
# Installs, from their registries, the Node.js packages the test suite runs beside Shelfcast, each pinned by its
# package-lock.json: the Fluentd forward-protocol receiver (tests/fluentd_receiver) and axe-core, the
# accessibility checker the browser tests run in each page (tests/e2e/axe).
# Idempotent: does nothing for a folder whose installed packages already match its lock file.
# Without npm for a folder to install, or when `npm ci` fails (offline, a registry that refuses), it says so and
# exits 0: the tests that need the packages then skip, naming the reason (npm's, written to
# <folder>/.install-failed). With
# SHELFCAST_REQUIRE_TEST_SERVICES=1 (.ci/run sets it) either is an error instead, and those tests fail.
# Where npm's cache (~/.npm) cannot be written (a read-only or missing HOME, or a root-owned ~/.npm/_cacache), it
# caches under the temporary directory instead (TMPDIR, else /tmp, as Python's tempfile picks it).
set -euo pipefail
cd "$(dirname "$0")/.."
required=${SHELFCAST_REQUIRE_TEST_SERVICES:-0}


# npm caches every package it fetches in ~/.npm: with a read-only or missing HOME (CI runners, service accounts)
# each `npm ci` failed with EACCES and the tests that need the packages skipped (.ci/run failed). Likewise where
# HOME can be written but npm's store in it, ~/.npm/_cacache, or a folder in it cannot (root-owned after a
# `sudo npm install`: npm's "Your cache folder contains root-owned files"). Then npm caches where the engine's
# kernel cache goes in that case: shelfcast-npm-<uid> under TMPDIR (mode 0700; a fresh folder of this run's own
# where another user, or a link, holds that name).

# The first place in npm's cache ($1) that npm writes to and this user cannot; nothing when there is none. npm
# makes folders in _cacache (tmp, content-v2, index-v5 and theirs) and appends to index-v5's files; its _logs
# may be unwritable (npm only warns).
unwritable_in_npm_cache() {
    local where probe
    for where in "$1" "$1/_cacache"; do
        if ! { mkdir -p "$where" 2>/dev/null && probe=$(mktemp "$where/.writable-XXXXXX" 2>/dev/null); }; then
            printf '%s\n' "$where"
            return 0
        fi
        rm -f "$probe"
    done
    find "$1/_cacache" \( -type d -o -type f -path '*/index-v5/*' \) ! -writable -print -quit 2>/dev/null || true
}

# The temporary directory as Python's tempfile.gettempdir() picks it, so the engine's kernel cache and npm's land
# side by side: the first of TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp that is a folder this user can write.
# Before, TMPDIR naming a missing folder (a runner's job folder not made yet) was used as it was: no cache folder
# could be made there, npm ci failed with EACCES in ~/.npm and the tests skipped, while the engine cached in /tmp.
temporary_directory() {
    local where
    for where in "${TMPDIR:-}" "${TEMP:-}" "${TMP:-}" /tmp /var/tmp /usr/tmp; do
        if [ -n "$where" ] && [ -d "$where" ] && [ -w "$where" ] && [ -x "$where" ]; then
            printf '%s\n' "$where"
            return 0
        fi
    done
    return 1
}

use_a_writable_npm_cache() {
    local cache unwritable why uid temporary fallback
    cache=$(npm config get cache 2>/dev/null) || return 0
    unwritable=$(unwritable_in_npm_cache "$cache")
    [ -n "$unwritable" ] || return 0
    why=""
    if [ "$unwritable" != "$cache" ]; then
        why=" (its $unwritable is not writable: root-owned? \`chown -R $(id -u):$(id -g) $cache\` as root mends it)"
    fi
    uid=$(id -u)
    temporary=$(temporary_directory) || return 0
    fallback="$temporary/shelfcast-npm-$uid"
    if ! mkdir -m 700 "$fallback" 2>/dev/null &&
       { [ -L "$fallback" ] || [ ! -d "$fallback" ] || [ ! -O "$fallback" ]; }; then
        fallback=$(mktemp -d "$temporary/shelfcast-npm-XXXXXX") || return 0
    fi
    echo "install_test_services: cannot write npm's cache $cache$why; caching in $fallback instead" \
         "(set npm_config_cache to keep it elsewhere)" >&2
    export npm_config_cache="$fallback"
}

failed=0
cache_checked=0
for folder in tests/fluentd_receiver tests/e2e/axe; do
    stamp="$folder/node_modules/.shelfcast-lock.sha256"
    wanted=$(sha256sum "$folder/package-lock.json" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        rm -f "$folder/.install-failed"
        continue
    fi
    # npm is needed only for a folder to install: packages already installed to its lock (a runner's restored
    # cache, on a host with Debian's nodejs but not its npm) are used as they are; before, no npm skipped their
    # tests, and failed .ci/run, all the same.
    if ! command -v npm >/dev/null 2>&1; then
        echo "install_test_services: npm not found; the tests that need $folder will be skipped" >&2
        failed=1
        continue
    fi
    [ "$cache_checked" = 1 ] || { use_a_writable_npm_cache; cache_checked=1; }
    echo "install_test_services: npm ci in $folder"
    if log=$(cd "$folder" && npm ci --no-audit --no-fund --loglevel=error 2>&1); then
        echo "$wanted" > "$stamp"
        rm -f "$folder/.install-failed"
    else
        # a half-installed tree would pass the tests' "is it installed" check: none at all skips them cleanly
        rm -rf "$folder/node_modules"
        # npm's telling line: the fetch that failed and why, or an HTTP refusal (403, 404), or its first error line
        reason=$( { printf '%s\n' "$log" | grep -m1 -E 'reason:|npm error [45][0-9][0-9] ' ||
                    printf '%s\n' "$log" | grep -m1 'npm error' || printf '%s\n' "$log" | tail -n 1; } |
                  sed 's/^npm error //')
        printf 'npm ci failed in %s: %s\n' "$folder" "$reason" > "$folder/.install-failed"
        printf '%s\n' "$log" >&2
        echo "install_test_services: npm ci failed in $folder ($reason); the tests that need it will be skipped" >&2
        failed=1
    fi
done
if [ "$failed" = 1 ] && [ "$required" = 1 ]; then
    echo "install_test_services: SHELFCAST_REQUIRE_TEST_SERVICES=1: failing" >&2
    exit 1
fi
