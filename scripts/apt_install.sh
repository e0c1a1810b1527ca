#!/usr/bin/env bash
# apt_install.sh WHAT COMMANDS PACKAGE...: install Debian's PACKAGEs unless every one of COMMANDS (comma-separated)
# is already there (on PATH or in /usr/sbin). The one apt-get recipe of the install_*.sh scripts. Needs root (or
# a sudo that asks no password) and the Debian archive; without apt-get, or as a user without either, it says so
# and exits 0, and the tests that need the packages skip with a reason. WHAT names those tests in the message.
set -euo pipefail

what=$1
commands=$2
shift 2
missing=0
for command in ${commands//,/ }; do
    if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ]; then
        missing=1
    fi
done
if [ "$missing" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt_install: apt-get not found; $what will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    # Not root: only a sudo that asks for no password (a CI runner's); a prompt would stall `make test`.
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
        echo "apt_install: not root and no password-less sudo; $what will be skipped" \
             "(as root: apt-get install $*)" >&2
        exit 0
    fi
    sudo="sudo -n"
fi
echo "apt_install: apt-get install $* (for $what)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
