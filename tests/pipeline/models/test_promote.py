"""promote: only an evaluated, passing, unchanged candidate; registry alias + models/production; idempotent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import evaluate, promote, tracking, train
import numpy as np
import pandas as pd

from pipeline.bundle import load_bundle, verify_bundle

from .conftest import TINY_PARAMS

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml


def test_a_passing_candidate_is_promoted_once(trained_project, capsys):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "newly registered" in out
    # both digests, named: the line gave the candidate's alone, where the app and `release status` report the
    # serving bundle's (another, as it carries the registry's provenance)
    served = verify_bundle(root / "models/production")
    assert served != summary["digest"]
    assert f"installed (candidate {summary['digest'][:12]}, served as {served[:12]})" in out, out
    version = tracking.production_version(root)
    assert str(version.version) == "1" and version.tags["bundle_digest"] == summary["digest"]
    assert version.run_id == summary["run_id"]
    production = load_bundle(root / "models/production")
    assert production.metadata["source_bundle_digest"] == summary["digest"]
    # the provenance the git-tracked candidate leaves out: the training run MLflow finds by the digest
    run = tracking.client(root).get_run(summary["run_id"])
    assert production.metadata["mlflow_run_id"] == summary["run_id"]
    assert production.metadata["git_commit"] == run.data.tags["git_commit"]
    assert production.metadata["created"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                           time.gmtime(run.info.start_time // 1000))
    assert version.tags["evaluation_run_id"] == tracking.run_of_bundle(root, summary["digest"], "evaluate").info.run_id
    again = promote.run(root, quiet=True)  # harmless to repeat
    assert not again["registered"] and not again["installed"] and again["version"] == "1"
    assert len(tracking.client(root).search_model_versions("name='shelfcast-forecaster'")) == 1


def test_production_forecasts_the_days_after_the_data_with_the_evaluated_model(trained_project):
    """Same graph and weights as the evaluated candidate; history rolled forward to the last known day."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    promote.run(root, quiet=True)
    candidate, production = load_bundle(root / "models/candidate"), load_bundle(root / "models/production")
    for name in ("graph.json", "weights.npz"):
        assert (root / "models/candidate" / name).read_bytes() == (root / "models/production" / name).read_bytes()
    last_day = pd.read_parquet(root / "data/split/validation.parquet", columns=["date"])["date"].max()
    first, last = production.metadata["horizon_dates"]
    assert np.datetime64(first) == np.datetime64(last_day.date()) + 1
    assert np.datetime64(last) - np.datetime64(first) == production.spec.horizon - 1
    assert production.metadata["evaluated_horizon_dates"] == candidate.metadata["horizon_dates"]
    assert np.datetime64(candidate.metadata["horizon_dates"][1]) == np.datetime64(last_day.date())
    assert verify_bundle(root / "models/production") != summary["digest"]  # its own checksums, new history
    store, item = int(production.snapshot.store_nbr[0]), int(production.snapshot.item_nbr[0])
    forecast = production.predict([store], [item], [first], [False])
    assert forecast.shape == (1,) and np.isfinite(forecast).all() and forecast[0] >= 0


def test_a_deliberately_broken_model_is_refused(trained_project, tiny_params, set_params, capsys):
    """An untrained model (learning rate ~0: weights stay at their random init) fails evaluation; promote refuses."""
    root, _ = trained_project
    tiny_params["train"].update(learning_rate=1e-9, max_steps=1, eval_every_steps=1)
    tiny_params["evaluate"]["min_improvement"] = 0.0
    set_params(root, tiny_params)
    train.run(root, quiet=True)
    assert evaluate.main(["--root", str(root)]) == evaluate.THRESHOLD_FAILED
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "refused: the candidate failed its evaluation: evaluate.min_improvement" in err  # worse than the baseline
    assert tracking.production_version(root) is None and not (root / "models/production").exists()


