"""Numba's cache location and the thread policy, set in the environment once, before numba (or numpy's BLAS) reads
it: ``engine/__init__.py`` imports this module first.

One level of parallelism at a time: the executor runs one kernel at a time, so Numba's and BLAS's pools never run
together and get the same size (NUMBA_NUM_THREADS, default engine/cores.py's count; OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS or MKL_NUM_THREADS set before ``import engine`` override BLAS's).
"""

from __future__ import annotations

import os
import sys
import tempfile

from engine.cores import usable_cores


class EnvironmentSettingError(ValueError):
    """An environment variable the engine reads at import holds a value it cannot use: a setting for the user to
    change, which ``python -m pipeline.<command>`` says in one line (``pipeline/__init__.py``), not a traceback."""


def default_cache_dir() -> str:
    """Numba's on-disk kernel cache: shared by every clone, so a fresh process does not compile again."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "shelfcast", "numba")


def _default(var: str, value: str) -> str:
    """``os.environ.setdefault``, where an empty value counts as unset too (``make`` and CI systems pass unset
    variables as empty: an empty NUMBA_CACHE_DIR put the kernel caches in the working directory)."""
    if not os.environ.get(var, "").strip():
        os.environ[var] = value
    return os.environ[var]


def _unwritable(path: str) -> str | None:
    """Why this process cannot keep files in directory ``path`` (made if missing), or None if it can."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".writable-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def private_temp_cache_dir() -> str:
    """This user's cache under the temporary directory, ``shelfcast-numba-<uid>`` (mode 0700); where another user
    already holds that name (a shared /tmp), a fresh directory of this process's own."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"shelfcast-numba-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="shelfcast-numba-")
    if os.path.islink(path) or not os.path.isdir(path) or os.lstat(path).st_uid != uid:
        return tempfile.mkdtemp(prefix="shelfcast-numba-")
    return path


def _usable_cache_dir() -> str:
    """NUMBA_CACHE_DIR (default ``default_cache_dir()``) if writable, else this user's temporary one, said on stderr: a
    read-only HOME or another user's cache failed the first kernel with a PermissionError from deep in the engine."""
    wanted = _default("NUMBA_CACHE_DIR", default_cache_dir())
    why = _unwritable(wanted)
    if why is None:
        return wanted
    fallback = private_temp_cache_dir()
    print(f"engine: cannot write the kernel cache NUMBA_CACHE_DIR={wanted} ({why}); caching in {fallback} "
          "instead (set NUMBA_CACHE_DIR to a writable directory to keep compiled kernels there)", file=sys.stderr)
    os.environ["NUMBA_CACHE_DIR"] = fallback
    return fallback


def _apply_environment_defaults() -> None:
    _usable_cache_dir()
    threads = _default("NUMBA_NUM_THREADS", str(usable_cores())).strip()
    if not (threads.isascii() and threads.isdigit() and int(threads) >= 1):
        # Numba's own checks: 0 failed every `import engine` with a traceback from numba's internals naming no
        # variable; 'two' was a warning, then Numba's default (every core of the host) and OPENBLAS_NUM_THREADS='two'
        raise EnvironmentSettingError(
            f"environment variable NUMBA_NUM_THREADS must be a whole number >= 1 (the engine's thread pools; unset: "
            f"the cores this process can use, {usable_cores()}), got {threads!r}")
    os.environ["NUMBA_NUM_THREADS"] = threads
    if "numpy" not in sys.modules:  # BLAS reads these once, when numpy loads it
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            _default(var, threads)


def env_int(var: str, default: int) -> int:
    """A whole number of at least 0 from ``var`` (unset or empty, as make and CI pass unset ones: ``default``); an
    EnvironmentSettingError naming ``var`` for anything else (int() failed ``import engine`` on '' or '1e6', naming
    nothing)."""
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise EnvironmentSettingError(f"environment variable {var} must be a whole number >= 0, got {text!r}")
    return int(text)


_apply_environment_defaults()

CACHE_DIR: str = os.environ["NUMBA_CACHE_DIR"]

# Elementwise/reduction kernels go parallel only above this many elements:
# below it, waking Numba's thread pool (and competing with BLAS threads that still spin
# after a matmul) costs more than it saves. Measured on the 2-core reference machine: a
# fused bias+ReLU over 262,144 float32 takes 21 µs serial, 1.9 ms with prange after a matmul.
PARALLEL_MIN_ELEMENTS: int = env_int("SHELFCAST_PARALLEL_MIN_ELEMENTS", 1 << 23)
