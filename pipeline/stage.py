"""The one way a stage's ``main`` is written: common options, clear errors instead of tracebacks, a summary line.

Every ``python -m pipeline.<stage>`` (download, prepare, split, source, train,
evaluate, promote) runs through ``run_stage``. It gives each the same options
(``--root`` project directory, ``--quiet``), turns the errors a user can fix
into one line ``<stage>: error: ...`` (exit 1, or the error's own
``exit_code``), Ctrl-C and SIGTERM into one line too (exit 130, 143; SIGTERM unwinds as Ctrl-C does, so
``finally`` blocks run; also when an import or a cleanup turned either into another error), and prints the
body's summary with the time it took. Before it is reached, while the command's module still imports,
pipeline/__init__.py gives Ctrl-C and SIGTERM the same line and status. The commands that are not stages
(release, fetch-model, dvc-push) have mains of their own and run them through ``run_interruptible``, run_stage's
signal handling alone.

This module imports only the package's __init__, params.py and atomic.py (stdlib), so depending on it costs a
stage nothing (the dvc.yaml deps test checks every stage's imports).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from pipeline import command_started, end_at_once, handler_before_start, interruption_line, running_as_command
from pipeline.atomic import NO_SPACE_ERRNOS, target_of_copy
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
    return behind(exc, KeyboardInterrupt)


def behind(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The exception of ``kind`` that ``exc`` is, or was raised from or while handling (its ``__cause__`` and
    ``__context__``, all the way), else None."""
    pending, seen = [exc], set()
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        if isinstance(link, kind):
            return link
        seen.add(id(link))
        pending += [link.__context__, link.__cause__]
    return None


# The limits a process's memory may have been refused under, as a MemoryError cannot tell: name, ulimit flag.
MEMORY_LIMITS = (("RLIMIT_AS", "address space", "-v"), ("RLIMIT_DATA", "data segment", "-d"))


def out_of_memory_line(name: str) -> str:
    """What a command whose memory ran out (a MemoryError, however deep in a library's error it lies) says: the
    limit it ran under, if one is set (`ulimit -v`, `ulimit -d`; systemd's LimitAS), else the machine's memory,
    and what to do. Before, a train under `ulimit -v` 2 GB ended in a 60-line traceback, MemoryError at its
    foot under an InvalidArgumentError of the engine (a kernel's compile found no memory)."""
    import resource

    limits = []
    for limit, what, flag in MEMORY_LIMITS:
        soft, _ = resource.getrlimit(getattr(resource, limit))
        if soft != resource.RLIM_INFINITY:
            limits.append(f"its {what} is limited to {soft / 2 ** 20:,.0f} MiB ({limit}: `ulimit {flag}`)")
    where = ("; ".join(limits) + ": raise or remove that limit") if limits else (
        "no memory limit is set on this process: the machine's memory ran out; free some, or run it on a larger one")
    return (f"{name}: error: out of memory: {where}, then rerun it (an output is only ever replaced whole: none is "
            "half-written)")


def stage_params(args: argparse.Namespace) -> dict:
    """params.yaml of the project root the stage runs in (what DVC tracks for it)."""
    return load_yaml(Path(args.root) / "params.yaml")


def os_error_text(exc: OSError) -> str:
    """``exc`` as one line that names the output it was writing (a staging copy's target, not its temporary name).

    A copy that found no room (shutil names its source, then its destination) failed writing its destination: that
    is the file named. Before, a train whose MLflow artifact store filled as it logged the bundle said
    ``models/candidate/training_stats.json: No space left on device``, the file it was reading (and a candidate that
    was not there yet), as if models/ were the disk to free."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return reason
    written = paths[-1] if exc.errno in NO_SPACE_ERRNOS else paths[0]
    target = target_of_copy(written)
    where = " -> ".join(str(p) for p in paths)
    if target is not None:
        return f"{target}: {reason} (while writing {where})"
    if len(paths) > 1 and written is paths[-1]:
        return f"{written}: {reason} (while writing {where})"
    return f"{where}: {reason}"


def bars_drawn(progress: bool) -> bool:
    """Whether a progress bar is drawn as a bar: progress is wanted (no ``--quiet``) and stderr, where tqdm draws, is
    a terminal. Into a CI log, a file or a pipe a bar is no progress anyone sees: tqdm redraws it with carriage
    returns up to 10 times a second, one endless line of frames (``dvc repro > log 2>&1``: 4 bars' frames on train's
    stderr at the tiny scale, one per 0.1 s of a long prepare or download): there :func:`bar_options` writes it as a
    line now and then instead, and MLflow's download bars are off (:func:`artifact_bars_off`)."""
    if not progress:
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or one closed
        return False