@pytest.mark.parametrize("where, alias", [("params", "v1"), ("params", "latest"), ("params", "prod uction"),
                                          ("environment", "V2"), ("environment", "canary/1")])
def test_an_alias_the_registry_refuses_is_refused_before_anything_is_installed(trained_project, tiny_params, set_params,
                                                                              monkeypatch, capsys, where, alias):
    """promote.alias 'v1' was refused by MLflow only after models/production was installed (the app hot-swapped
    to it) and a version registered without an alias."""
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    if where == "params":
        tiny_params["promote"]["alias"] = alias
        set_params(root, tiny_params)
    else:
        monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", alias)
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == 1
    key = f"{root / 'params.yaml'}: promote.alias" if where == "params" else "SHELFCAST_PROMOTE_ALIAS"
    assert capsys.readouterr().err.startswith(f"promote: error: {key}: {alias!r} is not a registry alias")
    # production's alias is promote.alias, refused here too: the shipped one's version is looked up by name
    assert tracking.production_version(root, alias="production") is None and not (root / "models/production").exists()
    assert tracking.client(root).search_model_versions("name='shelfcast-forecaster'") == []


def test_production_as_the_candidate_alias_beside_another_production_alias_is_refused(trained_project, tiny_params,
                                                                                      set_params, monkeypatch, capsys):
    """promote.alias is champion and SHELFCAST_PROMOTE_ALIAS=production (a pipeline copied from a project that
    ships `production`): before, promote registered the version under a second alias "production" beside the real
    champion, as a candidate nobody releases, silently. It is refused in one line naming both, before anything is
    registered. SHELFCAST_PROMOTE_ALIAS equal to promote.alias is production's own promote, as when unset."""
    root, _ = trained_project
    tiny_params["promote"]["alias"] = "champion"
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root)]) == 0
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "production")
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("promote: error: SHELFCAST_PROMOTE_ALIAS: 'production' ") and len(err.splitlines()) == 1
    assert "promote.alias is 'champion'" in err, err
    assert tracking.client(root).search_model_versions("name='shelfcast-forecaster'") == []
    assert not (root / "models/production").exists()
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "champion")
    assert promote.main(["--root", str(root)]) == 0
    assert tracking.client(root).get_registered_model("shelfcast-forecaster").aliases == {"champion": 1}
    assert verify_bundle(root / "models/production")


@pytest.mark.parametrize("alias", ["staging"])
def test_an_alias_no_release_reads_is_refused_before_anything_is_registered(trained_project, monkeypatch, capsys,
                                                                            alias):
    """SHELFCAST_PROMOTE_ALIAS=staging registered the version under an alias no `release` command reads (deploy and
    sync take canary, shadow and production's): the candidate was never judged or deployed, silently. Such an alias
    is refused in one line naming the variable, the value and what it accepts; CI's shadow still registers."""
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", alias)
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"promote: error: SHELFCAST_PROMOTE_ALIAS: {alias!r} is an alias no release reads") \
        and len(err.splitlines()) == 1, err
    assert "it takes exactly 'production' (production's, promote.alias; as when unset) or a release candidate's: " \
           "'canary', 'shadow'" in err, err
    assert tracking.client(root).search_model_versions("name='shelfcast-forecaster'") == []
    assert not (root / "models/production").exists()
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "shadow")
    assert promote.main(["--root", str(root)]) == 0
    assert tracking.client(root).get_registered_model("shelfcast-forecaster").aliases == {"shadow": 1}


