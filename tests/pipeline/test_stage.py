"""run_stage turns what a user can fix into one line: here, the operating system's refusals (disk full, read-only)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

import pytest

from pipeline.atomic import atomic_directory, atomic_file
from pipeline.stage import Terminated, os_error_text, run_interruptible, run_stage
from tests.pipeline.conftest import read_terminal


def stage_failing_with(error: BaseException):
    def body(args):
        raise error
    return body


def test_a_refused_write_is_one_line_naming_the_output_not_its_staging_copy(capsys):
    refused = OSError(errno.ENOSPC, "No space left on device", "data/.split.0pes5270.tmp")
    assert run_stage("split", stage_failing_with(refused), []) == 1
    err = capsys.readouterr().err
    assert err == "split: error: data/split: No space left on device (while writing data/.split.0pes5270.tmp)\n"


def test_a_refused_write_inside_a_staged_folder_names_the_output_file():
    """download's full disk said `data/.raw.24134-d63bfmp5.tmp/train.csv.gz`: a name the user never sees."""
    refused = OSError(errno.ENOSPC, "No space left on device", "data/.raw.24134-d63bfmp5.tmp/train.csv.gz")
    assert os_error_text(refused) == ("data/raw/train.csv.gz: No space left on device "
                                      "(while writing data/.raw.24134-d63bfmp5.tmp/train.csv.gz)")
    deeper = OSError(errno.ENOSPC, "No space left on device", "/p/data/.split.7-ab.tmp/parts/3.arrow")
    assert os_error_text(deeper).startswith("/p/data/split/parts/3.arrow: No space left on device")
    plain = OSError(errno.EACCES, "Permission denied", "data/raw/train.csv.gz")
    assert os_error_text(plain) == "data/raw/train.csv.gz: Permission denied"


def test_a_copy_that_found_no_room_names_its_destination_not_the_staged_file_it_read():
    """shutil's copy on a full disk names its source, then its destination. train logging its staged bundle to a
    local MLflow artifact store that filled said `models/candidate/training_stats.json: No space left on device`: the
    file it was reading, under a candidate not yet in place, as if models/ were the disk to free."""
    staged = "/p/models/.candidate.18031-wrfwxhys.tmp/training_stats.json"
    artifact = "/p/mlartifacts/0f3a/artifacts/bundle/training_stats.json"
    for reason_errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        full = OSError(reason_errno, os.strerror(reason_errno), staged, None, artifact)
        assert os_error_text(full) == (f"{artifact}: {os.strerror(reason_errno)} (while writing {staged} -> "
                                       f"{artifact})")
    into_staging = OSError(errno.ENOSPC, "No space left on device", "/p/models/candidate/history.npz", None,
                           "/p/models/.production.7-ab.tmp/history.npz")
    assert os_error_text(into_staging).startswith("/p/models/production/history.npz: No space left on device")
    renamed = OSError(errno.EACCES, "Permission denied", "/p/models/.candidate.7-ab.tmp", None, "/p/models/candidate")
    assert os_error_text(renamed).startswith("/p/models/candidate: Permission denied (while writing")


@pytest.mark.parametrize("writer", [atomic_directory, atomic_file])
def test_a_library_error_without_a_file_names_the_output_being_written(writer, tmp_path, capsys):
    """Arrow's write error on a full disk names no file ('Error writing bytes to file'): the output is named."""
    target = tmp_path / "data" / "prepared"

    def body(args):
        with writer(target):
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    assert run_stage("prepare", body, []) == 1
    assert capsys.readouterr().err == (f"prepare: error: {target}: Error writing bytes to file. Detail: [errno 28] "
                                       "No space left on device\n")
    assert sorted(p.name for p in target.parent.iterdir()) == []  # nothing half-written left beside it


def _cleanup_failing_after(interruption: BaseException):
    def body(args):
        try:
            raise interruption
        finally:  # a cleanup that fails while the interruption unwinds (a half-imported library, say)
            raise ValueError("cleanup failed")
    return body


