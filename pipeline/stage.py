"""What every stage's ``main`` shares: params, clear errors instead of tracebacks, a summary line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from pipeline.params import ParamsError, load_yaml
from pipeline.validate import DataValidationError


class StageError(RuntimeError):
    """A stage cannot do its job for a reason the user can fix (message says which)."""


USER_ERRORS = (ParamsError, DataValidationError, StageError)


def run_stage(name: str, body: Callable[[dict, argparse.Namespace], str], argv: list[str] | None = None) -> int:
    """Run ``body(params, args)``; print its summary, or ``<stage>: error: ...`` and exit 1."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{name}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        summary = body(load_yaml(args.params), args)
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was written", file=sys.stderr)
        return 130
    print(f"{name}: {summary} in {time.perf_counter() - started:.1f} s", flush=True)
    return 0
