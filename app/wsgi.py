"""The WSGI entry point for gunicorn: `gunicorn --config app/gunicorn_conf.py app.wsgi:app`."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from flask import Flask
from gunicorn.arbiter import Arbiter

from app import create_app
from app.config import SettingsError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load(create: Callable[[], Flask] = create_app) -> Flask:
    """The app, or exit with gunicorn's boot-error code after one line naming what the operator set wrong.

    A setting the app cannot start with (SettingsError) or a folder or file it cannot use (OSError, naming it):
    one line, not gunicorn's "Exception in worker process" traceback above it, and gunicorn then stops ("Worker
    failed to boot") rather than restarting a worker that would fail the same way. Anything else is a bug: its
    traceback is left to gunicorn."""
    try:
        return create()
    except (SettingsError, OSError) as exc:
        logging.getLogger("shelfcast").error("cannot start: %s: %s", type(exc).__name__, exc)
        sys.exit(Arbiter.WORKER_BOOT_ERROR)


app = load()