@pytest.mark.parametrize("interruption, status, words", [
    (KeyboardInterrupt(), 130, "interrupted"), (Terminated(), 143, "terminated (SIGTERM)")])
@pytest.mark.parametrize("errors", [(), (ValueError,)], ids=["a bug's error", "an error of the stage's"])
def test_an_error_raised_while_an_interruption_unwinds_is_the_interruption(interruption, status, words, errors,
                                                                          capsys):
    """A ``finally`` that failed while Ctrl-C or SIGTERM unwound was a traceback and exit 1 (or ``error: cleanup
    failed``, exit 1, when the stage names the error): the stage was interrupted, and says so in one line."""
    assert run_stage("demo", _cleanup_failing_after(interruption), [], errors=errors) == status
    assert capsys.readouterr().err == (f"demo: {words}; rerun it (an output is only ever replaced whole: none is "
                                       "half-written)\n")


def test_an_error_of_a_stage_that_caught_nothing_is_still_a_traceback():
    """Only an interruption's own chain is read as one: a bug stays a bug."""
    with pytest.raises(RuntimeError, match="a bug"):
        run_stage("demo", stage_failing_with(RuntimeError("a bug")), [])


def test_an_output_folder_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "data").write_text("not a folder")

    def body(args):
        with atomic_directory(tmp_path / "data" / "split"):
            pass

    assert run_stage("split", body, []) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"split: error: {tmp_path / 'data'}") and err.count("\n") == 1 and "Traceback" not in err


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path):
    """A SIGKILL mid-stage left a full-size `.prepared.<random>.tmp` copy that no rerun removed (GBs at
    Favorita's scale); the next write of the same output removes those whose process is gone."""
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = [data / ".prepared.x7k2m9qa.tmp", data / f".prepared.{dead}-abc123.tmp", data / f".prepared.old-{dead}"]
    for folder in left:
        (folder / "part").mkdir(parents=True)
    kept = [data / f".prepared.{__import__('os').getpid()}-live12.tmp",  # a live writer's (this process)
            data / ".prepared.notes", data / ".prepared-other.x.tmp", data / "prepared.txt"]
    for path in kept:
        path.write_text("x")
    with atomic_directory(data / "prepared") as staging:
        (staging / "rows.parquet").write_text("new")
    assert sorted(p.name for p in data.iterdir()) == sorted([p.name for p in kept] + ["prepared"])
    (data / f".metrics.json.{dead}-q1w2e3.tmp").write_text("{")
    with atomic_file(data / "metrics.json") as tmp:
        tmp.write_text("{}")
    assert not (data / f".metrics.json.{dead}-q1w2e3.tmp").exists() and (data / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("quiet, terminal", [(True, True), (False, True), (False, False)])
def test_quiet_also_silences_mlflows_artifact_download_bars(quiet, terminal, tmp_path, monkeypatch, capsys):
    """Found by a probe: `promote --quiet` fetching a registry version printed MLflow's 'Downloading artifacts'
    bars. A real download from a sqlite store; without --quiet the bars stay on a terminal (they are progress), and
    into a CI log, where no bar is drawn (stage.bars_drawn), MLflow's are off too."""
    import sys

    from pipeline import tracking

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)  # capsys's stream, as a terminal or a log

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "unset")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")  # restored to its state before the test afterwards
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for k in range(3):
        (bundle / f"part{k}.txt").write_text("x" * 1000)
    client = tracking.client(tmp_path)
    run = client.create_run(client.create_experiment("bars"))
    client.log_artifacts(run.info.run_id, str(bundle), "bundle")
    capsys.readouterr()

    def fetch(args):
        tracking.client(tmp_path).download_artifacts(run.info.run_id, "bundle", str(tmp_path / "fetched"))
        return "fetched"

    (tmp_path / "fetched").mkdir()
    assert run_stage("promote", fetch, ["--quiet"] if quiet else []) == 0
    err = capsys.readouterr().err
    assert ("Downloading artifacts" in err) is (terminal and not quiet), err
    if not quiet:  # a command that is not a stage (release sync, fetch-model): run_interruptible, the same rule
        shutil.rmtree(tmp_path / "fetched" / "bundle")
        assert run_interruptible("release", lambda: 0 if fetch(None) else 1) == 0
        err = capsys.readouterr().err
        assert ("Downloading artifacts" in err) is terminal, err  # into a log: 744 bytes, 9 frames of release sync
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # the stage left the environment as it found it
    assert sorted(p.name for p in (tmp_path / "fetched" / "bundle").iterdir()) == [f"part{k}.txt" for k in range(3)]


