"""scripts/apt_install.sh (behind install_browser.sh and install_nginx.sh) as a user who is not root: `make test`
goes on, and says what it skips and how to install it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def as_a_plain_user() -> list[str]:
    """The command prefix that runs a script as a user who is neither root nor has a password-less sudo."""
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        pytest.skip("this user has a password-less sudo: the script would really install")
    return []


def test_apt_install_as_a_user_without_root_or_sudo_skips_with_a_line_naming_what_and_how():
    """It ran `sudo apt-get update`: without sudo, 'sudo: command not found' and exit 127 (.ci/run stopped there,
    make test printed only that Chromium 'could not be installed'); with a sudo that asks a password, a prompt in
    the middle of `make test`."""
    done = subprocess.run([*as_a_plain_user(), "scripts/apt_install.sh", "the widget tests",
                           "shelfcast-no-such-command", "shelfcast-widget"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ("apt_install: not root and no password-less sudo; the widget tests will be "
                                   "skipped (as root: apt-get install shelfcast-widget)")
