"""The one way a stage's ``main`` is written: common options, clear errors instead of tracebacks, a summary line.

Every ``python -m pipeline.<stage>`` (download, prepare, split, source, train,
evaluate, promote) runs through ``run_stage``. It gives each the same options
(``--root`` project directory, ``--quiet``), turns the errors a user can fix
into one line ``<stage>: error: ...`` (exit 1, or the error's own
``exit_code``), Ctrl-C and SIGTERM into one line too (exit 130, 143; SIGTERM unwinds as Ctrl-C does, so
``finally`` blocks run; also when an import or a cleanup turned either into another error), and prints the
body's summary with the time it took. Before it is reached, while the command's module still imports,
pipeline/__init__.py gives Ctrl-C and SIGTERM the same line and status.

This module imports only the package's __init__, params.py and atomic.py (stdlib), so depending on it costs a
stage nothing (the dvc.yaml deps test checks every stage's imports).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from pipeline import command_started, interruption_line
from pipeline.atomic import target_of_copy
from pipeline.params import ParamsError, load_yaml


class StageError(RuntimeError):
    """A stage cannot do its job for a reason the user can fix (message says which).

    ``exit_code`` and ``label`` let a stage say more than "error": promote's
    refusal exits 3 with ``promote: refused: ...``.
    """

    exit_code = 1
    label = "error"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, systemd, a cancelled CI job, ``kill PID``) while a stage runs: it unwinds as Ctrl-C's
    KeyboardInterrupt does (``finally`` blocks run: train's MLflow run is marked FAILED, its checkpoint kept), where
    before the process ended at once, with no word and its MLflow run left RUNNING."""


USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, StageError)
# MLflow's switch for the bars it draws while it downloads artifacts (promote fetching a registry version):
# --quiet turns them off too, unless the user set it
ARTIFACT_BARS_SWITCH = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"

Body = Callable[[argparse.Namespace], "str | int | None"]


def interruption_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`Terminated`) ``exc`` is, or was raised from or while
    handling, else None. Python and libraries turn one into their own error where it meets them: Python 3.11 wraps
    it in RuntimeError when it arrives in a descriptor's ``__set_name__`` (``import mlflow`` has such classes), and
    a handler or ``finally`` that fails while it unwinds raises an error of its own: the stage was interrupted all
    the same, and says so in run_stage's one line, not a traceback."""
    pending, seen = [exc], set()
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        pending += [link.__context__, link.__cause__]
    return None


def stage_params(args: argparse.Namespace) -> dict:
    """params.yaml of the project root the stage runs in (what DVC tracks for it)."""
    return load_yaml(Path(args.root) / "params.yaml")


def os_error_text(exc: OSError) -> str:
    """``exc`` as one line that names the output it was writing (a staging copy's target, not its temporary name)."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return reason
    target = target_of_copy(paths[0])
    where = " -> ".join(str(p) for p in paths)
    if target is not None:
        return f"{target}: {reason} (while writing {where})"
    return f"{where}: {reason}"


@contextlib.contextmanager
def artifact_bars_off(quiet: bool) -> Iterator[None]:
    """MLflow's download bars off while a quiet stage runs, unless the user set the switch; the environment is left
    as it was found (a stage run in-process, by a test or pipeline.sweep, changes nothing after it)."""
    ours = quiet and ARTIFACT_BARS_SWITCH not in os.environ
    if ours:
        os.environ[ARTIFACT_BARS_SWITCH] = "false"
    try:
        yield
    finally:
        if ours:
            os.environ.pop(ARTIFACT_BARS_SWITCH, None)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated`; a second SIGTERM ends the process at once (its
    default), as does one where this is not the main thread or SIGTERM was set to be ignored (left as it was).

    This decides what SIGTERM does for a stage's whole run (an exception, where its default kills);
    pipeline/atomic.py ``signals_deferred`` only delays, for a few steps that must not be parted, the exception
    this (or Ctrl-C) raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one while the stage cleans up: ends it at once
        raise Terminated()

    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def output_any_terminal_can_take() -> None:
    """Let stdout write what its encoding cannot as ``\\uXXXX`` escapes, as Python's stderr already does.

    Help texts and summaries use a few characters beyond ASCII (—, ×, ±, …). Under a locale that is not UTF-8
    (``LC_ALL=tr_TR``: ISO-8859-9; ``en_US``: ISO-8859-1; ``PYTHONIOENCODING=ascii``), printing one raised
    UnicodeEncodeError: ``python -m pipeline.promote --help`` was a traceback instead of the help. (``LANG=C`` is
    fine: Python reads it as UTF-8.) Called first by every command's ``main``."""
    stream = sys.stdout
    if stream is not None and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="backslashreplace")


def run_stage(name: str, body: Body, argv: list[str] | None = None,
              errors: tuple[type[BaseException], ...] = (), description: str | None = None,
              options: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Run ``body(args)`` and return the process exit status.

    The body returns its summary (printed as ``<stage>: <summary> in N s``, exit 0),
    None (it printed its own report, exit 0), or an int exit status (it printed why).
    ``errors`` are further exception types that mean bad input rather than a bug;
    ``options`` adds a command's own options to the common ones.
    """
    output_any_terminal_can_take()
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{name}", description=description)
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        command_started()  # Ctrl-C and SIGTERM are this try's from here (before, pipeline/__init__.py's one line)
        with sigterm_as_interrupt(), artifact_bars_off(args.quiet):
            outcome = body(args)
    except (KeyboardInterrupt, Exception) as exc:
        interruption = interruption_behind(exc)
        if interruption is not None:
            terminated = isinstance(interruption, Terminated)
            print(interruption_line(name, terminated), file=sys.stderr)
            return 143 if terminated else 130  # 128 + the signal, as a shell reports a process the signal ended
        if isinstance(exc, USER_ERRORS + tuple(errors)):
            label, code = getattr(exc, "label", "error"), getattr(exc, "exit_code", 1)
            print(f"{name}: {label}: {exc}", file=sys.stderr)
            return code
        if isinstance(exc, OSError):  # a full disk, a read-only folder, a busy mount point: the file and why
            print(f"{name}: error: {os_error_text(exc)}", file=sys.stderr)
            return 1
        raise
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        return outcome
    if outcome is not None:
        print(f"{name}: {outcome} in {time.perf_counter() - started:.1f} s", flush=True)
    return 0