@pytest.mark.parametrize("alias, meant", [("Production", "production"), ("Shadow", "shadow"), ("CANARY", "canary")])
def test_an_accepted_alias_in_other_letter_case_is_refused_as_such(trained_project, monkeypatch, capsys, alias, meant):
    """Found by a probe: SHELFCAST_PROMOTE_ALIAS=Production said "'Production' is not production's alias here:
    promote.alias is 'production'", naming the same word twice. MLflow 3's aliases are case-sensitive (its store keys
    them as given: 'Production' and 'production' are two aliases, only 'latest' is reserved in any case), so the value
    is refused, in one line that says so and names the aliases accepted, before anything is registered."""
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", alias)
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"promote: error: SHELFCAST_PROMOTE_ALIAS: {alias!r} is not {meant!r}: registry aliases are "
                          "case-sensitive") and len(err.splitlines()) == 1, err
    assert "it takes exactly 'production' (production's, promote.alias; as when unset) or a release candidate's: " \
           "'canary', 'shadow'" in err, err
    assert tracking.client(root).search_model_versions("name='shelfcast-forecaster'") == []
    assert not (root / "models/production").exists()


def test_a_candidate_changed_after_evaluation_is_refused(trained_project, capsys):
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    with open(root / "models/candidate/training_stats.json", "a") as handle:
        handle.write(" ")
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the candidate bundle cannot be trusted" in capsys.readouterr().err


def test_changed_params_or_data_since_evaluation_are_refused(trained_project, tiny_params, set_params, capsys):
    root, _ = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    tiny_params["evaluate"]["plot_rows"] = 300
    set_params(root, tiny_params)
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the params (features, train, evaluate) changed since the evaluation" in capsys.readouterr().err
    tiny_params["evaluate"]["plot_rows"] = 200
    set_params(root, tiny_params)
    with open(root / "data/prepared/holidays.parquet", "ab") as handle:
        handle.write(b"\0")
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "the data changed since the evaluation" in capsys.readouterr().err


def test_a_candidate_trained_from_other_params_or_data_than_it_was_evaluated_with_is_refused(
        trained_project, tiny_params, set_params, capsys):
    """params.yaml changed, then `python -m pipeline.evaluate` without train: the verdict records the new params'
    hash, the candidate is the old params' model (and its backtest windows retrain with the new ones). Before,
    promote registered it as the current params' model; now it names what differs and refuses."""
    root, _ = trained_project
    tiny_params["train"]["learning_rate"] = 0.02
    tiny_params["features"]["mean_windows"] = [3, 7, 14, 28]
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0  # the old model, judged under the new params
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert (f"promote: refused: {root / 'models/candidate'} was trained from other params (features.mean_windows "
            "[3, 7, 14, 28, 56] -> [3, 7, 14, 28], train.learning_rate 0.01 -> 0.02) than train reads now") in err, err
    assert "run `dvc repro` (train + evaluate) before promoting" in err and len(err.splitlines()) == 1, err
    set_params(root, TINY_PARAMS)  # the candidate's params again; the data the candidate was trained on changed
    with open(root / "data/split/train.parquet", "ab") as handle:
        handle.write(b"\0")
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "was trained from other data (data/split/train.parquet) than train reads now" in err, err
    assert tracking.production_version(root) is None and not (root / "models/production").exists()