@pytest.mark.parametrize("stage", ["source", "promote"])
def test_a_stage_run_outside_the_project_says_where_it_looked_and_leaves_that_folder_alone(stage, tmp_path):
    """`python -m pipeline.<stage>` from another folder said only 'params.yaml: params file not found' (which folder,
    and what to do?), and promote made models/.writer.lock there first."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-m", f"pipeline.{stage}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (f"{stage}: error: params.yaml: params file not found in {tmp_path} (the stages read the "
                           "project's params.yaml: run them in the project's root folder, or pass --root PROJECT)\n")
    assert list(tmp_path.iterdir()) == []


def _run_ascii_only(args: list[str]):
    """``python args`` with an ASCII-only stdout (as under a locale that is not UTF-8, e.g. LC_ALL=tr_TR's
    ISO-8859-9, or PYTHONIOENCODING=ascii)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONIOENCODING="ascii")
    return subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("command", ["pipeline.promote", "pipeline.release"])
def test_help_on_a_terminal_that_is_not_utf8_is_the_help_not_a_traceback(command):
    """`--help` of promote (an em dash) and release (store×item) was a UnicodeEncodeError traceback."""
    done = _run_ascii_only(["-m", command, "--help"])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(f"usage: python -m {command}".encode()) and b"Traceback" not in done.stderr


def test_a_summary_beyond_ascii_on_a_terminal_that_is_not_utf8_is_written_escaped():
    code = ("import sys; from pipeline.stage import run_stage; "
            "sys.exit(run_stage('demo', lambda args: 'store\\u00d7item \\u2014 done', ['--quiet']))")
    done = _run_ascii_only(["-c", code])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"demo: store\\xd7item \\u2014 done in ")


TERMINATED_BODY = """
import os, signal, sys, time
from pathlib import Path
from pipeline.stage import run_stage

def body(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # docker stop, systemd, a cancelled CI job, kill PID
        time.sleep(30)
    finally:
        Path("cleaned-up").write_text("yes")  # what a stage's cleanup (an MLflow run marked FAILED) stands for
    return "not reached"

sys.exit(run_stage("demo", body, ["--quiet"]))
"""


def test_sigterm_ends_a_stage_as_ctrl_c_does_one_line_its_cleanup_run_and_status_143(tmp_path):
    """SIGTERM killed a stage outright: no word on stderr (exit -15), no ``finally`` run (train's MLflow run stayed
    RUNNING until the next stage's run marked it KILLED). It now unwinds as Ctrl-C's KeyboardInterrupt does."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", TERMINATED_BODY], cwd=tmp_path, env=dict(os.environ,
                          PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (143, "demo: terminated (SIGTERM); rerun it (an output is only ever "
                                                   "replaced whole: none is half-written)\n")
    assert (tmp_path / "cleaned-up").read_text() == "yes"


SWAP_INTERRUPTED_BODY = """
import os, signal, sys
from pathlib import Path
from pipeline.atomic import atomic_directory
from pipeline.stage import run_stage

SIGNAL = getattr(signal, sys.argv[1])
target = Path("out")

