"""`make commit-lock` (ml-pipeline's `record` job) against real git repositories: a bare "origin" standing in for
GitHub and clones of it, as actions/checkout leaves them (a shallow clone on branch main) or as a laptop has them.

ml-pipeline never committed dvc.lock: after `dvc repro` and promote on main the repository did not record which
data and model versions the promoted model came from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
METRICS = ["results/metrics.json", "results/evaluation.json", "results/backtest.json", "results/slices.json",
           "results/plots/daily.csv", "results/plots/predictions.csv"]
IDENTITY = {"GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@localhost", "GIT_COMMITTER_NAME": "ci",
            "GIT_COMMITTER_EMAIL": "ci@localhost"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **IDENTITY})
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def commit_lock(repo: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GIT_", "LOCK_"))}
    return subprocess.run(["make", "-s", "-f", str(REPO / "monitoring" / "delivery.mk"), "commit-lock"], cwd=repo,
                          capture_output=True, text=True, timeout=120, env={**clean, **IDENTITY, **env})


def write(repo: Path, name: str, text: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text, encoding="utf-8")


@pytest.fixture
def origin(tmp_path) -> Path:
    """A bare origin whose main holds a project with dvc.lock, the metrics files and some code."""
    bare = tmp_path / "origin.git"
    bare.mkdir()
    git(bare, "init", "-q", "--bare")
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q")
    for name in ["dvc.lock", *METRICS, "app.py", "README.md"]:
        write(seed, name, f"{name} as first committed\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "the project")
    git(seed, "push", "-q", str(bare), "main")
    return bare


def clone(origin: Path, path: Path, *args: str) -> Path:
    git(origin.parent, "clone", "-q", *args, origin.as_uri(), str(path))
    return path


def tip(origin: Path) -> str:
    return git(origin, "rev-parse", "main")


def test_a_changed_lock_is_committed_to_main_and_pushed_once(origin, tmp_path):
    work = clone(origin, tmp_path / "runner", "--depth", "1")  # as actions/checkout leaves it
    tested = tip(origin)
    write(work, "dvc.lock", "the new run's lock\n")
    write(work, "results/metrics.json", '{"wmape": 0.5}\n')
    write(work, "results/new-untracked.txt", "not a metrics file: left alone\n")
    done = commit_lock(work, GITHUB_RUN_ID="42", GITHUB_REPOSITORY="owner/shelfcast")
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = tip(origin)
    assert recorded != tested and git(origin, "rev-parse", "main^") == tested
    assert git(origin, "diff", "--name-only", tested, recorded).splitlines() == ["dvc.lock", "results/metrics.json"]
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert tested in message and "[skip ci]" in message and "owner/shelfcast/actions/runs/42" in message, message
    assert git(work, "rev-parse", "HEAD") == recorded
    assert git(work, "status", "--porcelain", "--untracked-files=no") == ""  # the checkout is the commit

    again = commit_lock(work)  # nothing changed since: nothing committed
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    assert tip(origin) == recorded


def test_an_unchanged_lock_commits_nothing(origin, tmp_path):
    work = clone(origin, tmp_path / "laptop")
    before = tip(origin)
    write(work, "results/metrics.json", "metrics rewritten, the lock the same\n")
    done = commit_lock(work)
    assert done.returncode == 0 and "dvc.lock unchanged" in done.stdout, done.stdout + done.stderr
    assert tip(origin) == before and git(work, "rev-parse", "HEAD") == before


@pytest.mark.parametrize("situation", ["another branch", "detached", "pull request", "code changed",
                                       "code staged", "unpushed commit"])
def test_it_refuses_and_commits_nothing(origin, tmp_path, situation):
    work = clone(origin, tmp_path / "work")
    before = tip(origin)
    env = {}
    if situation == "another branch":
        git(work, "checkout", "-q", "-b", "try-lr")
    elif situation == "detached":
        git(work, "checkout", "-q", "--detach")
    elif situation == "pull request":
        env = {"GITHUB_EVENT_NAME": "pull_request"}
    elif situation == "code changed":
        write(work, "app.py", "edited, not committed\n")
    elif situation == "code staged":
        write(work, "README.md", "staged, not committed\n")
        git(work, "add", "README.md")
    elif situation == "unpushed commit":
        write(work, "app.py", "committed here, not pushed\n")
        git(work, "commit", "-q", "-am", "local work")
    head = git(work, "rev-parse", "HEAD")
    write(work, "dvc.lock", "the new run's lock\n")
    done = commit_lock(work, **env)
    assert done.returncode != 0, done.stdout
    said = done.stderr.strip().splitlines()[0]
    expected = {"another branch": "on try-lr, not main", "detached": "not main", "pull request": "pull request",
                "code changed": "have changes", "code staged": "have changes", "unpushed commit": "lacks"}[situation]
    assert said.startswith("commit-lock: ") and expected in said and "nothing committed" in done.stderr, done.stderr
    if situation.startswith("code"):
        assert ("app.py" if situation == "code changed" else "README.md") in done.stderr
    assert tip(origin) == before and git(work, "rev-parse", "HEAD") == head


def without_identity(tmp_path: Path) -> dict[str, str]:
    """A fresh CI runner's git: an empty HOME, no system config, and no address guessed from the host name (git
    guesses one where the host has a domain; user.useConfigOnly makes every host the one without)."""
    (tmp_path / "empty-home").mkdir()
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GIT_", "LOCK_", "EMAIL"))}
    return {**bare, "HOME": str(tmp_path / "empty-home"), "XDG_CONFIG_HOME": str(tmp_path / "empty-home"),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.useConfigOnly",
            "GIT_CONFIG_VALUE_0": "true"}


@pytest.mark.parametrize("identity", ["none", "the clone's git config"])
def test_without_a_git_identity_it_says_what_to_set_in_one_line(origin, tmp_path, identity):
    """Before, a runner with no user.name/user.email ended in git's own dozen lines ("Author identity unknown ...
    Please tell me who you are"); the workflow's record job sets GIT_AUTHOR_*/GIT_COMMITTER_*, another CI does not."""
    work = clone(origin, tmp_path / "runner")
    before = tip(origin)
    if identity != "none":
        git(work, "config", "user.name", "Shelfcast CI")
        git(work, "config", "user.email", "ci@shelfcast.invalid")
    write(work, "dvc.lock", "the new run's lock\n")
    done = subprocess.run(["make", "-s", "-f", str(REPO / "monitoring" / "delivery.mk"), "commit-lock"], cwd=work,
                          capture_output=True, text=True, timeout=120, env=without_identity(tmp_path))
    if identity == "none":
        assert done.returncode != 0 and done.stderr.startswith("commit-lock: git has no identity"), done.stderr
        said = done.stderr.strip().splitlines()
        assert said[0].startswith("commit-lock:") and "user.name and user.email" in said[0], done.stderr
        assert "GIT_COMMITTER_EMAIL" in said[0] and "nothing committed" in said[0], done.stderr
        assert not any(line.startswith("commit-lock") for line in said[1:]), done.stderr  # make's own line after it
        assert tip(origin) == before
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        recorded_by = git(origin, "log", "-1", "--format=%an <%ae>|%cn", "main")
        assert recorded_by == "Shelfcast CI <ci@shelfcast.invalid>|Shelfcast CI"


