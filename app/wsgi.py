"""The WSGI entry point for gunicorn: `gunicorn --config app/gunicorn_conf.py app.wsgi:app`."""

from __future__ import annotations

import logging

from app import create_app
from pipeline.blas import hold_one_blas_thread

# A worker per core: each forecast holds BLAS to one thread anyway (the bits training gives, pipeline/blas.py);
# held for the worker's life, that costs a counter step per request instead of two BLAS calls.
hold_one_blas_thread()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()
