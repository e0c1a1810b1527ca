"""Release commands as an operator drives them against a registry in an odd state (aliases moved or deleted by
hand, commands out of order): each says what is wrong in one line and changes nothing it has not judged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import release, tracking
from pipeline.bundle import verify_bundle
from pipeline.registry_fetch import TAG_DIGEST
from pipeline.release_store import CANARY, PRODUCTION, SHADOW
from tests.mlflow_server import gone, mlflow_server

NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml


def _aliases(root) -> dict[str, str]:
    return {k: str(v) for k, v in tracking.client(root).get_registered_model(NAME).aliases.items()}


def _canary_events(root, store, path) -> None:
    """Traffic the canary (version 2, share 0.5) answered well: `decide` says promote on it (test_release.py)."""
    from .test_release import serve_one_row_requests

    serve_one_row_requests(store, path)


@pytest.mark.parametrize("registry_change", ["alias moved to another version", "alias deleted by hand"])
def test_decide_apply_refuses_when_the_alias_no_longer_names_the_candidate_it_judged(host, tmp_path, capsys,
                                                                                     registry_change):
    """Found by a probe: `decide --apply` judged the canary the host serves (version 2) and then promoted whatever
    the registry named at that moment: with the canary alias moved to version 1 (CI registering a candidate, a
    hand edit in the MLflow UI) it promoted version 1 and removed the judged canary from the host; with the canary
    alias deleted by hand it promoted the shadow's version, which nobody had judged."""
    root, store, versions = host
    events = tmp_path / "events.jsonl"
    _canary_events(root, store, events)
    client = tracking.client(root)
    other = versions["production"]
    if registry_change == "alias deleted by hand":
        client.delete_registered_model_alias(NAME, CANARY)
        client.set_registered_model_alias(NAME, SHADOW, other)
    else:
        client.set_registered_model_alias(NAME, CANARY, other)
    served_canary = verify_bundle(store.variant_dir(CANARY))
    before = _aliases(root)
    status = release.main(["decide", "--root", str(root), "--models", str(store.root), "--variant", CANARY,
                           "--events", str(events), "--apply"])
    out, err = capsys.readouterr()
    assert status == 1, (out, err)
    assert "canary" in err and f"version {versions['canary']}" in err and "release-sync" in err, err
    assert _aliases(root) == before  # nothing promoted, no alias deleted
    assert verify_bundle(store.variant_dir(CANARY)) == served_canary  # the judged canary still serves
    assert verify_bundle(store.variant_dir(PRODUCTION)) == \
        client.get_model_version(NAME, versions["production"]).tags[TAG_DIGEST]


@pytest.mark.parametrize("command", [["canary", "--version", "2"], ["deploy", "--version", "2", "--shadow-s", "5"]])
@pytest.mark.parametrize("share", ["1.5", "-0.1", "nan"])
def test_a_canary_share_out_of_range_is_refused_before_anything_is_installed(host, capsys, command, share):
    """Found by a probe: `release canary --version 2 --share 1.5` installed models/canary, then failed on the share
    (`release: error: canary_share: expected 0..1, got 1.5`): the host served a canary the registry did not name, and
    `release status` blamed a promote or release stopped half-way. `deploy` checked it only after its shadow phase."""
    root, store, versions = host
    release.end_candidate(root, store, CANARY)
    before = _aliases(root)
    with pytest.raises(SystemExit) as exited:
        release.main([command[0], "--root", str(root), "--models", str(store.root), *command[1:], "--share", share])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--share: expected a number 0..1, got {float(share)!r}" in err, err
    assert not store.variant_dir(CANARY).exists() and not store.variant_dir(SHADOW).exists()
    assert _aliases(root) == before and store.canary_share() == 0.0
    with pytest.raises(ValueError, match="canary_share: expected a number 0..1, got 1.5"):
        release.set_candidate(root, store, CANARY, versions["canary"], 1.5)
    assert not store.variant_dir(CANARY).exists()


