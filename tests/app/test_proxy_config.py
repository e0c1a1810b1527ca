"""deploy/nginx.conf (the buffering proxy docker-compose puts in front of the app) is valid nginx configuration.

Checked with the real `nginx -t` when nginx is installed (apt-get install nginx-light); skipped otherwise.
The upstream `app:5005` is a compose service name, so the check points it at 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


def test_the_proxy_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin"))
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    text = CONF.read_text(encoding="utf-8")
    assert "server app:5005;" in text and "client_max_body_size 1m;" in text and "proxy_request_buffering on;" in text
    (tmp_path / "site.conf").write_text(text.replace("server app:5005;", "server 127.0.0.1:5005;")
                                        .replace("listen 5005;", "listen 127.0.0.1:15005;"))  # -t binds nothing
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"include {tmp_path}/site.conf; }}\n")
    checked = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