def test_a_candidate_no_mlflow_run_made_is_refused(trained_project, capsys):
    """The run that made the bundle is found in MLflow by its digest; once it is deleted there is none."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    tracking.client(root).delete_run(summary["run_id"])
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "no finished MLflow training run" in capsys.readouterr().err
    assert not (root / "models/production").exists()


def test_no_evaluation_no_promotion(trained_project, capsys):
    root, _ = trained_project
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    assert "no evaluation found" in capsys.readouterr().err


def dvc_project(root: Path, remote: Path | None = None, gitignore: str | None = None) -> None:
    """Make ``root`` a git + DVC project with the repository's .gitignore (or ``gitignore``), and ``remote`` as its
    default DVC remote; skips the test without the dvc CLI."""
    if promote._dvc(root, "version").returncode != 0:
        pytest.skip("dvc CLI not available")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    if gitignore is None:  # models/* ignored, as in every clone
        shutil.copy(Path(__file__).resolve().parents[3] / ".gitignore", root / ".gitignore")
    else:
        (root / ".gitignore").write_text(gitignore, encoding="utf-8")
    assert promote._dvc(root, "init", "-q").returncode == 0
    if remote is not None:
        assert promote._dvc(root, "remote", "add", "-d", "shared", str(remote)).returncode == 0


def test_in_a_dvc_project_the_production_bundle_is_pushed_when_there_is_a_remote(trained_project, capsys):
    """No remote: nothing to push to, no .dvc file. A remote: pushed, and its DVC entry is a tag of the model
    version (what `registry_fetch --from dvc` pulls by), so no models/production.dvc is left for git either."""
    root, _ = trained_project
    dvc_project(root)
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0
    assert "no DVC remote configured: models/production not DVC-tracked" in capsys.readouterr().out
    assert not (root / "models/production.dvc").exists()
    assert "dvc_out" not in tracking.production_version(root).tags
    remote = root.parent / "remote"
    assert promote._dvc(root, "remote", "add", "-d", "local", str(remote)).returncode == 0
    tracking.client(root).delete_model_version(MODEL_NAME, "1")  # register anew, with the entry
    summary = promote.run(root, quiet=True)
    assert "push" in summary["dvc"] and remote.is_dir() and any(remote.rglob("*"))
    assert not (root / "models/production.dvc").exists() and not (root / "models/promoted-production.dvc").exists()
    entry = json.loads(tracking.production_version(root).tags["dvc_out"])
    # staged beside models/production and swapped in once registered (`--from dvc` pulls it to any path)
    assert entry["md5"].endswith(".dir") and entry["path"] == "promoted-production"
    # a candidate alias (CI: SHELFCAST_PROMOTE_ALIAS=shadow) is pushed too: its staging folder's .dvc file is one
    # git does not ignore (DVC refuses to write an ignored one: every CI promote was refused)
    tracking.client(root).delete_model_version(MODEL_NAME, tracking.production_version(root).version)
    import os

    os.environ["SHELFCAST_PROMOTE_ALIAS"] = "shadow"
    try:
        summary = promote.run(root, quiet=True)
    finally:
        del os.environ["SHELFCAST_PROMOTE_ALIAS"]
    assert "push" in summary["dvc"] and summary["alias"] == "shadow" and summary["moved"] is True
    shadow = tracking.client(root).get_model_version_by_alias(MODEL_NAME, "shadow")
    assert json.loads(shadow.tags["dvc_out"])["md5"].endswith(".dir")
    assert not list((root / "models").glob("promoted-*"))


@pytest.mark.parametrize("failing", ["push", "add"])
def test_a_failed_dvc_push_or_add_refuses_in_one_line_saying_what_to_do(trained_project, capsys, failing):
    """A remote promote cannot write (push), or a .gitignore that ignores the bundle's .dvc file (add): the refusal
    was DVC's several lines ("unexpected error - ...", then "Having any troubles? Hit us up at
    https://dvc.org/support"), with no remedy. Now one line, and nothing registered."""
    root, _ = trained_project
    if failing == "push":
        (root.parent / "blocker").touch()  # the remote's folder lies under a file: nothing can be written there
        dvc_project(root, remote=root.parent / "blocker" / "remote")
        command, said = "dvc push models/promoted-production.dvc", ("Not a directory",)
    else:
        dvc_project(root, remote=root.parent / "remote", gitignore="/models/*\n")  # promoted-*.dvc ignored too
        command, said = "dvc add models/promoted-production", ("git-ignored", "un-ignore it")
    assert evaluate.main(["--root", str(root)]) == 0
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Having any troubles" not in err, err
    assert err.startswith(f"promote: refused: `{command}` failed: ") and all(s in err for s in said) and \
        err.endswith("nothing registered: promote again once fixed"), err
    assert tracking.production_version(root) is None
    assert not list((root / "models").glob("promoted-*"))


