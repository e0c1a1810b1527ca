"""The app's settings: embedded defaults that work on a laptop, overridable by environment variables.

Read once, when the app is created, so a bad value stops start-up with a message naming the
variable instead of failing some later request.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Mapping

ENV_MODEL_DIR = "SHELFCAST_MODEL_DIR"
ENV_RELOAD_INTERVAL = "SHELFCAST_RELOAD_INTERVAL_S"
ENV_MAX_BATCH = "SHELFCAST_MAX_BATCH"
ENV_MAX_BODY = "SHELFCAST_MAX_BODY_BYTES"
ENV_BODY_TIMEOUT = "SHELFCAST_BODY_TIMEOUT_S"
ENV_HEADER_TIMEOUT = "SHELFCAST_HEADER_TIMEOUT_S"
ENV_MAX_HEADER_BYTES = "SHELFCAST_MAX_HEADER_BYTES"
ENV_SERIES_CACHE = "SHELFCAST_SERIES_CACHE_ENTRIES"
ENV_WORKERS = "SHELFCAST_WORKERS"
ENV_THREADS = "SHELFCAST_THREADS"

DEFAULT_MODEL_DIR = Path("models/production")
DEFAULT_RELOAD_INTERVAL_S = 5.0
DEFAULT_MAX_BATCH = 1000  # instances per POST /api/v1/predict (documented in the OpenAPI document)
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # larger request bodies get 413 before they are parsed
DEFAULT_BODY_TIMEOUT_S = 10.0  # a body that stalls longer gets 408 (app/request_buffer.py)
# a request whose headers are not all in by then gets 408 and its connection closed (app/gunicorn_worker.py);
# 10 s as deploy/nginx.conf's client_header_timeout
DEFAULT_HEADER_TIMEOUT_S = 10.0
# a request's header fields in all (the request line aside): more get 431 (app/gunicorn_worker.py). gunicorn's own
# bound is limit_request_fields x limit_request_field_size, 100 x 8190: 800 KB a request, 29 ms of a worker's CPU
# to read and 60+ MB more memory under 16 such clients; 32 KiB as deploy/nginx.conf's large_client_header_buffers
# (4 x 8k), which bounds them so in front of the app
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
MIN_HEADER_BYTES = 1024
# store×items whose feature window columns each loaded bundle keeps (pipeline/served_features.py): ~4.5 KB each at
# 392 history days, at most 19.1 MB at this bound; 0 keeps none. Favorita has 221,400 store×items: a host serving all of
# them evenly misses most of 4,096, and a small container may want fewer
DEFAULT_SERIES_CACHE_ENTRIES = 4096
# The longest header or body timeout: the deadline thread (app/request_buffer.py) sleeps until a deadline, and a
# wait beyond threading.TIMEOUT_MAX (~292 years; `inf`) raised OverflowError there, killing it at every request.
MAX_TIMEOUT_S = 3600.0
MAX_WORKERS = 256  # gunicorn worker processes, each loading the model
DEFAULT_THREADS = 8  # connection threads per worker (app/gunicorn_conf.py)
# per worker, below gunicorn's worker_connections (1000): it keeps alive at most worker_connections - threads
# connections, so at 1000 threads and more keep-alive was silently off
MAX_THREADS = 512
MAX_COUNT_DIGITS = 18  # the longest worker or thread count read (a 64-bit integer's): longer is no count of anything


@functools.cache
def engine_cores() -> ModuleType:
    """engine/cores.py (how many cores this process can use), loaded by its path, once: the one loader of it for the
    app's side. gunicorn's master (app/gunicorn_conf.py: its default worker count) imports only the worker class and
    this file, and app/launch.py (the workers it waits for) starts that server: importing the engine package in
    either would size the thread pools (engine/config.py) in the master, or in the environment the server
    inherits, before a worker is pinned to its core. engine/cores.py is standard library only, as this file is.
    The engine is the one this process would import (found, not imported): the app's code may be a copy elsewhere
    (gunicorn --chdir), the engine beside the rest of the project on sys.path."""
    found = importlib.util.find_spec("engine")  # a top-level name: nothing is imported to find it
    engine = Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else \
        Path(__file__).resolve().parents[1] / "engine"
    spec = importlib.util.spec_from_file_location("shelfcast_engine_cores", engine / "cores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SettingsError(ValueError):
    """An environment variable the app cannot start with; the message names it."""


def worker_count(environ: Mapping[str, str] | None = None, cores: set[int] | None = None) -> int:
    """SHELFCAST_WORKERS as the server runs it: unset or empty, one per core of ``cores`` (default: this process's)
    that it may use (engine/cores.py); else a whole number from 1 to MAX_WORKERS. The one reading of it, for
    gunicorn's master (app/gunicorn_conf.py) and the workers app/launch.py waits for: `abc`, `-1` and `2.5` were a
    traceback, 0 silently one per core, and launch.py read it apart. SettingsError names the setting, the value and
    the fix."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_WORKERS, "").strip()
    if not text:
        return engine_cores().usable_cores(cores)
    count = _whole_number(text)
    if count is None or not 1 <= count <= MAX_WORKERS:
        raise SettingsError(f"{ENV_WORKERS}={text}: not a number of worker processes (1 to {MAX_WORKERS}, each loads "
                            f"the model); write a whole number, e.g. {ENV_WORKERS}=2, or leave it unset: one per core")
    return count


def thread_count(environ: Mapping[str, str] | None = None) -> int:
    """SHELFCAST_THREADS: each worker's connection threads, default 8, else 1 to MAX_THREADS. SettingsError as
    `worker_count`'s for any other value (no whole number was a traceback; 0 silently meant 1, 100000 was taken)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_THREADS, "").strip() or str(DEFAULT_THREADS)
    count = _whole_number(text)
    if count is None or not 1 <= count <= MAX_THREADS:
        raise SettingsError(f"{ENV_THREADS}={text}: not a number of connection threads per worker (1 to "
                            f"{MAX_THREADS}); write a whole number, e.g. {ENV_THREADS}={DEFAULT_THREADS} (the default)")
    return count


def _whole_number(text: str) -> int | None:
    """``text`` (ASCII digits, leading zeros allowed) as a whole number of at most MAX_COUNT_DIGITS; else None:
    int() reads at most 4,300 digits, and past them raised ValueError, a traceback where a setting's line was due."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > MAX_COUNT_DIGITS:
        return None
    return int(text)


@dataclass(frozen=True)
class AppSettings:
    model_dir: Path = DEFAULT_MODEL_DIR
    reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S  # how often a newly promoted bundle is looked for
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    series_cache_entries: int = DEFAULT_SERIES_CACHE_ENTRIES

    def __post_init__(self) -> None:
        for name in ("body_timeout_s", "header_timeout_s"):
            if not 0 < getattr(self, name) <= MAX_TIMEOUT_S:
                raise SettingsError(f"{name}: must be > 0 and <= {MAX_TIMEOUT_S:g}, got {getattr(self, name)!r}")
        if not (isinstance(self.max_header_bytes, int) and not isinstance(self.max_header_bytes, bool)
                and self.max_header_bytes >= MIN_HEADER_BYTES):
            raise SettingsError(f"max_header_bytes: must be an integer >= {MIN_HEADER_BYTES}, "
                                f"got {self.max_header_bytes!r}")
        if not 0 <= self.reload_interval_s <= MAX_TIMEOUT_S:  # inf: never a promote nor a fallback looked for
            raise SettingsError(f"reload_interval_s: must be >= 0 and <= {MAX_TIMEOUT_S:g}, "
                                f"got {self.reload_interval_s!r}")
        for name, minimum in (("max_batch", 1), ("max_body_bytes", 1), ("series_cache_entries", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise SettingsError(f"{name}: must be an integer >= {minimum}, got {value!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "AppSettings":
        env = os.environ if environ is None else environ
        values: dict = {}
        if env.get(ENV_MODEL_DIR, "").strip():
            values["model_dir"] = Path(env[ENV_MODEL_DIR].strip())
        if env.get(ENV_RELOAD_INTERVAL, "").strip():
            values["reload_interval_s"] = _number(env, ENV_RELOAD_INTERVAL, float, 0, MAX_TIMEOUT_S)
        if env.get(ENV_MAX_BATCH, "").strip():
            values["max_batch"] = _number(env, ENV_MAX_BATCH, int, 1)
        if env.get(ENV_MAX_BODY, "").strip():
            values["max_body_bytes"] = _number(env, ENV_MAX_BODY, int, 1)
        if env.get(ENV_BODY_TIMEOUT, "").strip():
            values["body_timeout_s"] = _number(env, ENV_BODY_TIMEOUT, float, 0.001, MAX_TIMEOUT_S)
        if env.get(ENV_HEADER_TIMEOUT, "").strip():
            values["header_timeout_s"] = _number(env, ENV_HEADER_TIMEOUT, float, 0.001, MAX_TIMEOUT_S)
        if env.get(ENV_MAX_HEADER_BYTES, "").strip():
            values["max_header_bytes"] = _number(env, ENV_MAX_HEADER_BYTES, int, MIN_HEADER_BYTES)
        if env.get(ENV_SERIES_CACHE, "").strip():
            values["series_cache_entries"] = _number(env, ENV_SERIES_CACHE, int, 0)
        return cls(**values)


def _number(env: Mapping[str, str], name: str, kind: type, minimum: float, maximum: float | None = None):
    text = env[name].strip()
    bound = f" and <= {maximum:g}" if maximum is not None else ""
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{name}: expected {'an integer' if kind is int else 'a number'} >= {minimum}{bound}, "
                            f"got {text!r}") from None
    if not (value >= minimum and (maximum is None or value <= maximum)):
        raise SettingsError(f"{name}: expected a value >= {minimum}{bound}, got {text!r}")
    return value