def between_the_renames(event, args):
    # the directory swap's second rename (staging -> target): the old output has just been moved aside
    if event == "os.rename" and str(args[1]) == str(target) and ".tmp" in str(args[0]):
        os.kill(os.getpid(), SIGNAL)  # docker stop, or Ctrl-C, at the worst moment

def body(args):
    with atomic_directory(target) as staging:
        (staging / "model").write_text("new")
    return "not reached"

sys.addaudithook(between_the_renames)
sys.exit(run_stage("demo", body, ["--quiet"]))
"""


@pytest.mark.parametrize("signal_name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_between_a_directory_swaps_renames_leaves_the_new_output_in_place(signal_name, status, tmp_path):
    """A directory is swapped in by two renames (the old one aside, the new one in). SIGTERM (now an exception, as
    Ctrl-C's) raised between them unwound through atomic_directory, which deleted the new copy: the output was gone,
    the old one left only as ``.out.old-<pid>`` for the next write to delete. The swap now finishes first."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model").write_text("old")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SWAP_INTERRUPTED_BODY, signal_name], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    assert (tmp_path / "out" / "model").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging copy, no old one aside


def _interrupted_start(stage: str, root, delay: float, signum: int):
    """``python -m pipeline.<stage> --root root --quiet`` sent ``signum`` ``delay`` s after it started."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-m", f"pipeline.{stage}", "--root", str(root), "--quiet"],
                               cwd=root, env=dict(os.environ, PYTHONPATH=str(repo)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    _wait_until_numpy_loads(process)  # the interpreter's own start is done: the project's code runs
    time.sleep(max(0.0, delay - (time.monotonic() - started)))
    assert process.poll() is None, f"pipeline.{stage} ended before {delay} s: {process.communicate()}"
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert signum in (signal.SIGINT, signal.SIGTERM)
    return process.returncode, err


def _wait_until_numpy_loads(process) -> None:
    """Until numpy's core library is mapped into ``process`` (its command's first imports; /proc/<pid>/maps).

    A signal before that can meet Python's own start-up, which no project code has reached: on a loaded machine
    (2 cores, 5 test runs) `python -c pass` took up to 0.17 s, site's import of the editable install's finder
    alone 40 ms, and Ctrl-C there is "Fatal Python error: init_import_site" (exit 1) or a .pth line reported and
    skipped. The delays count from the process's start all the same; one shorter than this wait is sent here."""
    import time
    from pathlib import Path

    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if "_multiarray_umath" in maps.read_text():
                return
        except OSError:
            return  # no /proc: the delays alone
        time.sleep(0.002)


INTERRUPTED_LINE = "{}: interrupted; rerun it (an output is only ever replaced whole: none is half-written)\n"
TERMINATED_LINE = "{}: terminated (SIGTERM); rerun it (an output is only ever replaced whole: none is half-written)\n"


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.2, 0.3])
def test_ctrl_c_while_a_stage_still_imports_is_its_one_line_and_status_130(delay, tmp_path):
    """Ctrl-C in the first second of `python -m pipeline.train` (numpy, numba, pandas, MLflow importing: 1-2 s
    before run_stage is reached; no params.yaml here, so the stage would end at once once it is) printed a
    KeyboardInterrupt traceback through the import machinery, and SIGTERM then ended it with no word (-15)."""
    import signal

    assert _interrupted_start("train", tmp_path, delay, signal.SIGINT) == (130, INTERRUPTED_LINE.format("train"))
    assert _interrupted_start("train", tmp_path, delay, signal.SIGTERM) == (143, TERMINATED_LINE.format("train"))


def test_ctrl_c_at_any_moment_of_a_stage_is_one_line_and_status_130(tmp_path):
    """download (synthetic data: a few seconds of work after its imports) interrupted from its first 0.05 s to
    its body: the same line and status whether its imports or run_stage met the Ctrl-C."""
    import shutil
    import signal
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    for delay in (0.05, 0.15, 0.4, 0.8, 1.5):
        assert _interrupted_start("download", tmp_path, delay, signal.SIGINT) == (
            130, INTERRUPTED_LINE.format("download")), delay