def test_a_clone_of_the_project_fetches_the_promoted_bundle_from_the_dvc_remote(trained_project, tmp_path,
                                                                                   capsys):
    """`make fetch-model MODEL_SOURCE=dvc` in a clone of this repository failed every time: it wrote
    models/production.dvc, which the project's .gitignore ignores, and `dvc pull` refused it ("bad DVC file name
    'models/production.dvc' is git-ignored"), leaving that file behind; `--to` outside the project was a ValueError
    traceback. Now the entry is pulled into models/promoted-fetch/ (its .dvc file not ignored) and installed where
    asked, verified; nothing is left in models/."""
    from pipeline import registry_fetch

    root, _ = trained_project
    dvc_project(root, remote=tmp_path / "remote")
    assert evaluate.main(["--root", str(root)]) == 0
    assert "push" in promote.run(root, quiet=True)["dvc"]
    want = tracking.production_version(root).tags[registry_fetch.TAG_DIGEST]
    shutil.rmtree(root / "models/production")
    shutil.rmtree(root / ".dvc/cache")  # a fresh clone: only the remote has it
    assert registry_fetch.main(["--root", str(root), "--from", "dvc"]) == 0
    assert verify_bundle(root / "models/production") == want
    host = tmp_path / "host" / "production"  # outside the project, e.g. a serving host's store
    assert registry_fetch.main(["--root", str(root), "--from", "dvc", "--to", str(host)]) == 0
    assert verify_bundle(host) == want
    assert not list((root / "models").glob("*.dvc")) and not list((root / "models").glob("promoted-*"))
    assert not list(host.parent.glob("*.dvc"))

    # the remote lost the bundle (an object deleted from the bucket): one line naming what is missing, what to do
    shutil.rmtree(tmp_path / "remote")
    shutil.rmtree(root / ".dvc/cache")
    capsys.readouterr()
    assert registry_fetch.main(["--root", str(root), "--from", "dvc", "--to", str(tmp_path / "again")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Missing cache files" in err and "files fetched" not in err, err
    assert err.endswith("the registry's artifact store has it too (MODEL_SOURCE=mlflow, the default)"), err
    assert "the remote lacks this version's bundle" in err and "`dvc push`" not in err, err  # no .dvc file to push
    assert not (tmp_path / "again").exists() and not list((root / "models").glob("promoted-*"))


@pytest.mark.slow  # end to end, 20-70 s: make test stays well under its 10 minutes
def test_a_bundle_the_dvc_remote_lost_is_pushed_again_when_promoted_again(trained_project, tmp_path, capsys):
    """promote saw the version registered and skipped publishing: a bundle whose objects the DVC remote had lost (a
    bucket emptied, a `dvc gc -c` elsewhere) stayed lost, and `fetch-model MODEL_SOURCE=dvc` failed for good. Now a
    re-promote checks the version's recorded entry in the remote (`dvc status -c`) and pushes it when missing: from
    this clone's DVC cache, or, where that lacks it too (a fresh CI runner), from the registry's copy."""
    from pipeline import registry_fetch

    root, _ = trained_project
    remote = tmp_path / "remote"
    dvc_project(root, remote=remote)
    assert evaluate.main(["--root", str(root)]) == 0
    assert "push" in promote.run(root, quiet=True)["dvc"]
    entry = tracking.production_version(root).tags[registry_fetch.TAG_DVC]

    def fetched_from_the_remote_alone(where: str) -> None:
        shutil.rmtree(root / ".dvc/cache")
        assert registry_fetch.main(["--root", str(root), "--from", "dvc", "--to", str(tmp_path / where)]) == 0
        assert verify_bundle(tmp_path / where) == tracking.production_version(root).tags[registry_fetch.TAG_DIGEST]

    again = promote.run(root, quiet=True)  # present: checked, nothing sent
    assert again["version"] == "1" and not again["registered"]
    assert "in the DVC remote (`dvc status -c`): nothing pushed" in again["dvc"], again["dvc"]
    for n, (lost, how) in enumerate((("the remote", "from this clone's DVC cache"),
                                     ("the remote and the cache", "from the registry's copy"))):
        shutil.rmtree(remote)
        if lost == "the remote and the cache":
            shutil.rmtree(root / ".dvc/cache")
        capsys.readouterr()
        assert promote.main(["--root", str(root)]) == 0
        out = capsys.readouterr().out
        assert f"the DVC remote had lost it: pushed again {how}" in out, out
        assert tracking.production_version(root).tags[registry_fetch.TAG_DVC] == entry  # the same objects
        assert not list((root / "models").glob("promoted-*")) and not list((root / "models").glob("*.dvc"))
        fetched_from_the_remote_alone(f"fetched-{n}")
    assert str(tracking.production_version(root).version) == "1"
    assert len(tracking.client(root).search_model_versions("name='shelfcast-forecaster'")) == 1
    # a remote DVC cannot check (here: its folder lies under a file) refuses in one line, nothing moved or left
    (tmp_path / "blocker").touch()
    assert promote._dvc(root, "remote", "add", "-f", "-d", "shared", str(tmp_path / "blocker" / "remote")).returncode \
        == 0
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == promote.REFUSED
    err = capsys.readouterr().err.strip()
    refused = "promote: refused: `dvc status -c models/promoted-dvc-check.dvc` failed: "
    assert len(err.splitlines()) == 1 and err.startswith(refused) and "Not a directory" in err, err
    assert err.endswith("nothing moved: promote again once fixed"), err
    assert not list((root / "models").glob("promoted-*")) and str(tracking.production_version(root).version) == "1"


def test_the_hashed_model_code_is_exactly_what_reruns_evaluate():
    """promote compares the hash of MODEL_CODE; DVC must rerun evaluate whenever any of it changes."""
    from pathlib import Path

    import yaml

    from pipeline.versions import MODEL_CODE, PACKAGE_ROOT

    stages = yaml.safe_load((Path(PACKAGE_ROOT) / "dvc.yaml").read_text())["stages"]
    code_deps = {d for d in stages["evaluate"]["deps"] if d.startswith(("engine", "pipeline/"))}
    assert code_deps == set(MODEL_CODE)
    assert set(MODEL_CODE) - {"pipeline/evaluate.py", "pipeline/backtest.py"} <= set(stages["train"]["deps"])


def test_a_verdict_without_the_backtest_interval_is_refused(tiny_project, capsys):
    """An evaluation.json from the old single-window gate says passed, but not with confidence: re-evaluate first."""
    import json

    (tiny_project / "results").mkdir()
    (tiny_project / "results/evaluation.json").write_text(json.dumps({"passed": True, "failures": []}))
    assert promote.main(["--root", str(tiny_project)]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "without the backtest's improvement interval" in err and "dvc repro evaluate" in err


def test_a_damaged_evaluation_json_is_refused_naming_the_file_and_field_not_a_traceback(trained_project, capsys):
    """results/evaluation.json is git-tracked: a hand edit or a bad merge can leave valid JSON of another shape. Before,
    promote stopped with a traceback (AttributeError on a list, KeyError on a missing score, after the champion
    comparison); now it refuses in one line naming the file and the field, with nothing registered or installed."""
    root, _ = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    path = root / "results/evaluation.json"
    good = json.loads(path.read_text())
    capsys.readouterr()

    def without(field, inside=None):
        damaged = json.loads(json.dumps(good))
        (damaged[inside] if inside else damaged).pop(field)
        return damaged

    cases = {
        "[1, 2]": "not an evaluation (a JSON list, not an object)",
        json.dumps(without("candidate_nwrmsle")): "field 'candidate_nwrmsle' is missing or not a finite number",
        json.dumps(without("series", "improvement_interval")):
            "field 'improvement_interval.series' is missing or not a finite number",
        json.dumps({**good, "rule": None}): "field 'rule' is missing or not a str",
        json.dumps({**good, "passed": False, "failures": "evaluate.min_series"}):
            "the candidate failed its evaluation: evaluate.min_series",
    }
    for text, said in cases.items():
        path.write_text(text)
        assert promote.main(["--root", str(root)]) == promote.REFUSED, text
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "passed" in text or str(path) in err, err
    assert not (root / "models/production").exists()
    assert tracking.client(root).search_model_versions(f"name='{MODEL_NAME}'") == []


def test_the_version_links_the_evaluation_it_was_promoted_on_not_a_newer_one_of_the_same_bundle(trained_project):
    """promote linked the newest evaluate run of the bundle: after a stricter evaluation that failed (or a teammate's
    under other params), a version tagged 'passed' pointed at a run tagged 'failed'."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    judged = tracking.run_of_bundle(root, summary["digest"], "evaluate").info.run_id
    newer = tracking.log_evaluation(root, summary["run_id"], passed=False, headline={"x": 1.0}, windows=[],
                                    params={"rule": "stricter"}, artifacts=[], bundle_digest=summary["digest"],
                                    evaluation_json='{"passed": false}\n').run_id
    assert tracking.run_of_bundle(root, summary["digest"], "evaluate").info.run_id == newer
    assert promote.main(["--root", str(root)]) == 0
    version = tracking.production_version(root)
    assert version.tags["evaluation_run_id"] == judged and version.tags["threshold_test"] == "passed"


def test_an_evaluation_dvc_skipped_is_recorded_by_promote(trained_project, capsys):
    """A fresh clone retrains (empty DVC cache) and skips evaluate (the committed results/ judged this very bundle):
    the version had no evaluation run ('None'). promote now records the committed one, nested under training."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    client = tracking.client(root)
    for run in client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id],
                                  "tags.stage = 'evaluate'"):
        client.delete_run(run.info.run_id)  # this store never saw the evaluation
    capsys.readouterr()
    assert promote.main(["--root", str(root)]) == 0
    assert "recorded the evaluation in results/evaluation.json as MLflow run" in capsys.readouterr().out
    version = tracking.production_version(root)
    recorded = client.get_run(version.tags["evaluation_run_id"])
    assert recorded.data.tags["recorded_by"] == "promote" and recorded.data.tags["threshold_test"] == "passed"
    assert recorded.data.tags[tracking.PARENT_RUN_TAG] == summary["run_id"]
    assert recorded.data.tags[tracking.REGISTERED_MODEL_TAG] == version.name  # as evaluate's own would (prune)
    evaluation = json.loads((root / "results/evaluation.json").read_text())
    assert recorded.data.metrics["heldout_validation_candidate_nwrmsle"] == pytest.approx(
        evaluation["candidate_nwrmsle"])
    assert promote.run(root, quiet=True)["version"] == "1"  # found again, not recorded twice
    assert len(client.search_runs([recorded.info.experiment_id], "tags.recorded_by = 'promote'")) == 1


def test_a_candidate_alias_is_registered_without_replacing_production_on_this_host(trained_project, monkeypatch,
                                                                                     capsys):
    """SHELFCAST_PROMOTE_ALIAS=shadow (CI) rolled the candidate into models/production: a `make serve` beside it
    hot-reloaded the unreleased candidate and answered every request with it."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "shadow")
    assert promote.main(["--root", str(root)]) == 0
    assert "models/production left as it is ('shadow' is a candidate" in capsys.readouterr().out
    assert not (root / "models/production").exists()
    assert not list((root / "models").glob("promoted-*"))  # the staging copy is gone
    shadow = tracking.client(root).get_model_version_by_alias("shelfcast-forecaster", "shadow")
    assert shadow.tags["serving_digest"] and shadow.tags["bundle_digest"] == summary["digest"]
    assert tracking.production_version(root) is None


def test_a_candidate_alias_is_not_moved_onto_production_itself(trained_project, monkeypatch, capsys):
    """CI's promote (SHELFCAST_PROMOTE_ALIAS=shadow) of a bundle that is production already (a rerun with nothing
    changed) moved `shadow` onto production's version: the release job's `release shadow` then refused it as
    production itself, and `release status` showed one version as both. Now the alias stays, and promote says so."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root)]) == 0
    assert promote.main(["--root", str(root)]) == 0  # production, version 1
    capsys.readouterr()
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "shadow")
    assert promote.main(["--root", str(root)]) == 0
    assert "version 1 is 'production' already: 'shadow' not moved" in capsys.readouterr().out
    assert promote.run(root, quiet=True)["moved"] is False  # one summary shape: a promote that moved says True
    assert "shadow" not in tracking.client(root).get_registered_model("shelfcast-forecaster").aliases
    assert str(tracking.production_version(root).version) == "1"


