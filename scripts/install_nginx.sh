#!/usr/bin/env bash
# Installs nginx (Debian's nginx-light) for the tests of deploy/nginx.conf, the buffering proxy docker compose
# puts in front of the app (tests/app/test_proxy_config.py: `nginx -t`, and pipelined requests through it).
# Idempotent: does nothing when nginx is installed. Needs root (or sudo) and the Debian archive; without
# apt-get it says so and exits 0, and those tests then skip with a reason. (Where a service manager runs, the
# package also starts a system nginx on port 80; the tests start their own.)
set -euo pipefail
"$(dirname "$0")/apt_install.sh" "the proxy tests" nginx nginx-light