def test_when_main_moved_on_the_run_s_files_are_committed_on_top(origin, tmp_path):
    """A push landed on main while the pipeline ran: the lock goes on top of it (not rebased into a mix), the other
    push's change kept, the message naming the commit the run tested."""
    work = clone(origin, tmp_path / "runner", "--depth", "1")
    tested = tip(origin)
    teammate = clone(origin, tmp_path / "teammate")
    write(teammate, "app.py", "a teammate's change\n")
    write(teammate, "results/slices.json", "a teammate's edit of a metrics file\n")
    git(teammate, "commit", "-q", "-am", "meanwhile")
    git(teammate, "push", "-q", "origin", "main")
    moved = tip(origin)

    write(work, "dvc.lock", "the run's lock\n")
    write(work, "results/slices.json", "the run's slices\n")
    done = commit_lock(work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "behind" in done.stdout
    recorded = tip(origin)
    assert git(origin, "rev-parse", "main^") == moved
    assert git(origin, "show", "main:app.py") == "a teammate's change"
    assert git(origin, "show", "main:dvc.lock") == "the run's lock"
    assert git(origin, "show", "main:results/slices.json") == "the run's slices"
    assert git(origin, "diff", "--name-only", moved, recorded).splitlines() == ["dvc.lock", "results/slices.json"]
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert tested in message and moved[:12] in message, message
    assert git(work, "rev-parse", "HEAD") == tested  # the checkout is left as it was (behind: git pull)


def test_the_recorded_files_are_dvc_lock_and_the_pipeline_s_git_tracked_outputs(tmp_path):
    """LOCK_METRICS is every cache: false output of dvc.yaml that git tracks (dvc.lock holds their hashes)."""
    outputs = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"].values():
        for entry in (stage.get("outs") or []) + (stage.get("metrics") or []):
            if isinstance(entry, dict):
                (path, options), = entry.items()
                if (options or {}).get("cache") is False:
                    outputs.add(path)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *sorted(outputs)], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert ignored == ["data/source.json"]  # the source stage's fingerprint: not cached, not in git either
    outputs -= set(ignored)
    probe = tmp_path / "probe.mk"
    probe.write_text("probe:\n\t@echo $(LOCK_METRICS)\n", encoding="utf-8")
    done = subprocess.run(["make", "-s", "-f", str(REPO / "monitoring" / "delivery.mk"), "-f", str(probe), "probe"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert set(done.stdout.split()) == outputs and outputs == set(METRICS), (done.stdout, outputs)
    tracked = set(subprocess.run(["git", "ls-files", *METRICS], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert tracked == set(METRICS)
