"""The WSGI entry point for gunicorn: `gunicorn --config app/gunicorn_conf.py app.wsgi:app`."""

from __future__ import annotations

import logging
import sys

from gunicorn.arbiter import Arbiter

from app import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    app = create_app()
except (OSError, ValueError) as exc:  # what the operator set (a spool folder it cannot write, a malformed setting)
    # one line, not gunicorn's "Exception in worker process" traceback above it; gunicorn then stops ("Worker
    # failed to boot") rather than restarting a worker that would fail the same way
    logging.getLogger("shelfcast").error("cannot start: %s: %s", type(exc).__name__, exc)
    sys.exit(Arbiter.WORKER_BOOT_ERROR)
