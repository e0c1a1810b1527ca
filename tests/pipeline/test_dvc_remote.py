"""pipeline/dvc_remote.py: DVC's errors against an S3 remote, as dvc 3.67.1 + dvc-s3 3.3.0 printed them against a
real S3 API (moto in server mode), each reduced to one line with what to do."""

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import dvc_remote
from tests.pipeline.conftest import read_terminal

REPO = Path(__file__).resolve().parents[2]
BLURB = "\n\nHaving any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
SEEN = {
    "unreachable": ('ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:6199/'
                    'shelfcast-dvc/store/files/md5/d1/3ea9128c94e1b82d748343be9b7306.dir"', "cannot be reached"),
    "wrong credentials": ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject "
                          "operation: Forbidden", "refused these credentials"),
    "no credentials": ("ERROR: unexpected error - Unable to locate credentials", "no credentials for the remote"),
    "no bucket": ("ERROR: unexpected error - The specified bucket does not exist: An error occurred (NoSuchBucket) "
                  "when calling the ListObjectsV2 operation: The specified bucket does not exist",
                  "bucket does not exist: create it"),
    "object deleted": ("WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache "
                       "files:\nmd5: 19a754eaa470242bd1c89ac43aaa4b20.dir\nERROR: failed to pull data from the cloud - "
                       "Checkout failed for following targets:\nmodels/candidate\nIs your cache up to date?\n"
                       "<https://error.dvc.org/missing-files>", "the remote lacks these objects"),
    "no plugin": ("ERROR: unexpected error - s3 is supported, but requires 'dvc-s3' to be installed: No module "
                  "named 'dvc_s3'", "VENV_EXTRAS=s3"),
}


@pytest.mark.parametrize("case", sorted(SEEN))
def test_each_remote_failure_is_one_line_with_dvcs_reason_and_what_to_do(case):
    stderr, remedy = SEEN[case]
    line = dvc_remote.failure("dvc pull", subprocess.CompletedProcess(["dvc"], 255, "", stderr + BLURB))
    assert "\n" not in line and "Having any troubles" not in line
    assert line.startswith("`dvc pull` failed: ERROR: ") or line.startswith("`dvc pull` failed: WARNING: ")
    assert remedy in line.split(" -> ", 1)[1], line
    if case == "object deleted":  # what is missing is named
        assert "19a754eaa470242bd1c89ac43aaa4b20.dir" in line and "models/candidate" in line


def test_a_reason_nothing_matches_still_says_what_to_do():
    line = dvc_remote.failure("dvc push", subprocess.CompletedProcess(["dvc"], 1, "", "ERROR: something new" + BLURB))
    assert line.startswith("`dvc push` failed: ERROR: something new -> check the remote (`dvc remote list`)")


def dvc_project(tmp_path: Path, remote: Path) -> Path:
    """A git + DVC project tracking 200 small files, its default remote at ``remote``."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    project = tmp_path / "project"
    (project / "sales").mkdir(parents=True)
    for k in range(200):
        (project / "sales" / f"day{k}.csv").write_text(f"store,units\n1,{k}\n", encoding="utf-8")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "sales"],
                    [dvc, "remote", "add", "-d", "shared", str(remote)]):
        subprocess.run(command, cwd=project, check=True, capture_output=True, timeout=120)
    return project


def push_on_a_terminal(project: Path) -> tuple[int, str, str]:
    """``python -m pipeline.dvc_remote push`` (make dvc-push) with its stderr on a pseudo-terminal, as a person runs
    it: (exit status, what the terminal showed, stdout)."""
    terminal, their_end = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "pipeline.dvc_remote", "push"], cwd=project, stdout=subprocess.PIPE,
                          stderr=their_end, env={**os.environ, "PYTHONPATH": str(REPO)}) as process:
        os.close(their_end)
        shown = read_terminal(terminal)
        stdout = process.stdout.read().decode()
    os.close(terminal)
    return process.wait(timeout=120), shown.decode("utf-8", "replace"), stdout


@pytest.mark.slow  # end to end, 20-70 s: make test stays well under its 10 minutes
def test_make_dvc_push_shows_dvcs_progress_on_a_terminal_and_still_ends_a_failure_in_one_line(tmp_path):
    """dvc push ran with its stderr captured, so DVC drew no progress bars: a push of a large data set was minutes
    of silence. On a terminal they now come through; DVC's error is still folded into the one line of what to do."""
    project = dvc_project(tmp_path, tmp_path / "remote")
    status, shown, stdout = push_on_a_terminal(project)
    assert status == 0 and "files pushed" in stdout, shown + stdout
    assert "Pushing" in shown and "\r" in shown, repr(shown)  # DVC's bars, frame by frame

    (tmp_path / "blocker").touch()  # a remote under a file: nothing can be written there
    blocked = dvc_project(tmp_path / "again", tmp_path / "blocker" / "remote")
    status, shown, stdout = push_on_a_terminal(blocked)
    told = [line for line in shown.replace("\r", "\n").splitlines() if line.startswith(("dvc-push", "ERROR"))]
    assert status == 1 and len(told) == 1, repr(shown)
    assert told[0].startswith("dvc-push: error: `dvc push` failed: ") and "Not a directory" in told[0]
    assert "Having any troubles" not in shown