@pytest.mark.parametrize("command", [["canary", "--version", "2"], ["deploy", "--version", "2", "--shadow-s", "5"]])
def test_a_canary_share_of_0_is_refused_before_anything_is_installed(host, capsys, command):
    """`release canary --share 0` installed a canary that answered nobody; `deploy --share 0` then failed its smoke
    test and rolled back, and `decide` could never judge it (no events)."""
    root, store, versions = host
    release.end_candidate(root, store, CANARY)
    before = _aliases(root)
    with pytest.raises(SystemExit) as exited:
        release.main([command[0], "--root", str(root), "--models", str(store.root), *command[1:], "--share", "0"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--share: 0 sends the canary no request" in err and "release shadow" in err, err
    assert not store.variant_dir(CANARY).exists() and _aliases(root) == before
    with pytest.raises(ValueError, match="canary_share: 0 sends the canary no request"):
        release.set_candidate(root, store, CANARY, versions["canary"], 0.0)
    assert not store.variant_dir(CANARY).exists()


@pytest.mark.parametrize("variant", [CANARY, PRODUCTION])
def test_status_says_an_alias_naming_a_version_registered_by_hand_is_not_served(host, capsys, variant):
    """Found by a probe: with the canary alias moved by hand to a version registered in the UI (no serving digest:
    release and sync refuse it), `release status` printed `"canary": {..., "in_sync": true}` and `"in_sync": true`
    while the registry named a canary this host does not (and cannot) serve. For production it then advised
    `release production --version V` and `release end --variant production`, neither a command."""
    root, store, versions = host
    release.end_candidate(root, store, CANARY)
    client = tracking.client(root)
    production = client.get_model_version(NAME, versions["production"])
    by_hand = client.create_model_version(NAME, f"runs:/{production.run_id}/bundle", run_id=production.run_id)
    alias = "production" if variant == PRODUCTION else variant
    try:
        client.set_registered_model_alias(NAME, alias, by_hand.version)
        assert release.main(["status", "--root", str(root), "--models", str(store.root)]) == 0
        out, err = capsys.readouterr()
        status = json.loads(out)
        assert status["in_sync"] is False and status["host"][variant]["in_sync"] is False, status
        refused = status["host"][variant]["refused"]
        assert f"version {by_hand.version} was not registered by `pipeline.promote`" in refused
        assert f"the {alias} alias names a version no host can serve: version {by_hand.version}" in err, err
        assert "release-sync" not in err  # sync refuses it: no use suggesting it
        if variant == PRODUCTION:
            assert "`release promote --version V`" in err and "`release rollback`" in err, err
            assert "release production" not in err and "--variant production" not in err, err
        else:
            assert "`release canary --version V`" in err and "`release end --variant canary`" in err, err
            assert status["host"][PRODUCTION]["in_sync"] is True and "refused" not in status["host"][PRODUCTION]
    finally:
        client.set_registered_model_alias(NAME, "production", versions["production"])
        client.delete_model_version(NAME, by_hand.version)


@pytest.mark.parametrize("damage", ["a file changed", "a file missing"])
def test_a_damaged_bundle_in_the_registry_is_named_by_its_version_and_artifact(released, registry_env, tmp_path,
                                                                              capsys, damage):
    """Found by a probe: a registered version whose stored bundle was damaged (a file changed or lost in the artifact
    store) was refused with `fetch-model: error: <target>/.fetch.krz8hsvx/serving_bundle/weights.npz: checksum
    mismatch ...`: a scratch directory deleted by then, no version, no artifact to look at."""
    import shutil
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from pipeline import registry_fetch

    root, _, versions = released
    client = tracking.client(root)
    version = client.get_model_version(NAME, versions["canary"])  # a candidate: production is refused as one
    stored = Path(url2pathname(urlparse(client.get_run(version.run_id).info.artifact_uri).path)) / "serving_bundle"
    backup = tmp_path / "backup"
    shutil.copytree(stored, backup)
    try:
        if damage == "a file changed":
            weights = stored / "weights.npz"
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
        else:
            (stored / "history.npz").unlink()
        target = tmp_path / "models" / "production"
        client.set_registered_model_alias(NAME, "probe-damaged", version.version)
        assert registry_fetch.main(["--root", str(tmp_path), "--alias", "probe-damaged", "--to", str(target)]) == 1
        err = capsys.readouterr().err
        where = f"runs:/{version.run_id}/serving_bundle"
        assert f"version {version.version}: the registry's bundle {where} is damaged: " in err, err
        assert ".fetch." not in err and not target.exists()
        assert (f"{where}/weights.npz: checksum mismatch" if damage == "a file changed"
                else f"{where}: missing or unlisted file(s): history.npz") in err, err
        store = release.ReleaseStore(tmp_path / "host")
        assert release.main(["canary", "--root", str(tmp_path), "--models", str(store.root),
                             "--version", str(version.version)]) == 1
        assert f"the registry's bundle {where} is damaged" in capsys.readouterr().err
        assert not store.variant_dir(CANARY).exists()
    finally:
        client.delete_registered_model_alias(NAME, "probe-damaged")
        shutil.rmtree(stored)
        shutil.copytree(backup, stored)


@pytest.mark.slow  # a registry stopped and MLflow's bounded retries waited out: 34 s in a loaded default run
def test_ending_a_candidate_while_the_registry_is_gone_says_its_alias_is_left(released, tmp_path, monkeypatch):
    """Found by a probe: with the tracking server gone mid-release (a deploy rolling back a bad canary, `release end`),
    end_candidate took MLflow's connection error for "no such alias": it removed the canary's files and said it had
    ended, while the registry still named the rolled-back version as canary, so the next `make release-sync` (the
    release job's first step, a restarted host) served it again. The candidate still stops serving at once; the
    error says the alias is left and what to run."""
    _, uri, versions = released
    registry = tmp_path / "registry.db"
    shutil.copy(Path(uri.removeprefix("sqlite:///")), registry)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default retries a gone server for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    store = release.ReleaseStore(tmp_path / "models")
    with mlflow_server(f"sqlite:///{registry.as_posix()}") as (address, server):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        assert release.sync(tmp_path, store)[CANARY] == versions["canary"]
        gone(server)
        with pytest.raises(release.ReleaseError) as ended:
            release.end_candidate(tmp_path, store, CANARY)
    message = str(ended.value)
    assert "canary alias" in message and "release end --variant canary" in message and "release-sync" in message, \
        message
    assert not store.variant_dir(CANARY).exists()  # out of service all the same


def test_a_production_alias_deleted_by_hand_is_named_as_such_and_sync_changes_nothing(host, capsys):
    """Found by a probe: with the production alias deleted by hand, `release status` said "this host does not serve
    what the registry names for production (a promote or release stopped half-way?): `make release-sync` installs
    it", and `release sync` then installed the canary and shadow and only failed after, "models:/...@production does
    not exist yet: promote a model first", while this host still served the version to name again."""
    root, store, versions = host
    release.end_candidate(root, store, CANARY)
    client = tracking.client(root)
    client.set_registered_model_alias(NAME, SHADOW, versions["canary"])
    client.delete_registered_model_alias(NAME, PRODUCTION)
    assert release.main(["status", "--root", str(root), "--models", str(store.root)]) == 0
    err = capsys.readouterr().err
    hint = f"`python -m pipeline.release promote --version {versions['production']}`"
    assert "names no production version" in err and hint in err and "release-sync" not in err, err
    assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert "names no production version" in err and hint in err, err
    assert not store.variant_dir(SHADOW).exists()  # nothing installed by a sync that cannot finish


@pytest.mark.parametrize(("previous", "why"), [("99", "which the registry cannot give"),
                                                ("abc", "which is no version number")])
def test_rollback_to_a_version_the_registry_no_longer_has_names_the_tag_it_read(host, capsys, previous, why):
    """Found by a probe: with previous_production naming a version deleted since (or edited by hand), `release
    rollback` said only `shelfcast-forecaster version 99: RESOURCE_DOES_NOT_EXIST: ...`, not where 99 came from nor
    what to do instead."""
    root, store, versions = host
    tracking.client(root).set_registered_model_tag(NAME, release.PREVIOUS_TAG, previous)
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert f"previous production version ({release.PREVIOUS_TAG}) is {previous!r}, {why}" in err, err
    assert "nothing to roll back to" in err and "release promote --version N" in err, err
    assert _aliases(root)[PRODUCTION] == versions["production"]


def test_decide_on_a_candidate_this_host_does_not_serve_judges_nothing(host, tmp_path, capsys):
    """Found by a probe: `release decide --variant shadow` with no shadow installed (ended, or never started) judged
    every shadow event in the log, from any earlier shadow, and printed a verdict (`promote`) for a candidate that
    does not exist; with --apply it then promoted the canary (`decide --apply` now refuses that, but not plain
    decide)."""
    root, store, versions = host
    events = tmp_path / "events.jsonl"
    _canary_events(root, store, events)
    logged = events.read_text(encoding="utf-8").splitlines()
    # an earlier shadow's traffic: production's events again, as the shadow's
    earlier = [json.dumps({**json.loads(line), "model_variant": SHADOW}) for line in logged
               if json.loads(line)["model_variant"] == PRODUCTION]
    events.write_text("\n".join(logged + earlier) + "\n", encoding="utf-8")
    assert not store.variant_dir(SHADOW).exists()
    status = release.main(["decide", "--root", str(root), "--models", str(store.root), "--variant", SHADOW,
                           "--events", str(events)])
    out, err = capsys.readouterr()
    assert status == 1 and out == "", out
    assert f"no shadow is installed on this host ({store.variant_dir(SHADOW)}): nothing to judge" in err, err


def test_status_shows_the_host_when_its_release_file_is_malformed(host, capsys):
    """Found by a probe: with models/release.json malformed (`{"canary_share": 5}`, edited by hand), `release status`
    printed only `release: error: .../release.json: canary_share: ...` and exit 1: no aliases, no host state, while
    the app serves a share of 0 until it is fixed (README). Status now reports what the app does, and the error."""
    root, store, versions = host
    (store.root / "release.json").write_text('{"canary_share": 5}\n', encoding="utf-8")
    assert release.main(["status", "--root", str(root), "--models", str(store.root)]) == 0
    out, err = capsys.readouterr()
    status = json.loads(out)
    assert status["aliases"][CANARY] == versions["canary"] and status["canary_share"] == 0.0, status
    assert "canary_share: expected a number 0..1, got 5" in status["canary_share_error"], status
    assert "release.json" in err and "share of 0" in err, err
    assert f"release canary --version {versions['canary']}" in err, err


def test_a_sync_of_a_host_already_in_sync_reinstalls_nothing(host, capsys):
    """Found by a probe: `make release-sync` on a host already in sync (the release job's first step, an operator
    making sure) copied every variant in again: the canary's install time moved, so `release decide` judged only the
    events since the sync (`judged_since`) and a canary's accumulated evidence was silently dropped; and each worker
    reloaded the same bundles, production answering the canary's share meanwhile."""
    root, store, versions = host
    before = {v: (store.variant_dir(v).stat().st_ino, store.installed_at(v)) for v in (PRODUCTION, CANARY)}
    time.sleep(0.05)
    assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 0
    after = {v: (store.variant_dir(v).stat().st_ino, store.installed_at(v)) for v in (PRODUCTION, CANARY)}
    assert after == before
    # said as a line says it (it was a Python dict, `{'production': '1', 'canary': '2', 'shadow': None}`)
    assert capsys.readouterr().out.splitlines()[-1] == (f"release: synced production version {versions['production']}, "
                                                        f"canary version {versions['canary']}, shadow none (removed)")
    (store.variant_dir(CANARY) / "bundle.json").write_text("{}", encoding="utf-8")  # a damaged install: replaced
    assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 0
    assert verify_bundle(store.variant_dir(CANARY)) == \
        tracking.client(root).get_model_version(NAME, versions["canary"]).tags[TAG_DIGEST]


def test_deploy_to_an_app_that_does_not_answer_installs_nothing_and_names_the_url(host, tmp_path, capsys):
    """Found by a probe: `release deploy --url http://127.0.0.1:5999` with no app there installed the canary, moved
    its alias, waited the whole reload timeout (60 s), reported `canary ... not served after 60 s (hot reload)`, rolled
    back and waited 60 s more; `release smoke` said only `<urlopen error [Errno 111] Connection refused>`."""
    from app.launch import free_port

    root, store, versions = host
    release.end_candidate(root, store, CANARY)
    url = f"http://127.0.0.1:{free_port()}"
    before = _aliases(root)
    started = time.monotonic()
    with pytest.raises(release.ReleaseError) as refused:
        release.deploy(root, store, url, release.LoggedEvents(tmp_path / "events.jsonl"), versions["canary"],
                       reload_timeout_s=3, say=lambda line: None)
    assert time.monotonic() - started < 3
    assert f"{url}/api/v1/model" in str(refused.value) and "is the app running" in str(refused.value)
    assert _aliases(root) == before and not store.variant_dir(CANARY).exists()
    assert release.main(["smoke", "--url", url, "--requests", "1"]) == 1
    assert f"{url}/api/v1/model" in capsys.readouterr().err


RELEASE_IN_TWO_STEPS = """
import sys, time
from pipeline import release
args = sys.argv[1:]
print("first:", release.main(args), flush=True)  # the server reached (tracking.check_reachable: once a process)
sys.stdin.readline()  # the server is killed meanwhile
started = time.monotonic()
code = release.main(args)
print(f"second: {code} after {time.monotonic() - started:.1f} s", flush=True)
sys.exit(code)
"""


@pytest.mark.slow  # a tracking server started, killed, and each command's bounded retries: 27-61 s
def test_a_release_command_whose_tracking_server_died_after_it_was_reached_fails_within_seconds(released, tmp_path):
    """Found by a probe: reachability is checked once a process, and a deploy runs for minutes. A server that died
    after that check was retried by MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) for about 4
    minutes (measured 246 s) before the command failed, and before any rollback of a deploy. The release commands
    bound MLflow's HTTP retries unless the user set them (tracking.HTTP_DEFAULTS)."""
    from .conftest import REPO

    _, uri, _ = released
    registry = tmp_path / "registry.db"
    shutil.copy(Path(uri.removeprefix("sqlite:///")), registry)
    with mlflow_server(f"sqlite:///{registry.as_posix()}") as (address, server):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_")}  # MLflow's defaults
        env.update(MLFLOW_TRACKING_URI=address, PYTHONPATH=str(REPO))
        command = subprocess.Popen([sys.executable, "-c", RELEASE_IN_TWO_STEPS, "status", "--root", str(tmp_path)],
                                   env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            first = command.stdout.readline()
            while first and not first.startswith("first:"):  # status's own JSON line comes before
                first = command.stdout.readline()
            assert first == "first: 0\n"  # `status` answered: the server was reached
            gone(server)
            started = time.monotonic()
            out, err = command.communicate("go\n", timeout=90)  # MLflow's defaults take 246 s
        finally:
            if command.poll() is None:
                command.kill()
                command.wait(10)
    took = time.monotonic() - started
    print(f"release status with the server gone: exit {command.returncode} after {took:.1f} s")
    assert command.returncode == 1, (out, err)
    assert took < 45, out
    assert err.count("release: error: ") == 1 and "Traceback" not in err, err
    assert address.removeprefix("http://") in err, err


@pytest.mark.slow  # a whole deploy against a served app, then its rollback: 25-29 s
def test_deploy_rolls_back_when_the_registry_refuses_the_alias_move(released, tmp_path, monkeypatch):
    """Found by a probe: deploy rolled back on its own errors but not on the registry's (an MlflowException from the
    alias move after the canary was installed: a server that died between two calls, a locked store). It raised
    with the canary installed and served on the host while the registry did not name it. Here the store is locked
    by another writer while deploy runs: reads answer, the alias move cannot."""
    import sqlite3

    from .conftest import ServedWithUsers

    store, versions = _host_on_a_copy_of_the_registry(released, tmp_path, monkeypatch)
    registry = tmp_path / "registry.db"
    release.end_candidate(tmp_path, store, CANARY)
    served = ServedWithUsers(store, tmp_path / "events.jsonl", tmp_path, None)
    writer = sqlite3.connect(registry, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another writer holds the store: the alias move waits, then fails
        report = release.deploy(tmp_path, store, served.url, release.LoggedEvents(tmp_path / "events.jsonl"),
                                versions["canary"], share=0.5, observe_s=5, reload_timeout_s=10, say=lambda *a: None)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        served.close()
    assert report["outcome"] == "rolled back", report
    assert "locked" in report["reason"], report["reason"]
    assert not store.variant_dir(CANARY).exists() and store.canary_share() == 0.0
    assert CANARY not in _aliases(tmp_path)


@pytest.mark.parametrize("variant", [CANARY, SHADOW])
def test_a_candidate_of_productions_own_version_is_refused_and_nothing_changes(host, capsys, variant):
    """Found by a probe: `release canary --version <production's>` installed production's model as the canary (its
    share served twice, judged against itself); `deploy` then failed its smoke test. Refused in one line now."""
    root, store, versions = host
    before, served = _aliases(root), verify_bundle(store.variant_dir(CANARY))
    status = release.main([variant, "--root", str(root), "--models", str(store.root), "--version",
                           versions["production"]])
    err = capsys.readouterr().err
    assert status == 1 and f"version {versions['production']} is production already" in err, err
    assert _aliases(root) == before and verify_bundle(store.variant_dir(CANARY)) == served
    assert not store.variant_dir(SHADOW).exists()


def test_sync_installs_every_variant_it_can_when_one_alias_names_a_version_no_host_can_serve(host, capsys):
    """Found by a probe: `release sync` (a restarted host's first step) stopped at the first refused candidate: with
    the canary alias on a version registered by hand, the shadow the registry named was never installed. Every
    other variant is synced now; the refused one is left as this host had it, and the command fails naming it."""
    root, store, versions = host
    client = tracking.client(root)
    production = client.get_model_version(NAME, versions["production"])
    by_hand = client.create_model_version(NAME, f"runs:/{production.run_id}/bundle", run_id=production.run_id)
    canary_before = verify_bundle(store.variant_dir(CANARY))
    try:
        client.set_registered_model_alias(NAME, CANARY, by_hand.version)
        client.set_registered_model_alias(NAME, SHADOW, versions["canary"])
        status = release.main(["sync", "--root", str(root), "--models", str(store.root)])
        err = capsys.readouterr().err
        assert status == 1 and f"canary: version {by_hand.version}" in err and "not registered" in err, err
        assert store.served_version(SHADOW) == versions["canary"]  # synced all the same
        assert verify_bundle(store.variant_dir(CANARY)) == canary_before  # left as it was
    finally:
        client.set_registered_model_alias(NAME, CANARY, versions["canary"])
        client.delete_model_version(NAME, by_hand.version)


@pytest.mark.parametrize("variant", [CANARY, SHADOW])
@pytest.mark.parametrize("alias, said", [
    ("production", "--alias 'production' names version {production}, production's own: a {variant} of it would be "
                   "judged against itself"),
    ("nosuch", "--alias 'nosuch' names no version of shelfcast-forecaster (its aliases: canary -> {canary}, "
               "production -> {production})"),
    ("Production", "--alias 'Production' names no version of shelfcast-forecaster (its aliases: canary -> {canary}, "
                   "production -> {production}); registry aliases are case-sensitive: 'production'?"),
])
def test_a_candidate_alias_naming_production_or_nothing_is_refused_naming_it(host, capsys, variant, alias, said):
    """`release shadow|canary --alias A` takes the version another alias names: a candidate's (CI's shadow made the
    canary), any alias naming a version that is not production's own. Production's alias was refused as "version 1 is
    production already", naming no alias; an alias naming nothing said "no alias 'Production' on …", without the
    aliases there are (MLflow's are case-sensitive); and --alias beside --version was ignored. Each is one line now
    naming the alias, and nothing changes."""
    root, store, versions = host
    before, served = _aliases(root), verify_bundle(store.variant_dir(CANARY))
    args = [variant, "--root", str(root), "--models", str(store.root)]
    assert release.main([*args, "--alias", alias]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"release: error: {said.format(variant=variant, **versions)}"), err
    assert len(err.splitlines()) == 1 and _aliases(root) == before, err
    assert release.main([*args, "--alias", CANARY, "--version", versions["canary"]]) == 1
    assert capsys.readouterr().err.startswith(f"release: error: --alias 'canary' and --version {versions['canary']}: "
                                              "give one of them")
    assert _aliases(root) == before and verify_bundle(store.variant_dir(CANARY)) == served
    assert not store.variant_dir(SHADOW).exists()
    if variant == SHADOW:  # the canary's alias names a version that is not production's: it may be mirrored too
        assert release.main([*args, "--alias", CANARY]) == 0
        assert _aliases(root) == {**before, SHADOW: versions["canary"]}


def test_a_canary_synced_onto_a_host_recording_no_share_answers_the_default_share(host, tmp_path, capsys):
    """Found by a probe: `make release-sync` on a fresh or wiped host (no models/release.json), or on one whose last
    canary was ended (share 0), installed the canary the registry names with a share of 0: the app sent it no
    request, `release status` said in_sync, and `release decide` waited for canary events that never came. A share
    the host recorded is kept."""
    root, store, versions = host
    fresh = release.ReleaseStore(tmp_path / "fresh-host-models")
    assert release.main(["sync", "--root", str(root), "--models", str(fresh.root)]) == 0
    assert fresh.served_version(CANARY) == versions["canary"]
    assert fresh.canary_share() == release.DEFAULT_SHARE
    assert f"canary version {versions['canary']} answers 10% of store×items" in capsys.readouterr().err
    fresh.set_canary_share(0.0)  # as `release end` leaves it; the canary's files gone too
    fresh.remove(CANARY)
    assert release.main(["sync", "--root", str(root), "--models", str(fresh.root)]) == 0
    assert fresh.canary_share() == release.DEFAULT_SHARE
    fresh.set_canary_share(0.3)  # the operator's share is kept, installed again or not
    fresh.remove(CANARY)
    assert release.main(["sync", "--root", str(root), "--models", str(fresh.root)]) == 0
    assert release.main(["sync", "--root", str(root), "--models", str(fresh.root)]) == 0
    assert fresh.canary_share() == 0.3 and store.canary_share() == 0.5
    (fresh.root / "release.json").write_text("{not json", encoding="utf-8")  # malformed: left for status to name
    assert release.main(["sync", "--root", str(root), "--models", str(fresh.root)]) == 0
    assert (fresh.root / "release.json").read_text(encoding="utf-8") == "{not json"


def test_a_release_file_that_is_no_file_is_named_not_read_as_a_share_of_0(host, capsys):
    """Found by a probe: a directory at models/release.json (a bind mount of a path that did not exist, a hand
    mkdir) was read as no release.json: `release status` showed canary_share 0 with no error, and the next write of
    the share failed naming a temporary file. It is named now, as a malformed one is."""
    root, store, versions = host
    (store.root / "release.json").unlink()
    (store.root / "release.json").mkdir()
    assert release.main(["status", "--root", str(root), "--models", str(store.root)]) == 0
    out, err = capsys.readouterr()
    status = json.loads(out)
    assert status["canary_share"] == 0.0 and "release.json: is no regular file" in status["canary_share_error"]
    assert "release.json: is no regular file" in err, err
    assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 0  # left for status to name
    assert (store.root / "release.json").is_dir()
    (store.root / "release.json").rmdir()


@pytest.mark.parametrize("given", ["02", " 2", "2\n"])
def test_a_version_written_otherwise_is_one_release_on_the_host_and_its_rollback_unmarks_it(host, capsys, given):
    """Found by a probe: MLflow reads `--version 02` (or " 2", or a previous_production tag edited to " 2") as version
    2, but the host stored it as a second release directory (releases/02 beside releases/2), and marked that one
    good: a rollback from version 2 unmarked releases/2 only, so a worker unable to load production could fall back
    to the version rolled back from. The version is now the registry's number everywhere; one that is none is
    refused in one line naming --version or the tag."""
    root, store, versions = host
    canary = versions["canary"]
    assert canary == "2"
    assert release.main(["promote", "--version", given.replace("2", canary), "--root", str(root),
                         "--models", str(store.root)]) == 0
    assert sorted(p.name for p in store.releases()) == ["1", "2"]
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 0
    assert [p.name for p in store.good_releases()] == [versions["production"]]  # 2 rolled back from: no fallback
    client = tracking.client(root)
    client.set_registered_model_tag(NAME, release.PREVIOUS_TAG, given)  # edited by hand: still version 2
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 0
    assert _aliases(root)[PRODUCTION] == "2" and sorted(p.name for p in store.releases()) == ["1", "2"]
    from pipeline import prune  # prune reads the tag as rollback does: the version it names is kept as the rollback's
    client.set_registered_model_tag(NAME, release.PREVIOUS_TAG, given.replace("2", versions["production"]))
    named = prune.registry_names(client.get_registered_model(NAME), PRODUCTION,
                                 lambda v: client.get_model_version(NAME, v))
    assert any("previous_production" in why for why in named.get(versions["production"], [])), named
    capsys.readouterr()
    for bad in ("2.0", "two", "0"):
        assert release.main(["canary", "--version", bad, "--root", str(root), "--models", str(store.root)]) == 1
        assert f"--version {bad!r}: a model version is a whole number" in capsys.readouterr().err
    client.set_registered_model_tag(NAME, release.PREVIOUS_TAG, "v1")
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 1
    assert "is 'v1', which is no version number; nothing to roll back to" in capsys.readouterr().err


def test_a_rollback_says_which_candidates_it_ended(host, capsys):
    """Found by a probe: `release rollback` ends the canary and the shadow (aliases deleted, files removed: each was
    judged beside the production rolled back from), a shadow the ML pipeline had just registered included, and said
    only `production rolled back from version 2 to 1`: the candidate's alias was gone with no word, and the next
    `make deploy` found nothing to deploy. The rollback now names each candidate it ended."""
    root, store, versions = host
    assert release.promote(root, store) == versions["canary"]  # production 2; its canary alias ended with it
    assert release.main(["shadow", "--version", versions["production"], "--root", str(root),
                         "--models", str(store.root)]) == 0
    capsys.readouterr()
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 0
    err = capsys.readouterr().err
    assert f"the rollback ended shadow version {versions['production']} (aliases deleted, files removed)" in err, err
    assert "canary version" not in err and SHADOW not in _aliases(root)
    assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 0  # none to end: no line
    assert "the rollback ended" not in capsys.readouterr().err


@pytest.mark.slow  # the locked store's write waits out MLflow's retries: 40-45 s
def test_a_promote_whose_alias_move_the_registry_refuses_puts_the_hosts_production_back(released, tmp_path,
                                                                                         monkeypatch, capsys):
    """Found by a probe: `release promote` installs the version as this host's production, then moves the alias. A
    registry refusing the move (here its store locked by another writer; a server gone between two calls) left the
    host serving the new version to every user while the registry named the old one; inside `make deploy` the report
    then said "rolled back … production version 1 unchanged". The host now serves what the registry still names."""
    import sqlite3

    store, versions = _host_on_a_copy_of_the_registry(released, tmp_path, monkeypatch)
    registry = tmp_path / "registry.db"
    hold = tmp_path / "hold"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.release", "promote", "--version", versions["canary"], "--root",
         str(tmp_path), "--models", str(store.root)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), tracking.HOLD_ALIAS_MOVE: str(hold)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(f"{hold}.held").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    assert store.served_version(PRODUCTION) == versions["canary"]  # installed before the alias move
    writer = sqlite3.connect(registry, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another writer holds the store: the move waits, then fails
        hold.touch()
        _, err = process.communicate(timeout=180)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert process.returncode == 1 and "locked" in err, err
    assert _aliases(tmp_path)[PRODUCTION] == versions["production"]
    assert store.served_version(PRODUCTION) == versions["production"]
    assert [p.name for p in store.good_releases()] == [versions["production"]]


def _host_on_a_copy_of_the_registry(released, tmp_path: Path, monkeypatch) -> tuple[release.ReleaseStore, dict]:
    """A host (tmp_path/models, synced) on a copy of the released registry, tmp_path/registry.db, that the test may
    lock: (its release store, {alias: version})."""
    _, uri, versions = released
    registry = tmp_path / "registry.db"
    shutil.copy(Path(uri.removeprefix("sqlite:///")), registry)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry.as_posix()}")
    store = release.ReleaseStore(tmp_path / "models")
    release.sync(tmp_path, store)
    return store, versions