LOG_PROGRESS_EVERY_S = 30.0  # into a log, a bar's state is a line this often (and as it starts, and ends if kept)


class ProgressLines:
    """tqdm's file where stderr is no terminal: each state tqdm writes is a line of its own, without the carriage
    returns that redraw a bar in place (a bar cleared at its end, ``leave=False``, writes nothing)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar_options(progress: bool) -> dict:
    """tqdm's options for a bar of a command, every bar's (``tqdm(..., **bar_options(progress))``): none drawn under
    ``--quiet``; a bar on a terminal; into a CI log or a file, lines: the bar's state as it starts, every
    LOG_PROGRESS_EVERY_S and as it ends, each a line of its own (a long download or prepare is not silent there)."""
    if not progress:
        return {"disable": True}
    if bars_drawn(progress):
        return {"disable": False}
    return {"disable": False, "file": ProgressLines(sys.stderr), "mininterval": LOG_PROGRESS_EVERY_S,
            "maxinterval": LOG_PROGRESS_EVERY_S, "ascii": True}


@contextlib.contextmanager
def artifact_bars_off(quiet: bool) -> Iterator[None]:
    """MLflow's download bars off while a stage runs that draws none (--quiet, or stderr not a terminal:
    :func:`bars_drawn`), unless the user set the switch; the environment is left as it was found (a stage run
    in-process, by a test or pipeline.sweep, changes nothing after it)."""
    ours = not bars_drawn(not quiet) and ARTIFACT_BARS_SWITCH not in os.environ
    if ours:
        os.environ[ARTIFACT_BARS_SWITCH] = "false"
    try:
        yield
    finally:
        if ours:
            os.environ.pop(ARTIFACT_BARS_SWITCH, None)


_second_signal_leaves: list[str] = []  # innermost last: see second_signal_leaves


@contextlib.contextmanager
def second_signal_leaves(what: str) -> Iterator[None]:
    """While the block runs (a command's own undoing after a first Ctrl-C or SIGTERM: release deploy withdrawing its
    candidate), a second one that ends the command at once says ``what`` — the state it leaves and the command that
    finishes the job — instead of "rerun it"; a first one that arrives in the block is worded so too
    (:func:`settled`)."""
    _second_signal_leaves.append(what)
    try:
        yield
    except KeyboardInterrupt as interruption:
        if getattr(interruption, OUTCOME, None) is None:
            settled(interruption, what)
        raise
    finally:
        _second_signal_leaves.pop()


OUTCOME = "outcome"  # the attribute of an interruption that settled sets, run_interruptible's line reads


def settled(interruption: KeyboardInterrupt, outcome: str) -> None:
    """Word ``interruption``'s one line with what the command did about it (``outcome``), instead of "rerun it"."""
    setattr(interruption, OUTCOME, outcome)


REDELIVERY_DELAY_S = 0.05  # a signal lost in a finaliser is raised again this much later (StageSignals)


