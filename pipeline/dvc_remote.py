"""The DVC CLI as promote, fetch-model (``--from dvc``), prune and ``make dvc-push`` run it against the repository's
DVC remote, and a failure of it as one line that says what went wrong and what to do; ``remote_names``: the one
reading of `dvc remote list` (a config DVC cannot read is an error, never "no remote").

DVC's own error is several lines (its reason, then "Having any troubles? Hit us up at https://dvc.org/support"),
says "unexpected error" for a remote it cannot reach, a bucket that does not exist or credentials the store
refuses, and never says what to do: ``failure`` keeps its reason and adds the remedy.

    python -m pipeline.dvc_remote push    # make dvc-push: dvc push (none without a remote), or one line saying why not
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from pipeline import command_name
from pipeline.stage import CommandParser, output_any_terminal_can_take, run_interruptible

CREDENTIALS = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (an s3:// remote; CI: the secrets "
               "DVC_REMOTE_ACCESS_KEY_ID and DVC_REMOTE_SECRET_ACCESS_KEY)")
MISSING = ("Missing cache files", "Checkout failed", "missing-files")  # objects neither in the cache nor the remote
# (what DVC or the S3 client says, what to do): the first that matches the reason
REMEDIES = (
    (("Unable to locate credentials", "NoCredentialsError"), f"no credentials for the remote: set {CREDENTIALS}"),
    (("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "(403)"),
     f"the remote refused these credentials: check {CREDENTIALS} and that they may read and write the remote's "
     "bucket"),
    (("NoSuchBucket", "bucket does not exist"),
     "the remote's bucket does not exist: create it, or correct the remote's url (`dvc remote list`)"),
    (("Could not connect", "Connect timeout", "Connection refused", "Name or service not known",
      "EndpointConnectionError"),
     "the remote cannot be reached: check its endpointurl (`dvc config remote.<name>.endpointurl`) and that the "
     "store is up"),
    (MISSING,
     "the remote lacks these objects: push them again from a clone that has them (`dvc push`), or rebuild them "
     "(`dvc repro` recomputes what is missing)"),
    (("config file error",), "DVC cannot read its config: mend .dvc/config (or .dvc/config.local), e.g. the "
     "conflict markers a merge left, then run it again"),
    (("requires 'dvc-",), "install the remote's DVC plugin: `make clean && make venv VENV_EXTRAS=s3` (README, CI/CD)"),
)
DVC_SUPPORT_LINE = "Having any troubles?"
TRACEBACK_LINE = "Traceback (most recent call last)"  # DVC prints one after its ERROR line for a config it cannot parse


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run this environment's ``dvc`` (the one beside this interpreter, else PATH's) in ``root``, output captured."""
    beside = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(beside) if beside.exists() else "dvc", *args], cwd=root, capture_output=True,
                          text=True)


def reason(done: subprocess.CompletedProcess) -> str:
    """DVC's error on one line, without its support blurb or a Python traceback after it."""
    said = (done.stderr or "").strip() or (done.stdout or "")  # stdout: a summary ("7 files fetched"), unless alone
    lines = [line.strip() for line in said.splitlines()]
    cut = next((n for n, line in enumerate(lines) if n and line.startswith(TRACEBACK_LINE)), len(lines))
    lines = lines[:cut]  # the ERROR line said it; the traceback is DVC's internals
    kept = [line for line in lines if line and not line.startswith(DVC_SUPPORT_LINE)]
    return " ".join(kept) or f"exit status {done.returncode}"


def remedy(why: str, missing: str | None = None) -> str:
    """What to do about ``why``; ``missing``: the caller's own remedy for objects the remote lacks."""
    if missing and any(sign in why for sign in MISSING):
        return missing
    for signs, what_to_do in REMEDIES:
        if any(sign in why for sign in signs):
            return what_to_do
    return ("check the remote (`dvc remote list`), its endpointurl and credentials, then run it again (a push sends "
            "only what the remote lacks)")


def failure(command: str, done: subprocess.CompletedProcess, missing: str | None = None) -> str:
    """``command`` failed: DVC's reason and what to do, one line (``missing``: as for ``remedy``)."""
    why = reason(done)
    return f"`{command}` failed: {why} -> {remedy(why, missing)}"