def test_a_dvc_config_that_cannot_be_read_is_not_said_to_have_no_remote(tmp_path):
    """Noticed by the CI probe: `dvc remote list` failing (conflict markers a merge left in .dvc/config) read as
    "no DVC remote configured", so a team with a remote was told it had none."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=tmp_path, check=True)
    bundle = tmp_path / "models" / "production"
    bundle.mkdir(parents=True)
    note, written = promote.track_with_dvc(tmp_path, bundle)
    assert note.startswith("no DVC remote configured") and written is None
    (tmp_path / ".dvc" / "config").write_text("<<<<<<< HEAD\n[core]\n    remote = team\n=======\n>>>>>>> b\n")
    note, written = promote.track_with_dvc(tmp_path, bundle)
    assert note.startswith("`dvc remote list` failed (") and "not DVC-tracked or pushed" in note, note
    assert written is None


def test_a_version_registered_without_a_remote_is_pushed_and_its_entry_recorded_when_promoted_again(trained_project,
                                                                                                     tmp_path):
    """A bundle first promoted where no DVC remote was configured (a laptop's `make run`, CI before the remote was
    set up) has a version with no DVC entry; promoting it again once a remote exists said "nothing uploaded or pushed
    (the version records no DVC entry)", so that version never reached the remote and `fetch-model
    MODEL_SOURCE=dvc` refused it for good. Now the re-promote pushes the registry's copy and records the entry."""
    from pipeline import registry_fetch

    root, _ = trained_project
    dvc_project(root)
    assert evaluate.main(["--root", str(root)]) == 0
    assert "no DVC remote configured" in promote.run(root, quiet=True)["dvc"]
    assert registry_fetch.TAG_DVC not in tracking.production_version(root).tags
    remote = tmp_path / "remote"
    assert promote._dvc(root, "remote", "add", "-d", "shared", str(remote)).returncode == 0
    again = promote.run(root, quiet=True)
    assert again["version"] == "1" and not again["registered"]
    assert "pushed" in again["dvc"] and "records no DVC entry" not in again["dvc"], again["dvc"]
    production = tracking.production_version(root)
    assert json.loads(production.tags[registry_fetch.TAG_DVC])["md5"].endswith(".dir")
    assert not list((root / "models").glob("promoted-*")) and not list((root / "models").glob("*.dvc"))
    shutil.rmtree(root / ".dvc/cache")  # the remote alone has it now
    assert registry_fetch.main(["--root", str(root), "--from", "dvc", "--to", str(tmp_path / "fetched")]) == 0
    assert verify_bundle(tmp_path / "fetched") == production.tags[registry_fetch.TAG_DIGEST]
    third = promote.run(root, quiet=True)  # recorded now: checked in the remote, nothing sent
    assert "in the DVC remote (`dvc status -c`): nothing pushed" in third["dvc"], third["dvc"]
