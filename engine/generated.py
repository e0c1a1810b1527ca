"""Generated Python/Numba source, kept as modules in the on-disk cache so a fresh process compiles nothing.

Elementwise kernels and compiled inference plans write their source once under ``config.CACHE_DIR``, named by its
digest, and import it from there (Numba's ``cache=True`` keys its machine code to that file); atomic writes, so
processes sharing a cache never import a half-written module.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
import threading
from types import ModuleType

from engine import config

_lock = threading.Lock()
_modules: dict[tuple[str, str], ModuleType] = {}


def module_path(subdir: str, stem: str, key: str) -> str:
    """Where the module of ``key`` lives: ``<cache>/<subdir>/<stem>_<key>.py``."""
    return os.path.join(config.CACHE_DIR, subdir, f"{stem}_{key}.py")


def import_generated(source: str, key: str, subdir: str, stem: str, module_prefix: str) -> ModuleType:
    """The module holding ``source``, written once (atomically), imported once per process as ``module_prefix + key``:
    Numba's cached machine code refers to that name, so existing caches load across releases."""
    with _lock:
        module = _modules.get((subdir, key))
        if module is not None:
            return module
        path = module_path(subdir, stem, key)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        if not _file_holds(path, source):
            tmp = os.path.join(directory, f".{stem}_{secrets.token_hex(8)}.py")
            # the umask's mode, not mkstemp's 0600: another user sharing the cache reads it
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as handle:
                handle.write(source)
            os.replace(tmp, path)
        name = f"{module_prefix}{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _modules[(subdir, key)] = module
        return module


def _file_holds(path: str, source: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() == source
    except (OSError, UnicodeDecodeError):  # unreadable or damaged (not UTF-8): written again
        return False
