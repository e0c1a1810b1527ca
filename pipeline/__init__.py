"""Shelfcast ML pipeline: one module per DVC stage plus the shared domain code.

``python -m pipeline.<command>`` (how dvc.yaml runs every stage) imports this package first, before the
command's module and its imports (numpy, numba, pandas, MLflow: 1-5 s before ``run_stage`` is reached). Ctrl-C
there was a KeyboardInterrupt traceback through the import machinery (exit -2), SIGTERM an end with no word
(-15). From here until ``run_stage`` takes over (:func:`command_started`), either ends the process at once with
the line ``run_stage`` prints and its status, 130 or 143: the command has done nothing yet that could unwind.
``run_stage`` takes both signals over from this guard in one step each (``handler_before_start``), before it calls
``command_started``: there is no moment with neither (SIGTERM's default action there killed the command without its
line, its cleanup or status 143). Imported any other way (the app, tests), this does nothing. Standard library
only: it runs before the command's first import.
"""

import atexit as _atexit
import os as _os
import signal as _signal
import sys as _sys


def interruption_line(command: str, terminated: bool, outcome: str | None = None) -> str:
    """What a command says when Ctrl-C (``terminated``: SIGTERM) ends it: the one wording, run_stage's too.
    ``outcome``: what the command did about it or left undone (release deploy: its candidate withdrawn), said
    instead of "rerun it"."""
    return (f"{command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; " + (
        outcome or "rerun it (an output is only ever replaced whole: none is half-written)"))


# the commands that name themselves in their lines as their make target does, not as their module
_NAMED_AS_TARGET = {"dvc_remote": "dvc-push", "registry_fetch": "fetch-model", "metrics_events": "metrics-event",
                    "setup_stack": "setup"}


def command_name(module: str) -> str:
    """What ``python -m pipeline.<module>`` calls itself in its lines: the module's name, or its make target's."""
    return _NAMED_AS_TARGET.get(module, module)


def _command_of(argv: list[str]) -> str:
    """``train`` of ``python [options] -m pipeline.train [args]`` (``fetch-model``: ``-m pipeline.registry_fetch``)."""
    for arg, after in zip(argv, [*argv[1:], ""]):
        if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            return command_name((after if arg == "-m" else arg[2:]).rpartition(".")[2] or "pipeline")
    return "pipeline"


_before_start: dict = {}  # signal number -> its handler before the guard (restored by command_started)
# sys.argv[0] is "-m" only while `python -m` locates its module, which imports that module's packages alone
_AS_COMMAND = _sys.argv[:1] == ["-m"]


def running_as_command() -> bool:
    """Whether this process is a ``python -m pipeline.<command>``, which ends when its command does (run in-process,
    by a test or the app, a command's end is not the process's)."""
    return _AS_COMMAND


def end_at_once(line: str | None, status: int):
    """Write ``line`` (None: nothing) to stderr and end the process now with ``status``, no cleanup: for a signal
    handler where nothing is left to unwind. Not print: stderr's buffer may be mid-write."""
    if line is not None:
        _os.write(2, (line + "\n").encode(errors="backslashreplace"))
    _os._exit(status)


def _interrupted_while_starting(signum, frame):
    """The line, then the process ends at once: nothing has started to unwind. An exception would not do: raised
    where C code imports (numpy's extension importing datetime), it became that import's ImportError, a traceback
    and exit 1."""
    end_at_once(interruption_line(_command_of(getattr(_sys, "orig_argv", [])), signum == _signal.SIGTERM),
                128 + signum)


def handler_before_start(signum: int, handler):
    """``handler`` (a ``signal.getsignal``), or where it is the start guard, the handler the guard stands in for: what
    a command that replaces the guard's handler restores when it is done."""
    return _before_start.get(signum, handler) if handler is _interrupted_while_starting else handler


def command_started() -> None:
    """The command's main has started (``run_stage`` calls this first): Ctrl-C and SIGTERM are its own again."""
    while _before_start:
        signum, handler = _before_start.popitem()
        if _signal.getsignal(signum) is _interrupted_while_starting:
            _signal.signal(signum, handler)


def _status_decided() -> None:
    """Ignore Ctrl-C and SIGTERM from the last atexit callback on: the command has ended and its status is decided.
    Right after the atexit callbacks Python hands every signal it handles back to the default action and tears down
    its modules (most of a second after train): a Ctrl-C there killed the process, -2 instead of the 130 its
    'interrupted' line had said (9 of 10 second Ctrl-C's 0-0.2 s after the line), or instead of 0 after a train that
    had written its candidate, which dvc then took for failed. One set outside Python (``getsignal``: None) is left."""
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(signum) is not None:
            _signal.signal(signum, _signal.SIG_IGN)


_SETTING_ERROR = "engine.config.EnvironmentSettingError"


def _setting_error_in_one_line(kind, error, trace) -> None:
    """``sys.excepthook`` of a command: an environment setting the engine cannot use, met while the command's
    imports run (``NUMBA_NUM_THREADS=0``), is the command's one line naming the variable, not a 10-line traceback
    through the import machinery ending in that line. Known by name: the module that raised it failed to import."""
    if f"{kind.__module__}.{kind.__qualname__}" == _SETTING_ERROR:
        _sys.stderr.write(f"{_command_of(getattr(_sys, 'orig_argv', []))}: {error}\n")
    else:
        _sys.__excepthook__(kind, error, trace)


if _AS_COMMAND:
    _sys.excepthook = _setting_error_in_one_line
    _atexit.register(_status_decided)  # registered first, called last
    for _signum, _default in ((_signal.SIGINT, _signal.default_int_handler), (_signal.SIGTERM, _signal.SIG_DFL)):
        if _signal.getsignal(_signum) is _default:  # one ignored (a background job's SIGINT) stays ignored
            _before_start[_signum] = _default
            _signal.signal(_signum, _interrupted_while_starting)