class StageSignals:
    """Ctrl-C and SIGTERM while a stage runs: ``with StageSignals(name):`` around its body, ``reported`` after.

    In the block Ctrl-C raises KeyboardInterrupt and SIGTERM :class:`Terminated` (where its default killed), so the
    stage unwinds and its ``finally`` blocks run. Each is taken over from pipeline/__init__.py's start guard in one
    ``signal.signal`` (before ``command_started``): the guard's SIGTERM had been handed back to its default first,
    and SIGTERM then killed the stage without its line, its cleanup or status 143. One ignored (a background job's
    Ctrl-C, a ``nohup``'s SIGTERM), or where this is not the main thread, is left as it is.

    A second one, in a ``python -m pipeline.<stage>``, ends the process at once: the line once and the first's
    status (130, 143), no traceback. Cleanup still to run is skipped (an MLflow run left RUNNING is marked KILLED by
    the next stage on this host); train's checkpoints are not at risk, each is complete on disk before state.json
    names it, so the rerun resumes the last complete one. While the line is written (``reported``) a second one is
    held, then ends the process: before, it raised KeyboardInterrupt out of run_stage, a traceback instead of the
    line. Run in-process (a test), a second Ctrl-C raises again and a second SIGTERM kills, as Python's own do,
    except while the line is written: dropped then.

    This decides what the signals do for a stage's whole run; pipeline/atomic.py ``signals_deferred`` only delays,
    for a few steps that must not be parted, the exception this raises."""

    def __init__(self, name: str):
        self.name = name
        self.taken: dict[int, object] = {}  # signal -> the handler to restore (the guard's stand-in resolved)
        self.arrived: int | None = None  # the signal the block's handler last raised for
        self.unraisable_hook = None  # sys.unraisablehook before the block (see _lost_in_a_finaliser)

    def __enter__(self) -> "StageSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum, own in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, None)):
            previous = handler_before_start(signum, signal.getsignal(signum))
            if previous is None or previous == signal.SIG_IGN or (own is not None and previous is not own):
                continue  # ignored, set outside Python, or Ctrl-C given another meaning: not ours to take
            self.taken[signum] = previous
            signal.signal(signum, self._first)
        if self.taken:
            self.unraisable_hook, sys.unraisablehook = sys.unraisablehook, self._lost_in_a_finaliser
        return self

    def _first(self, signum, frame):
        self.arrived = signum
        terminated = signum == signal.SIGTERM
        if running_as_command():
            self._second_ends(terminated)
        elif terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # in-process, a second one kills, as it did
        raise Terminated() if terminated else KeyboardInterrupt()

    def _lost_in_a_finaliser(self, unraisable) -> None:
        """Python ignores an exception raised in a finaliser (a weakref callback, ``__del__``: the garbage collector
        runs them wherever the main thread is), so a signal whose handler ran in one was lost: its "Exception
        ignored" traceback, then the stage went on to its end (train, Ctrl-C'd as it opened its MLflow run: the whole
        training, exit 0; 2 of 15 Ctrl-C's on a loaded machine, rare otherwise). It is raised again where the main
        thread has gone on: simulated anew by another thread a moment later (at once, it ran in this hook and was
        lost again), with this block's first handler back in place (a command's had become "end at once"); one
        that lands in a finaliser again comes back here."""
        if self.arrived is None or not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.unraisable_hook(unraisable)
            return
        for number in self.taken:
            signal.signal(number, self._first)
        resend = threading.Timer(REDELIVERY_DELAY_S, _thread.interrupt_main, args=(self.arrived,))
        resend.daemon = True
        resend.start()

    def _second_ends(self, terminated: bool) -> None:
        """From now on a signal writes the interruption's line and ends the command at once with its status."""
        status = 143 if terminated else 130

        def ends(*_):
            end_at_once(interruption_line(self.name, terminated,
                                          _second_signal_leaves[-1] if _second_signal_leaves else None), status)

        for number in self.taken:
            signal.signal(number, ends)

    def _restore(self) -> None:
        for signum, handler in self.taken.items():
            signal.signal(signum, handler)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.unraisable_hook is not None:
            sys.unraisablehook, self.unraisable_hook = self.unraisable_hook, None
        interruption = interruption_behind(exc) if exc is not None else None
        if interruption is not None and running_as_command():  # the command ends: the handlers stay to its end
            self._second_ends(isinstance(interruption, Terminated))
        else:
            self._restore()

    def reported(self, terminated: bool, outcome: str | None = None) -> int:
        """Print the interruption's one line; return its status, 143 (SIGTERM) or 130 (Ctrl-C). A signal while it is
        written is held: the line is written whole, once. Then, in a command, that one or any later one until the
        process exits with this status ends it at once (nothing is left to unwind); in-process it is dropped."""
        held: list[int] = []
        for number in self.taken:
            signal.signal(number, lambda signum, frame: held.append(signum))
        print(interruption_line(self.name, terminated, outcome), file=sys.stderr, flush=True)
        status = 143 if terminated else 130  # 128 + the signal, as a shell reports a process the signal ended
        if not (running_as_command() and self.taken):
            self._restore()
            return status
        for number in self.taken:
            signal.signal(number, lambda *_: end_at_once(None, status))
        if held or _threads_left_running():
            for stream in (sys.stdout, sys.stderr):  # end_at_once flushes nothing
                with contextlib.suppress(Exception):
                    stream.flush()
            end_at_once(None, status)
        return status


def _threads_left_running() -> bool:
    """Whether a thread the command's unwinding did not end still runs (not a daemon), which Python's exit would wait
    for after the interruption's line: MLflow downloads a bundle's files on a pool's threads, and one reading a
    server that stalls (or a file that never ends) held `fetch-model` and `release` past Ctrl-C or SIGTERM until
    MLflow's read timeout, or for good, still writing into the deleted scratch copy (probed: 20.5 s after SIGTERM,
    143 and the line already written). Nothing of the command is left to unwind: such a process ends at once."""
    return any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
               if thread is not threading.main_thread())