def dvc_showing_progress(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc`` as ``dvc`` runs it, with DVC's progress bars passed through to this process's stderr as they come
    (a push of a large data set shows how far it is, not minutes of silence). DVC draws bars only on a terminal,
    so it is told to draw them on the pipe (``DVC_IGNORE_ISATTY``); each bar line (one with a carriage return)
    goes on to the terminal, every other line (DVC's log: its error) is kept for ``failure`` as ``stderr``."""
    beside = Path(sys.executable).with_name("dvc")
    command = [str(beside) if beside.exists() else "dvc", *args]
    env = {**os.environ, "DVC_IGNORE_ISATTY": "true"}
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        stdout: list[bytes] = []
        reader = threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True)
        reader.start()
        kept, line, in_bar = [], b"", False
        try:
            while chunk := os.read(process.stderr.fileno(), 65536):
                line += chunk
                while (end := min((i for i in (line.find(b"\r"), line.find(b"\n")) if i >= 0), default=-1)) >= 0:
                    piece, sep, line = line[:end], line[end:end + 1], line[end + 1:]
                    if sep == b"\r" or in_bar:  # a bar's frame, or the newline that ends a bar
                        sys.stderr.buffer.write(piece + sep)
                        sys.stderr.flush()
                        in_bar = sep == b"\r"
                    else:
                        kept.append(piece.decode("utf-8", "replace"))
        except BaseException:  # Ctrl-C, SIGTERM: DVC ends with this command, as subprocess.run's does; Popen's exit
            process.kill()  # alone waited for it to finish (SIGTERM) or left it running, orphaned (Ctrl-C)
            process.wait()
            raise
        kept.append(line.decode("utf-8", "replace"))
        reader.join()
    return subprocess.CompletedProcess(command, process.returncode, b"".join(stdout).decode("utf-8", "replace"),
                                       "\n".join(kept))


class RemoteListError(RuntimeError):
    """``dvc remote list`` failed (e.g. conflict markers a merge left in .dvc/config): DVC cannot say which remotes
    there are, which is not "no remote". ``reason``: DVC's, on one line; str(): ``failure``'s line."""

    def __init__(self, done: subprocess.CompletedProcess):
        self.reason = reason(done)
        super().__init__(failure("dvc remote list", done))


def remote_names(root: Path) -> list[str]:
    """The DVC remotes configured for the project at ``root``, in `dvc remote list`'s order ([]: none); the one
    place that command is run and read (promote, its re-promote check, prune, make dvc-push). RemoteListError when
    DVC cannot say."""
    done = dvc(root, "remote", "list")
    if done.returncode != 0:
        raise RemoteListError(done)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def push(root: Path) -> int:
    """``dvc push`` to the default remote (make dvc-push): its progress on a terminal, its summary, or one line
    saying why not; nothing to push without a remote."""
    try:
        if not remote_names(root):
            print("dvc-push: no DVC remote configured; nothing to push", flush=True)
            return 0
    except RemoteListError as exc:
        print(f"dvc-push: {exc}: nothing pushed", file=sys.stderr)
        return 1
    done = dvc_showing_progress(root, "push") if sys.stderr.isatty() else dvc(root, "push")
    if done.stdout.strip():
        print(done.stdout.rstrip(), flush=True)
    if done.returncode != 0:
        print(f"dvc-push: error: {failure('dvc push', done)} (rerun `make dvc-push` once fixed: it sends only what "
              "the remote lacks)", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Not a stage (no run_stage): Ctrl-C and SIGTERM end it as they end one (`dvc push` ended with it, not left
    running), then the one line and 130 / 143."""
    output_any_terminal_can_take()
    parser = CommandParser(
        prog="python -m pipeline.dvc_remote",
        description="make dvc-push: push the project's DVC-tracked data and models to its default DVC remote "
                    "(nothing to push without one); a failure is one line saying what went wrong and what to do.")
    parser.add_argument("command", choices=["push"], help="dvc push to the default remote (the only command)")
    parser.parse_args(argv)  # --help: the help and 0; anything else: usage, the error and 2
    return run_interruptible(command_name("dvc_remote"), lambda: push(Path.cwd()))


if __name__ == "__main__":
    sys.exit(main())