def test_every_pipeline_command_takes_its_signals_back_from_the_start_guard() -> None:
    """pipeline/__init__.py ends a `python -m pipeline.<command>` at once on Ctrl-C until the command's main calls
    ``command_started()``, which run_stage and run_interruptible do first. A command that never did would be ended
    mid-work by a Ctrl-C, its ``finally`` blocks skipped; one that called it alone (release, fetch-model and
    dvc-push did) was a KeyboardInterrupt traceback on Ctrl-C and an end with no word on SIGTERM: every module
    runnable as a command must go through one of the two."""
    from pathlib import Path

    import pipeline

    package = Path(pipeline.__file__).parent
    commands = [path for path in sorted(package.rglob("*.py")) if "__main__" in path.read_text(encoding="utf-8")]
    assert len(commands) >= 10, commands  # the stages, promote, release, prune, sweep ...
    silent = [str(path.relative_to(package)) for path in commands
              if not any(call in path.read_text(encoding="utf-8") for call in ("run_stage(", "run_interruptible("))]
    assert not silent, f"commands run through neither run_stage nor run_interruptible: {silent}"


SIGNAL_AT_A_LINE = '''
import os, signal, sys
from pathlib import Path

AT, counted, tracing = int(os.environ["SIGNAL_AT_LINE"]), [0], [False]
OURS = (os.path.join("pipeline", "stage.py"), os.path.join("pipeline", "__init__.py"))


def lines(frame, event, arg):
    if event == "line" and tracing[0]:
        counted[0] += 1
        if counted[0] == AT:
            os.kill(os.getpid(), signal.SIGTERM)
    return lines


def calls(frame, event, arg):
    code = frame.f_code
    if code.co_name == "_main" and code.co_filename.endswith(os.path.join("pipeline", "source.py")):
        Path(os.environ["BODY_REACHED"]).write_text(str(counted[0]))  # the stage's body: every moment before is done
        sys.settrace(None)
        return None
    if code.co_name == "run_stage" and code.co_filename.endswith(OURS[0]):
        tracing[0] = True
    return lines if code.co_filename.endswith(OURS) else None


sys.settrace(calls)
'''


@pytest.mark.slow  # 44 runs of `python -m pipeline.source`: 21 s
def test_sigterm_at_any_line_from_run_stage_to_its_body_is_the_line_and_status_143(tmp_path):
    """run_stage handed SIGTERM back from pipeline/__init__.py's start guard to its default (command_started) and
    only then made it an exception (sigterm_as_interrupt): SIGTERM in between killed `python -m pipeline.<stage>`
    with no line (exit -15) and none of the promises (cleanup, status 143). Sent before each line run_stage and its
    helpers run on the way to the stage's body, in turn, it is now the line and 143 at every one."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    hook, reached = tmp_path / "hook", tmp_path / "body-reached"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGNAL_AT_A_LINE)
    repo = Path(__file__).resolve().parents[2]
    outcomes = {}
    for line in range(1, 200):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(repo)]), SIGNAL_AT_LINE=str(line),
                   BODY_REACHED=str(reached))
        done = subprocess.run([sys.executable, "-m", "pipeline.source", "--root", str(tmp_path), "--quiet"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        if reached.exists():
            break
        outcomes[line] = (done.returncode, done.stderr)
    assert reached.exists(), "the stage's body was never reached"
    assert len(outcomes) >= 10, outcomes  # run_stage's own lines, command_started's and the signals' hand-over
    wrong = {line: outcome for line, outcome in outcomes.items()
             if outcome != (128 + signal.SIGTERM, TERMINATED_LINE.format("source"))}
    assert not wrong, wrong


SECOND_SIGNAL_WHILE_REPORTING = '''
import os, signal, sys

SECOND = getattr(signal, os.environ["SECOND_SIGNAL"])


class ReportWatched:
    """stderr, which sends the second signal as the interruption's line is being written to it."""

    def __init__(self, stream):
        self.stream, self.sent = stream, False

    def write(self, text):
        if "interrupted" in text and not self.sent:
            self.sent = True
            os.kill(os.getpid(), SECOND)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def calls(frame, event, arg):
    code = frame.f_code
    if code.co_name == "_main" and code.co_filename.endswith(os.path.join("pipeline", "source.py")):
        sys.settrace(None)
        sys.stderr = ReportWatched(sys.stderr)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, as the stage's body starts
    return None


