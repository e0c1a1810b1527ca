#!/usr/bin/env bash
# Installs nginx (Debian's nginx-light) for the tests of deploy/nginx.conf, the buffering proxy docker compose
# puts in front of the app (tests/app/test_proxy_config.py: `nginx -t`, and pipelined requests through it).
# Idempotent: does nothing when nginx is installed. Needs root (or sudo) and the Debian archive; without
# apt-get it says so and exits 0, and those tests then skip with a reason.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_nginx: apt-get not found; the proxy tests will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install_nginx: apt-get install nginx-light"
$sudo apt-get update -qq
# the package starts a system nginx on port 80 where a service manager runs; the tests start their own
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light
/usr/sbin/nginx -v