def output_any_terminal_can_take() -> None:
    """Let stdout write what its encoding cannot as ``\\uXXXX`` escapes, as Python's stderr already does, and each
    line as it is printed, as stderr does.

    Help texts and summaries use a few characters beyond ASCII (—, ×, ±, …). Under a locale that is not UTF-8
    (``LC_ALL=tr_TR``: ISO-8859-9; ``en_US``: ISO-8859-1; ``PYTHONIOENCODING=ascii``), printing one raised
    UnicodeEncodeError: ``python -m pipeline.promote --help`` was a traceback instead of the help. (``LANG=C`` is
    fine: Python reads it as UTF-8.) Into a pipe or a file (a CI log: ``make deploy`` in a workflow) Python holds
    stdout in an 8 KiB buffer until the process ends: a deploy's lines (its shadow served, its canary's share, its
    smoke test) all came at its end, 16 s after the first happened, and a job killed on its timeout lost them; the
    lines of stderr came at once, out of order with them. Called first by every command's ``main``."""
    stream = sys.stdout
    if stream is None or not hasattr(stream, "reconfigure"):
        return
    changes: dict[str, object] = {"line_buffering": True}
    if getattr(stream, "errors", None) == "strict":
        changes["errors"] = "backslashreplace"
    stream.reconfigure(**changes)


class CommandParser(argparse.ArgumentParser):
    """Every command's argument parser (run_stage's, release's, fetch-model's, dvc-push's, drift's, setup's,
    metrics-event's): a wrong or missing argument is one line, ``<prog>: error: <what> (see <prog> --help)``, and
    exit 2. argparse's own printed its usage first: 11 lines for ``python -m pipeline.release --bogus``, 6 for drift
    and setup, the error last, under them."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


STDOUT_CLOSED_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a writer whose pipe's reader has gone


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (``| head -1`` after its line): the write end polls as an
    error. A BrokenPipeError of another pipe or socket (a server's, a child's) is that write's error, not this."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, ValueError, OSError):  # none, closed, not a file (a test's capture), or no poll
        return False
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))  # Linux: ERR; BSDs: HUP


def stdout_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is a write's BrokenPipeError because stdout's reader has gone: :func:`stopped_writing`'s case,
    not an error (a command that catches OSError for its one error line asks this first)."""
    return isinstance(exc, BrokenPipeError) and stdout_reader_gone()


def stopped_writing(name: str) -> int:
    """A command whose stdout's reader has gone (``python -m pipeline.train | head -1``) ends as a Unix filter does
    there, status 141, its ``finally`` blocks run (the print raised through them), with one line on stderr instead
    of a BrokenPipeError traceback (the summary's print) or ``train: error: Broken pipe`` and 1 (a print in the
    stage, taken for its error). Its stdout goes to /dev/null first: Python's flush of it at exit raised again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        print(f"{name}: stopped: stdout was closed (its reader ended, as `| head` does after its lines)",
              file=sys.stderr, flush=True)
    return STDOUT_CLOSED_STATUS


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
    parser = CommandParser(prog=f"python -m pipeline.{name}", description=description)
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def summarised() -> int:
        try:
            with artifact_bars_off(args.quiet):
                outcome = body(args)
        except Exception as exc:
            if interruption_behind(exc) is not None or stdout_closed(exc):
                raise  # run_interruptible's line and status, not an error's
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

    return run_interruptible(name, summarised)


def run_interruptible(name: str, command: Callable[[], int]) -> int:
    """Run ``command()`` (a command's whole main: it parses its own arguments, returns its exit status) so that
    Ctrl-C and SIGTERM end it as they end a stage: its ``finally`` blocks run, then the one line
    ``<name>: interrupted`` / ``terminated (SIGTERM)`` and 130 / 143 (:class:`StageSignals`). run_stage runs every
    stage through this; release, fetch-model and dvc-push, which are not stages, call it themselves. Before, they
    only handed the signals back to Python's defaults (``command_started``): Ctrl-C was a KeyboardInterrupt
    traceback (exit -2), SIGTERM an end with no word (-15) that left `dvc push` running, orphaned, with DVC's lock."""
    signals = StageSignals(name)
    try:
        with signals:  # Ctrl-C and SIGTERM go from the start guard's to this block's handlers, one step each
            command_started()
            with artifact_bars_off(quiet=False):  # MLflow's download bars only on a terminal: release's, fetch-model's
                return command()
    except (KeyboardInterrupt, Exception) as exc:
        interruption = interruption_behind(exc)
        if interruption is None:
            if stdout_closed(exc):
                return stopped_writing(name)
            if behind(exc, MemoryError) is not None:
                del exc  # its frames (the data that filled the memory) go before the line is put together
                print(out_of_memory_line(name), file=sys.stderr, flush=True)
                return 1
            raise
        return signals.reported(isinstance(interruption, Terminated), getattr(interruption, OUTCOME, None))
