"""How many connections a gunicorn worker may hold within its open-file limit (RLIMIT_NOFILE: `ulimit -n`,
systemd's LimitNOFILE, docker's --ulimit nofile). Standard library only: app/gunicorn_worker.py, which gunicorn's
master imports, uses it.

Each connection a worker holds is an open file. gunicorn's gthread worker takes up to worker_connections (1000) of
them, whatever the limit: under `ulimit -n 64` a worker that had 46 connections at once failed its next accept()
with EMFILE and died ("Exception in worker process"), resetting every connection it held (40 of 200 requests from
50 clients; 136 of 200 under `ulimit -n 32`), and the event sink's fsync failed beside it. A worker now takes at
most what its limit leaves once its model is loaded: the files it holds then, and SPARE_FILES more for what it
opens later (its logs, the event spool's segments, a model reload, /metrics' files); more connections wait in the
listen queue. Where the limit leaves none, the worker does not start (`TooFewOpenFiles`: one line saying what to
raise the limit to)."""

from __future__ import annotations

import os
import resource

# Files a worker keeps free beside its connections for those it opens while it serves: its metrics files
# (one a kind of metric), the spool's segment and folder, the fsync of its folder, a reload's bundle files
# and kernel cache, a /metrics scrape's lock and files, read one at a time. Measured: a worker holds 18 files
# with the local log once its model is loaded, 21 with the spool; 16 more covers the most held at once.
SPARE_FILES = 16
# Where /proc/self/fd (Linux) or /dev/fd (macOS, the BSDs) lists this process's open files.
OPEN_FILE_FOLDERS = ("/proc/self/fd", "/dev/fd")
LIMIT_NAMES = "RLIMIT_NOFILE: `ulimit -n`, systemd's LimitNOFILE, docker's --ulimit nofile"


class TooFewOpenFiles(RuntimeError):
    """The open-file limit leaves a worker no connection; the message says what to raise it to."""


def files_open() -> int | None:
    """The files this process has open now, or None where no folder lists them."""
    for folder in OPEN_FILE_FOLDERS:
        try:
            return len(os.listdir(folder)) - 1  # less the one listdir itself held open
        except OSError:
            continue
    return None


def connections_within_limit(wanted: int, threads: int) -> tuple[int, str | None]:
    """At most ``wanted`` connections (gunicorn's worker_connections), as many as the open-file limit leaves beside
    the files held now and SPARE_FILES: the soft limit is first raised as far as that needs, within the hard one.
    Returns the bound and, where it is below ``wanted``, a line saying so and what limit would take them all.
    TooFewOpenFiles where it leaves none (``threads``: the connections a worker serves at once, named as the
    least to give it)."""
    held = files_open()
    if held is None:
        return wanted, None
    needed = held + SPARE_FILES + wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (OSError, ValueError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted, None
    bound = soft - held - SPARE_FILES
    if bound < 1:
        raise TooFewOpenFiles(
            f"the open-file limit is {soft} ({LIMIT_NAMES}): a worker holds {held} files with its model loaded and "
            f"keeps {SPARE_FILES} spare for its logs, event spool and model reloads, which leaves it no connection; "
            f"raise it to at least {held + SPARE_FILES + threads} (a connection for each of its {threads} threads), "
            f"e.g. `ulimit -n {max(1024, needed)}`")
    return bound, (f"takes at most {bound} connections at once, the rest waiting to be accepted: the open-file limit "
                   f"is {soft} ({LIMIT_NAMES}), {held} files held with its model loaded and {SPARE_FILES} kept spare; "
                   f"{needed} takes gunicorn's {wanted}")