CONFLICTED_CONFIG = "<<<<<<< HEAD\n[core]\n    remote = team\n=======\n>>>>>>> b\n"  # what a merge can leave


def test_every_caller_of_dvc_remote_list_says_the_same_one_line_reason(tmp_path):
    """`dvc remote list` was run and read in four places (promote's publish and its re-promote check, prune, make
    dvc-push), each wording its failure its own way: against a .dvc/config a merge left conflict markers in, DVC
    prints its ERROR line and then a Python traceback; promote's note kept the traceback's last line ("First error
    at line 2.", not what failed) and prune's error the whole traceback on "one line". Now one function reads it
    (dvc_remote.remote_names) and each caller's message carries the same one-line reason."""
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.entities.model_registry.model_version_tag import ModelVersionTag

    from pipeline import promote, prune, registry_fetch
    from pipeline.stage import StageError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=60)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=tmp_path, check=True, timeout=120)
    assert dvc_remote.remote_names(tmp_path) == []  # a readable config without a remote
    (tmp_path / ".dvc" / "config").write_text(CONFLICTED_CONFIG, encoding="utf-8")
    with pytest.raises(dvc_remote.RemoteListError) as failed:
        dvc_remote.remote_names(tmp_path)
    why = failed.value.reason
    assert why.startswith("ERROR: configuration error - config file error") and "Traceback" not in why, why
    bundle = tmp_path / "models" / "production"
    bundle.mkdir(parents=True)
    published, written = promote.track_with_dvc(tmp_path, bundle)
    entry = '{"md5": "0123456789abcdef0123456789abcdef.dir", "path": "production"}'
    version = ModelVersion("shelfcast-forecaster", "3", 0, tags=[ModelVersionTag(registry_fetch.TAG_DVC, entry)])
    checked = promote.ensure_in_dvc_remote(tmp_path, version)
    with pytest.raises(StageError) as pruned:
        prune.dvc_gc(tmp_path, None, cloud=True, dry_run=True)
    pushed = subprocess.run(["make", "-s", "--no-print-directory", "-f",
                             str(Path(__file__).parents[2] / "monitoring" / "delivery.mk"), "dvc-push",
                             f"BIN={Path(sys.executable).parent}", f"STAMP={tmp_path / '.dvc' / 'config'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert written is None and pushed.returncode != 0
    made = [line for line in pushed.stderr.splitlines()
            if not line.startswith(("make: ", "make["))]  # make's "Error 1" ("make[1]:" under make test)
    for said in (published, checked, str(pruned.value), "\n".join(made)):
        assert f"`dvc remote list` failed ({why})" in said or f"`dvc remote list` failed: {why}" in said, said
        assert "Traceback" not in said and said.strip().count("\n") == 0, said
    assert "not DVC-tracked or pushed" in published and "not checked in the remote" in checked
    assert "mend .dvc/config" in str(pruned.value) and "mend .dvc/config" in pushed.stderr  # what to do


def test_dvc_push_help_is_its_help_and_a_wrong_command_its_usage(capsys):
    """Found by a probe: `python -m pipeline.dvc_remote --help` printed only `usage: ... push` to stderr and exited
    2, as for a mistake; every other command's --help is its help and 0. A missing or unknown command is argparse's
    one line (stage.CommandParser), exit 2."""
    from pipeline.dvc_remote import main

    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    out, err = capsys.readouterr()
    assert helped.value.code == 0 and err == "", err
    assert out.startswith("usage: python -m pipeline.dvc_remote") and "make dvc-push" in out and "push" in out, out
    for wrong, said in (([], "the following arguments are required: command"),
                        (["pull"], "invalid choice: 'pull'"), (["push", "--bogus"], "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as refused:
            main(wrong)
        out, err = capsys.readouterr()
        assert refused.value.code == 2 and out == "" and said in err and err.count("\n") == 1, (wrong, err)
