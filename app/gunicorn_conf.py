"""gunicorn settings for serving Shelfcast in production (`make serve`).

One worker process per core, each with one thread: predictions are CPU-bound Python, so
more threads per worker only queue on the GIL (measured with benchmarks/app_load.py: p99
about 2.5x worse with 4 threads). gthread workers keep client connections alive while idle.
The app is created in each worker after the fork (no preload),
so every worker owns its model reference and event sink, and closes the sink on exit so
queued prediction events reach Fluentd or the spool.

Environment: SHELFCAST_BIND (default 127.0.0.1:5005; 0.0.0.0:5005 in a container),
SHELFCAST_WORKERS (default: the cores this process may use), SHELFCAST_THREADS (default 1), SHELFCAST_ACCESS_LOG ("-" for stdout).
"""

import os

bind = os.environ.get("SHELFCAST_BIND", "127.0.0.1:5005")
workers = int(os.environ.get("SHELFCAST_WORKERS", "0")) or len(os.sched_getaffinity(0))
worker_class = "gthread"
threads = int(os.environ.get("SHELFCAST_THREADS", "1"))
keepalive = 5
timeout = 60  # a worker loads and warms up the bundle before it serves
graceful_timeout = 30  # time to flush prediction events on shutdown
preload_app = False
accesslog = os.environ.get("SHELFCAST_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("SHELFCAST_LOG_LEVEL", "info")
raw_env = ["FLASK_DEBUG=0"]


def worker_exit(server, worker):
    """Flush this worker's prediction events before it goes."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("shelfcast") if app is not None else None
    if state is not None:
        state.close()
