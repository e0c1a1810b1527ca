"""The Node.js packages the tests run beside Shelfcast (scripts/install_test_services.sh installs them): there, or
a skip that says why they are not, or a failure where they must be (SHELFCAST_REQUIRE_TEST_SERVICES=1, as .ci/run
sets it, or npm there and no install tried)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

INSTALL_COMMAND = "scripts/install_test_services.sh"
REQUIRE_VARIABLE = "SHELFCAST_REQUIRE_TEST_SERVICES"
FAILED_MARK = ".install-failed"  # the script writes why `npm ci` failed here, in the package's folder


def require_installed(installed: Path, folder: Path, what: str) -> None:
    """Return when ``installed`` (a file or folder ``folder``'s install puts there) exists; else skip or fail."""
    if installed.exists():
        return
    failed = folder / FAILED_MARK
    if shutil.which("npm") is None:
        reason = f"{what} is not installed in {folder} and npm is not found to install it"
    elif failed.is_file():
        reason = f"{what} is not installed: {failed.read_text(encoding='utf-8').strip()}"
    else:
        pytest.fail(f"{what} is not installed in {folder}: run {INSTALL_COMMAND}")
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1)")
    pytest.skip(reason)