sys.settrace(calls)
'''


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_signal_while_the_interruption_line_is_written_is_that_line_once_and_status_130(second, tmp_path):
    """A second Ctrl-C as run_stage printed the first's line raised KeyboardInterrupt out of run_stage: a traceback
    "During handling of the above exception" and no line (a second SIGTERM: killed, no line, -15). The line is now
    written whole, once, and the process ends with the first's status."""
    import subprocess
    import sys
    from pathlib import Path

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SECOND_SIGNAL_WHILE_REPORTING)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(repo)]), SECOND_SIGNAL=second)
    done = subprocess.run([sys.executable, "-m", "pipeline.source", "--root", str(tmp_path), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", INTERRUPTED_LINE.format("source"))


LOST_IN_A_FINALISER_BODY = """
import gc, os, signal, sys, time, weakref
from pathlib import Path
from pipeline.stage import run_stage

SIGNAL = getattr(signal, sys.argv[1])


class Session:
    pass


def finaliser(ref):  # as SQLAlchemy's weakref callbacks, which MLflow's store leaves to the garbage collector
    os.kill(os.getpid(), SIGNAL)  # Ctrl-C or SIGTERM arrives while it runs: its handler raises here


def body(args):
    try:
        kept = [weakref.ref(Session(), finaliser)]  # the object is gone at once: the callback runs now
        gc.collect()
        deadline = time.monotonic() + 10  # the stage's work goes on: before, to its end
        while time.monotonic() < deadline:
            sum(range(1000))
    finally:
        Path("cleaned-up").write_text("yes")
    return f"not reached {len(kept)}"

sys.exit(run_stage("demo", body, ["--quiet"]))
"""


@pytest.mark.parametrize("signal_name, status, words", [("SIGINT", 130, "interrupted"),
                                                        ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_a_signal_whose_handler_runs_in_a_finaliser_still_ends_the_stage(signal_name, status, words, tmp_path):
    """Python ignores an exception raised in a weakref callback or ``__del__``: a Ctrl-C that arrived while the
    garbage collector ran one (train: SQLAlchemy's, as it opened its MLflow run) printed "Exception ignored",
    and the stage trained on to its end, exit 0. Now it is the stage's one line, its cleanup run, and its status."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", LOST_IN_A_FINALISER_BODY, signal_name], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (status, f"demo: {words}; rerun it (an output is only ever replaced "
                                                      "whole: none is half-written)\n")
    assert (tmp_path / "cleaned-up").read_text() == "yes"


def _download_with_stderr_on(stderr_end, root):
    """``python -m pipeline.download`` (synthetic, tiny) in ``root`` with its stderr on ``stderr_end``."""
    import subprocess
    import sys

    from .conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SHELFCAST_DATA_SOURCE", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline.download"], cwd=root, stdout=subprocess.PIPE,
                            stderr=stderr_end, env=env)


def test_progress_bars_are_drawn_on_a_terminal_and_written_as_lines_into_a_ci_log(tmp_path):
    """Found by a probe: every stage drew its tqdm bars wherever stderr went, so `dvc repro > ci.log 2>&1` (a CI
    job's log) held carriage-return frames, 10 a second on one endless line, with no --quiet given (which also drops
    the step lines). A bar is drawn only where stderr is a terminal (stage.bars_drawn); into a log its state is a
    line of its own as it starts, every LOG_PROGRESS_EVERY_S and as it ends (stage.bar_options)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    import yaml

    from .conftest import tiny_params

    for name in ("log", "terminal"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))

    with _download_with_stderr_on(subprocess.PIPE, tmp_path / "log") as logged:
        out, err = logged.communicate(timeout=120)
    assert logged.returncode == 0 and out.decode().startswith("download: synthetic: "), out + err
    lines = err.decode().splitlines()
    assert b"\r" not in err and lines and all(line.startswith("synthetic: months: ") for line in lines), err
    assert " 0/" in lines[0] and "100%" in lines[-1], err  # its start and its end, each a line

    terminal, their_end = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's 100 columns
    with _download_with_stderr_on(their_end, tmp_path / "terminal") as shown_on:
        os.close(their_end)
        shown = read_terminal(terminal)
        out = shown_on.stdout.read()
    os.close(terminal)
    assert shown_on.wait(timeout=120) == 0 and out.decode().startswith("download: synthetic: "), out
    assert b"synthetic: months" in shown and b"\r" in shown, shown  # a person at a terminal sees the bar


@contextlib.contextmanager
def stdout_without_a_reader(monkeypatch):
    """sys.stdout as a pipe whose reader has gone (``| head -1`` after its line): a write raises BrokenPipeError."""
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def test_a_stage_whose_stdout_reader_has_gone_stops_in_one_line_with_141(tmp_path):
    """Found by a probe: `python -m pipeline.split | head -1`-like pipes whose reader ended before the summary line
    was a BrokenPipeError traceback, exit 1; `python -m pipeline.train | head -1` was `train: error: Broken pipe`,
    exit 1, as if training had failed. Now the Unix filter's status, 141, and one line on stderr saying why."""
    import subprocess
    import sys

    import yaml

    from .conftest import REPO, tiny_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SHELFCAST_DATA_SOURCE", None)
    done = subprocess.run([sys.executable, "-m", "pipeline.source"], cwd=tmp_path, stdout=write_end,
                          stderr=subprocess.PIPE, env=env, timeout=120, text=True)
    os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ("source: stopped: stdout was closed (its reader ended, as `| head` does after its "
                           "lines)\n"), done.stderr


def test_a_print_in_a_stage_to_a_stdout_without_reader_unwinds_the_stage_and_is_no_error(monkeypatch, capsys):
    cleaned = []

    def body(args):
        try:
            print("step 1", flush=True)
        finally:
            cleaned.append(True)  # the stage's cleanup (train's MLflow run marked FAILED) ran

    with stdout_without_a_reader(monkeypatch):
        assert run_stage("train", body, []) == 141
    assert cleaned == [True]
    assert capsys.readouterr().err.startswith("train: stopped: stdout was closed")


def test_a_broken_pipe_of_another_channel_is_still_the_stages_error(capsys):
    """Only stdout's reader gone is a stop: a server's or a child's closed pipe stays the stage's error."""
    refused = BrokenPipeError(32, "Broken pipe")
    assert run_stage("promote", stage_failing_with(refused), []) == 1
    assert capsys.readouterr().err == "promote: error: Broken pipe\n"


def test_a_commands_lines_reach_a_pipe_as_they_are_printed():
    """Found by a probe: without PYTHONUNBUFFERED (a CI runner's `make deploy`), Python held stdout in its buffer
    until the process ended: every line of a 16 s `release deploy` (shadow served at 3 s, canary at 8 s, ...) reached
    the log at 16.5 s, after its stderr lines. output_any_terminal_can_take, first in every command's main, makes
    stdout write each line as it is printed: here one line is read from the pipe while the command still waits."""
    import select
    import subprocess
    import sys

    from .conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONUNBUFFERED", None)
    script = ("from pipeline.stage import output_any_terminal_can_take\noutput_any_terminal_can_take()\n"
              "print('deploy: alias canary -> version 3')\nimport sys\nsys.stdin.read()  # a canary observed\n")
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) \
            as command:
        try:
            readable, _, _ = select.select([command.stdout], [], [], 20)
            line = os.read(command.stdout.fileno(), 4096) if readable else b""
        finally:
            command.stdin.close()
        assert command.wait(timeout=60) == 0
    assert line == b"deploy: alias canary -> version 3\n"


@pytest.mark.parametrize("command", ["pipeline.train", "pipeline.release", "pipeline.registry_fetch",
                                     "pipeline.dvc_remote", "monitoring.drift", "monitoring.setup_stack",
                                     "monitoring.metrics_events"])
def test_a_wrong_argument_is_one_line_and_exit_2(command, capsys):
    """Found by a probe: argparse printed a command's whole usage before its error: 11 lines for
    `python -m pipeline.release --bogus`, 6 for drift and setup, 4 for fetch-model. Every command's parser is
    stage.CommandParser: one line naming the argument and where the options are listed, exit 2."""
    import importlib

    main = importlib.import_module(command).main
    with pytest.raises(SystemExit) as refused:
        if command == "pipeline.train":
            run_stage("train", lambda args: None, ["--bogus"])
        else:
            main(["push", "--bogus"] if command == "pipeline.dvc_remote" else ["status", "--bogus"]
                 if command == "pipeline.release" else ["--bogus"])
    out, err = capsys.readouterr()
    assert refused.value.code == 2 and out == "", err
    assert err == (f"python -m {command}: error: unrecognized arguments: --bogus (see python -m {command} "
                   "--help)\n"), err


def test_a_long_bar_into_a_log_is_a_line_every_log_progress_interval(monkeypatch, capsys):
    """Into a log (capsys's stream is no terminal) a bar's state is a line as it starts, every LOG_PROGRESS_EVERY_S
    (30 s; 0.2 s here) and as it ends: a 10-minute prepare is not 10 minutes of silence, nor 6,000 frames."""
    import time

    from tqdm import tqdm

    from pipeline import stage

    monkeypatch.setattr(stage, "LOG_PROGRESS_EVERY_S", 0.2)
    for _ in tqdm(range(4), desc="prepare: stores", unit="store", **stage.bar_options(True)):
        time.sleep(0.3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 4 and all(line.startswith("prepare: stores: ") for line in lines), err
    assert " 0/4 " in lines[0] and lines[-1].startswith("prepare: stores: 100%|##########| 4/4 "), err
    assert stage.bar_options(False) == {"disable": True}


def _out_of_memory_deep_in_a_library():
    """As train met it under `ulimit -v` 2 GB: a kernel's compile found no memory, and the engine raised its own
    error from that MemoryError."""
    from engine.errors import InvalidArgumentError

    def body(args):
        try:
            raise MemoryError
        except MemoryError as exc:
            raise InvalidArgumentError("Mul op 'dense_0/kernel/Mul' failed: error return without exception set") \
                from exc
    return body


def test_a_memory_error_behind_another_is_one_line_not_a_traceback(capsys):
    import resource

    assert run_stage("train", _out_of_memory_deep_in_a_library(), []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train: error: out of memory: "), err
    assert "none is half-written" in err
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        assert "no memory limit is set on this process" in err


def test_the_memory_limit_a_command_ran_under_is_named(tmp_path):
    """`ulimit -v` (RLIMIT_AS) as a user sets it; a large one, so that only the line, not the test, runs out."""
    import subprocess
    import sys

    from .conftest import REPO

    script = ("import sys\nfrom pipeline.stage import run_stage\nfrom tests.pipeline.test_stage import "
              "_out_of_memory_deep_in_a_library\n"
              "sys.exit(run_stage('train', _out_of_memory_deep_in_a_library(), []))\n")
    limit = 64 * 2 ** 30

    def cap():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("train: error: out of memory: its address space is limited to 65,536 MiB (RLIMIT_AS: "
                           "`ulimit -v`): raise or remove that limit, then rerun it (an output is only ever replaced "
                           "whole: none is half-written)\n")
