"""``promote`` (run by CI): make the evaluated candidate the production model — or refuse, saying why.

Promotes only a candidate whose evaluation passed the threshold test
(pipeline/evaluate.py: better than the baseline with confidence over the
backtest windows) *for the current bundle, code, data and params* (the
hashes ``evaluate`` recorded in results/evaluation.json are recomputed and
compared), and only one not worse than the registry's production model with confidence
(pipeline/champion.py: both scored on the candidate's validation window, ``promote.max_regression``;
exit 2 when refused, the comparison recorded on the version and its run). Then:

1. stages the bundle in ``models/promoted-<alias>/`` (git-ignored): the evaluated model with its history rolled
   forward to the last known day, so it forecasts the days after the data (pipeline/serving_bundle.py), and with
   the provenance the tracked candidate leaves out (``created``, ``git_commit``, ``mlflow_run_id``: the training
   run that MLflow finds by the bundle digest), which the app reports on ``/api/v1/model``;
2. when a DVC remote is configured, ``dvc add`` + ``dvc push`` of it; the model version
   records the DVC entry (pipeline/registry_fetch.py ``--from dvc``), so no
   ``.dvc`` file is left for git. Without a remote it says so and skips DVC:
   there is nowhere to push, and a ``.dvc`` file would only make the tree dirty;
3. uploads it to the training run, registers it as a model version and moves the alias;
4. only then, for ``promote.alias``, swaps it into ``models/production/`` (a rename the app hot-reloads): a promote
   that fails or is killed before the alias moved leaves ``models/production/`` as it was, so the host never
   serves a model the registry does not name. Killed between the alias move and the swap, the registry is ahead
   of the host: rerunning promote, or ``release sync``, installs what the alias names. A candidate alias
   (``SHELFCAST_PROMOTE_ALIAS``: CI's ``shadow``, or ``canary``; any other alias is refused) is published and
   registered, never installed here: ``release`` installs candidates where they serve. Another host's move of
   production landing after this one's: once installed, the alias is read again and the version it names then is
   installed instead (``follow_production``).

A bundle already registered (a version tagged with its digest) is not uploaded or registered again: the alias moves
to that version and ``models/production/`` gets that version's own serving bundle (downloaded, verified against its
``serving_digest``), so what is installed is always what the registry serves; with a DVC remote, that version's DVC
entry is checked there (``dvc status -c``) and pushed again when the remote lost it; a version that records none
(registered where no remote was configured) has the registry's copy pushed and its entry recorded. Re-running is
harmless. Two
promotes of one bundle on two hosts at once register one version (tracking.register_production).

    python -m pipeline.promote [--root DIR]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import yaml

from pipeline import champion, registry_fetch, tracking
from pipeline.atomic import DirectoryBusy, one_writer, remove_abandoned_copies, swap_in_directory
from pipeline.bundle import BundleError, verify_bundle
from pipeline.bundle_checks import load_servable
from pipeline.dvc_remote import RemoteListError, remote_names
from pipeline.dvc_remote import dvc as _dvc
from pipeline.dvc_remote import failure as dvc_failure
from pipeline.dvc_remote import reason as dvc_reason
from pipeline.evaluate import (BACKTEST_FILE, CANDIDATE_DIR, EVALUATION_FILE, METRICS_FILE, RESULT_FILES,
                               candidate_made_from_other_inputs, current_versions, evaluation_run_params,
                               verdict_problem)
from pipeline.model_params import evaluate_params, promote_params
from pipeline.params import load_yaml
from pipeline.serving_bundle import roll_forward
from pipeline.stage import StageError, run_stage

PRODUCTION_DIR = "models/production"
CANDIDATE_STAGING = registry_fetch.DVC_STAGING  # + alias: the bundle while it is published and registered
REFUSED = 3
WORSE_THAN_PRODUCTION = 2  # the champion/challenger rule: a gate said no, as evaluate's threshold test exits


class PromotionRefused(RuntimeError):
    """The candidate may not be promoted; the message says why and what to do."""


def check_candidate(root: Path, raw_params, candidate_root: Path | None = None) -> tuple[dict, str]:
    """(evaluation, bundle digest) of a candidate that may be promoted, else PromotionRefused.

    ``candidate_root`` (default ``root``): where the candidate and its evaluation are (``sweep/``
    for ``pipeline.sweep``'s best); the data and code it was evaluated on are the project's.
    """
    home = root if candidate_root is None else Path(candidate_root)
    path = home / EVALUATION_FILE
    if not path.is_file():
        raise PromotionRefused(f"{path}: no evaluation found; run `dvc repro` (train + evaluate) first")
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PromotionRefused(f"{path}: unreadable ({exc})") from None
    if not isinstance(evaluation, dict):
        raise PromotionRefused(f"{path}: {verdict_problem(evaluation)}; run `dvc repro evaluate` to write it again")
    if evaluation.get("passed") is not True:
        failures = evaluation.get("failures")
        failures = [failures] if isinstance(failures, str) else failures  # one rule written as itself, not a list
        reasons = "; ".join(map(str, failures)) if isinstance(failures, list) and failures else "no verdict recorded"
        raise PromotionRefused(f"the candidate failed its evaluation: {reasons}")
    if not isinstance(evaluation.get("improvement_interval"), dict):
        raise PromotionRefused(f"{path}: a verdict without the backtest's improvement interval (an older evaluate's); "
                               "run `dvc repro evaluate` to judge the candidate by the current threshold test")
    problem = verdict_problem(evaluation)
    if problem is not None:
        raise PromotionRefused(f"{path}: {problem}; run `dvc repro evaluate` to write it again")
    try:
        digest = verify_bundle(home / CANDIDATE_DIR)
    except BundleError as exc:
        raise PromotionRefused(f"the candidate bundle cannot be trusted: {exc}") from None
    if digest != evaluation.get("bundle_digest"):
        raise PromotionRefused(f"{home / CANDIDATE_DIR} changed since it was evaluated (bundle digest {digest[:12]} vs "
                               f"evaluated {str(evaluation.get('bundle_digest'))[:12]}); run `dvc repro` again")
    now = current_versions(root, raw_params)
    for key, label in (("code_version", "model code (engine/ and the pipeline modules of train/evaluate)"),
                       ("data_version", "data"),
                       ("params_version", "params (features, train, evaluate)")):
        if now[key] != evaluation.get(key):
            raise PromotionRefused(f"the {label} changed since the evaluation; run `dvc repro` to evaluate the "
                                   "current state before promoting")
    metadata = json.loads((home / CANDIDATE_DIR / "bundle.json").read_text(encoding="utf-8"))  # verified above
    other = candidate_made_from_other_inputs(root, metadata if isinstance(metadata, dict) else {}, raw_params)
    if other:  # the verdict's hashes are of the inputs now, not of what the candidate was trained on
        raise PromotionRefused(f"{home / CANDIDATE_DIR} was trained from other {' and '.join(other)} than train reads "
                               "now: its evaluation judged a model these do not make; run `dvc repro` (train + "
                               "evaluate) before promoting")
    named, name = evaluation.get("bundle_name"), promote_params(raw_params).model_name
    if named != name:  # the bundle says its name wherever it serves: registered under another, it would lie
        raise PromotionRefused(f"the candidate bundle is named {named!r}, promote.model_name is {name!r}; run `dvc "
                               "repro` (train names the bundle after it) before promoting")
    return evaluation, digest


def training_run(root: Path, digest: str):
    """The MLflow run that trained the candidate (tagged with its bundle digest), else PromotionRefused."""
    found = tracking.run_of_bundle(root, digest)
    if found is None:
        raise PromotionRefused(f"no finished MLflow training run at {tracking.shown_uri(root)} is tagged with "
                               f"the candidate's bundle digest {digest[:12]} (was it trained by pipeline.train against "
                               "this tracking store? run `dvc repro -f -s train` to train it here)")
    return found


def evaluation_run(root: Path, home: Path, raw_params, evaluation: dict, digest: str, trained_run_id: str,
                   say) -> str:
    """The id of the MLflow run of the evaluation being promoted on (the one that wrote this evaluation.json).

    A fresh clone's ``dvc repro`` retrains (DVC's cache is empty) but skips evaluate, whose verdict for this exact
    bundle is already in the committed results/: that evaluation is then recorded here, nested under the training
    run as evaluate would have (tag ``recorded_by: promote``), so every promoted version links to its evaluation."""
    text = (home / EVALUATION_FILE).read_text(encoding="utf-8")
    digest_tag = {tracking.EVALUATION_DIGEST_TAG: tracking.evaluation_digest(text)}
    found = tracking.run_of_bundle(root, digest, "evaluate", tags=digest_tag)
    if found is not None:
        return found.info.run_id

    def results(name: str) -> dict:
        try:
            doc = json.loads((home / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}  # a hand-edited list or number: recorded without it

    headline = results(METRICS_FILE) or {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
    recorded = tracking.log_evaluation(
        root, trained_run_id, passed=True, headline=headline, windows=results(BACKTEST_FILE).get("windows", []),
        params=evaluation_run_params(evaluate_params(raw_params), evaluation["rule"]), bundle_digest=digest,
        evaluation_json=text, tags={"recorded_by": "promote"},
        artifacts=[home / f for f in RESULT_FILES if (home / f).exists()])
    say(f"promote: recorded the evaluation in {EVALUATION_FILE} as MLflow run {recorded.run_id} (no evaluate run in "
        "this store wrote it: DVC skipped evaluate, its verdict for this bundle already in results/, or the run was "
        "deleted)")
    return recorded.run_id


def provenance(run) -> dict[str, str]:
    """What the production bundle says about where it came from: the training run's time, commit and id."""
    created = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc).replace(microsecond=0)
    return {"created": created.isoformat(), "git_commit": run.data.tags.get("git_commit", "unknown"),
            "mlflow_run_id": run.info.run_id}


def track_with_dvc(root: Path, bundle_dir: Path, shown: str | None = None) -> tuple[str, Path | None]:
    """dvc add + push the promoted bundle when a DVC remote is configured (``shown``: what the note calls it, e.g.
    models/production for its staging copy).

    Returns (what was done, the ``.dvc`` file written: the caller records its entry, then removes it).
    """
    relative = bundle_dir.relative_to(root).as_posix()
    shown = shown or relative
    if not (root / ".dvc").is_dir():
        return f"not a DVC project: {shown} not tracked", None
    try:
        remotes = remote_names(root)
    except RemoteListError as exc:  # e.g. a .dvc/config a merge left conflict markers in: not "no remote"
        return (f"`dvc remote list` failed ({exc.reason}): {shown} not DVC-tracked or pushed (the registry's "
                "artifact store has it)"), None
    if not remotes:
        return (f"no DVC remote configured: {shown} not DVC-tracked (the registry's artifact store has it; "
                "`dvc remote add -d NAME URL` makes promote push it too)"), None
    added = _dvc(root, "add", relative)
    if added.returncode != 0:  # a local failure (the cache, the .gitignore): DVC's reason on one line
        message = dvc_reason(added)
        if "git-ignored" in message:
            message += (f" (un-ignore it, e.g. .gitignore: `/models/*` and `!/{relative}.dvc`)")
        raise PromotionRefused(f"`dvc add {relative}` failed: {message}; nothing registered: promote again once "
                               "fixed")
    dvc_file = root / f"{relative}.dvc"
    pushed = _dvc(root, "push", f"{relative}.dvc")
    if pushed.returncode != 0:
        dvc_file.unlink(missing_ok=True)
        raise PromotionRefused(f"{dvc_failure(f'dvc push {relative}.dvc', pushed)}; nothing registered: promote "
                               "again once fixed")
    return (f"dvc add + push to the configured remote ({remotes[0]}); the model version records its "
            "DVC entry"), dvc_file


DVC_CHECK = f"{CANDIDATE_STAGING}dvc-check"  # where a registered version's DVC entry is checked and pushed again
LOST = ("neither locally nor on remote",)  # `dvc status -c`: objects in neither the cache nor the remote


def _in_dvc_remote(root: Path, shown: str) -> str:
    """Where the objects of the .dvc file ``shown`` are: "remote" (there, whether or not cached here), "cache" (here
    only: a push sends them) or "lost" (neither: the registry's copy is needed); PromotionRefused when DVC cannot
    say (the remote unreachable, credentials refused)."""
    done = _dvc(root, "status", "-c", "--json", shown)
    if done.returncode != 0:
        raise PromotionRefused(f"{dvc_failure(f'dvc status -c {shown}', done)}; nothing moved: promote again once "
                               "fixed")
    if any(sign in done.stderr for sign in LOST):  # DVC says "{}" (nothing to push) and only warns
        return "lost"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        states = json.loads(lines[-1]) if lines else {}
    except ValueError:
        states = None
    if not isinstance(states, dict):
        raise PromotionRefused(f"`dvc status -c --json {shown}` answered {done.stdout.strip()[:80]!r}, not a JSON "
                               "object; nothing moved")
    if all(state == "deleted" for state in states.values()):  # "deleted": in the remote, not in this cache
        return "remote"
    return "cache" if all(state in ("new", "deleted") for state in states.values()) else "lost"


def ensure_in_dvc_remote(root: Path, version) -> str:
    """A bundle promoted again is not published again (its version is registered), so the DVC remote was never
    looked at: objects it had lost (a bucket emptied, a `dvc gc -c` elsewhere) stayed lost, and `fetch-model
    MODEL_SOURCE=dvc` failed for good. Its recorded entry (``dvc_out``) is checked with `dvc status -c` (one call,
    ~1.5 s, nothing sent when present) and pushed again when missing: from this clone's DVC cache, else from the
    registry's copy (downloaded, verified against ``serving_digest``, `dvc add`-ed: the same hash). Returns what
    was done; PromotionRefused, before anything moved, when DVC fails."""
    head = f"version {version.version}'s serving bundle is in the registry: nothing uploaded"
    recorded = (version.tags or {}).get(registry_fetch.TAG_DVC)
    try:
        remotes = remote_names(root) if (root / ".dvc").is_dir() else []
    except RemoteListError as exc:  # e.g. conflict markers in .dvc/config: not "no remote"
        return f"{head}; `dvc remote list` failed ({exc.reason}): its DVC entry not checked in the remote"
    if not recorded and not remotes:
        return f"{head} or pushed (the version records no DVC entry, and there is no DVC remote here to push it to)"
    if not remotes:
        return f"{head}; no DVC remote here to check its DVC entry in"
    if not recorded:  # registered where no remote was configured: pushed now, and its entry recorded
        return _push_unrecorded(root, version, remotes[0], head)
    try:
        entry = json.loads(recorded)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("md5"), str):  # a tag edited by hand, or cut short
        return f"{head}; its {registry_fetch.TAG_DVC} tag is no DVC output entry: not checked in the DVC remote"
    with _dvc_staging(root) as (staging, dvc_file):
        shown = dvc_file.relative_to(root).as_posix()
        dvc_file.write_text(yaml.safe_dump({"outs": [{**entry, "path": staging.name}]}, sort_keys=False),
                            encoding="utf-8")
        where = _in_dvc_remote(root, shown)
        if where == "remote":
            return f"{head}; its DVC entry is in the DVC remote (`dvc status -c`): nothing pushed"
        source = "from this clone's DVC cache"
        if where == "lost":
            source = "from the registry's copy"
            made = _add_registry_copy(root, version, staging, dvc_file).get("md5")
            if made != entry["md5"]:
                raise PromotionRefused(f"version {version.version}: its registry bundle hashes to {made} in DVC, not "
                                       f"the recorded {entry['md5']}; nothing pushed or moved")
        _push_staged(root, shown)
        return f"{head}; the DVC remote had lost it: pushed again {source} ({remotes[0]})"


def _push_unrecorded(root: Path, version, remote: str, head: str) -> str:
    """A version registered where no DVC remote was configured records no DVC entry, so a re-promote with a remote
    never pushed it and `fetch-model MODEL_SOURCE=dvc` refused it for good: its serving bundle is downloaded from
    the registry (verified against ``serving_digest``), `dvc add`-ed, pushed, and the entry recorded on the version
    (as publish records it). PromotionRefused, before anything moved, when DVC fails."""
    with _dvc_staging(root) as (staging, dvc_file):
        entry = _add_registry_copy(root, version, staging, dvc_file)
        _push_staged(root, dvc_file.relative_to(root).as_posix())
        tracking.client(root).set_model_version_tag(version.name, str(version.version), registry_fetch.TAG_DVC,
                                                    json.dumps(entry, sort_keys=True))
    return (f"{head}; it recorded no DVC entry (registered where no DVC remote was configured): its registry copy "
            f"pushed to the DVC remote ({remote}) and the entry recorded on the version")


@contextlib.contextmanager
def _dvc_staging(root: Path):
    """(folder, its .dvc file) at DVC_CHECK, where a version's bundle is staged to check or push its DVC entry:
    empty to start with (a killed promote's removed), removed after."""
    staging = root / DVC_CHECK
    dvc_file = staging.with_name(staging.name + ".dvc")

    def clean() -> None:
        dvc_file.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)

    clean()
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging, dvc_file
    finally:
        clean()


def _add_registry_copy(root: Path, version, staging: Path, dvc_file: Path) -> dict:
    """The version's serving bundle downloaded from the registry into ``staging`` (verified against
    ``serving_digest``) and `dvc add`-ed: the DVC output entry that made (PromotionRefused when DVC fails)."""
    registry_fetch.download_version(root, version, staging)
    relative = staging.relative_to(root).as_posix()
    added = _dvc(root, "add", relative)
    if added.returncode != 0:
        raise PromotionRefused(f"`dvc add {relative}` failed: {dvc_reason(added)}; nothing moved: promote again once "
                               "fixed")
    return ((yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or [{}])[0]


def _push_staged(root: Path, shown: str) -> None:
    """`dvc push` of the staged .dvc file ``shown`` (PromotionRefused, before anything moved, when it fails)."""
    pushed = _dvc(root, "push", shown)
    if pushed.returncode != 0:
        raise PromotionRefused(f"{dvc_failure(f'dvc push {shown}', pushed)}; nothing moved: promote again once fixed")


def registered_serving_digest(version, name: str, digest: str) -> str:
    """The serving digest of the version already registered from this bundle, else PromotionRefused: without one
    (registered by hand, or not judged by the threshold test) there is no serving bundle to install or serve."""
    try:
        return registry_fetch.promoted_digest(version)
    except registry_fetch.FetchError:
        raise PromotionRefused(
            f"{name} version {version.version} is this bundle ({digest[:12]}) already, but has no serving bundle "
            f"promote made ({registry_fetch.TAG_DIGEST} tag, {tracking.VERDICT_TAG}=passed): registered by hand or "
            "by another tool, it cannot be installed; delete that version in the registry and promote again") from None


def installed_digest(bundle_dir: Path) -> str | None:
    try:
        return verify_bundle(bundle_dir)
    except BundleError:
        return None  # none, or damaged: replaced


def refuse_unservable(staging: Path, candidate: Path) -> None:
    """PromotionRefused unless the rolled-forward bundle passes the app's own check that it can serve
    (pipeline/bundle_checks.py): one the app would refuse is never registered or installed."""
    try:
        load_servable(staging)
    except BundleError as exc:  # its graph and weights are the candidate's: named there, not by the staging copy
        reason = str(exc).replace(str(staging), f"{candidate} rolled forward")
        raise PromotionRefused(f"the candidate cannot serve: {reason}; nothing registered or installed") from None


def publish(root: Path, home: Path, digest: str, trained, tags: dict, staging: Path, name: str, alias: str,
            shown: str, say=lambda *a: None, *, production: str) -> tuple:
    """Roll the candidate forward into ``staging``, push it to DVC (with a remote), upload it to its training run,
    register it and move the alias (``production``: production's alias, promote.alias); returns (version, created,
    what DVC did).

    Another host's promote of the same bundle (a second CI runner on one tracking server) may register it first:
    the registry then keeps that version (tracking.register_production keeps one per bundle, the lowest), the
    alias moves there, and ``staging`` is made that version's serving bundle, so the host installs what the
    registry serves."""
    roll_forward(root, home / CANDIDATE_DIR, staging, digest, provenance(trained))
    refuse_unservable(staging, home / CANDIDATE_DIR)
    dvc_note, dvc_file = track_with_dvc(root, staging, shown)
    try:  # the rolled-forward bundle goes to the registry's artifact store: the app side fetches it by alias
        tags = {**tags, **registry_fetch.publish_serving_bundle(root, trained.info.run_id, staging)}
    finally:  # its DVC entry, when there is one, is now a tag of the model version: nothing is left for git
        if dvc_file is not None:
            dvc_file.unlink(missing_ok=True)
    # The alias moves last: it is what says "this is production" to everyone reading the registry.
    version, created = tracking.register_production(root, trained.info.run_id, digest, tags, name=name, alias=alias,
                                                    production=production)
    if not created:  # registered meanwhile by another promote: its serving bundle, not this host's roll, is served
        serving = registered_serving_digest(version, name, digest)
        if installed_digest(staging) != serving:
            shutil.rmtree(staging, ignore_errors=True)
            registry_fetch.download_version(root, version, staging)  # verified against serving_digest
        say(f"promote: another promote registered this bundle meanwhile as version {version.version}: that version "
            "is kept and installed (one version per bundle; a duplicate this promote registered is deleted)")
    return version, created, dvc_note


def run(root: Path, quiet: bool = False, candidate_root: Path | None = None) -> dict:
    """Promote the evaluated candidate (see the module docstring); one promote or release at a time writes models/."""
    home = root if candidate_root is None else Path(candidate_root)
    raw = load_yaml(home / "params.yaml")  # read before promote takes models/ to write (run elsewhere: none made)
    with one_writer((root / PRODUCTION_DIR).parent, "promote"):
        return _promote(root, quiet, home, raw)


def _promote(root: Path, quiet: bool, home: Path, raw: dict) -> dict:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    pparams = promote_params(raw)
    alias = registry_fetch.promote_alias(pparams.alias)  # refused before anything is written
    evaluation, digest = check_candidate(root, raw, home)
    trained = training_run(root, digest)
    registered = tracking.version_of_bundle(root, digest, pparams.model_name)  # then installed, not uploaded again
    serving = None if registered is None else registered_serving_digest(registered, pparams.model_name, digest)
    try:
        comparison = champion.challenge(root, home, raw, digest, root / PRODUCTION_DIR, say)
    except champion.WorseThanProduction as refused:  # nothing registered or installed; the run says why
        try:
            versions = tracking.model_versions(tracking.client(root), f"run_id='{trained.info.run_id}'")
            if versions:  # a registered version's run keeps the comparison it was promoted on
                print(f"promote: note: the refusal is not recorded on the training run {trained.info.run_id}: version "
                      f"{min(int(v.version) for v in versions)} was registered from it, and its record is the "
                      "comparison it was promoted on", file=sys.stderr)
            else:
                champion.record(root, pparams.model_name, None, trained.info.run_id, refused.comparison)
        except Exception as exc:  # noqa: BLE001  (any failure of MLflow here must not hide the refusal itself)
            print(f"promote: note: the refusal is not recorded on the training run {trained.info.run_id} in MLflow "
                  f"({type(exc).__name__}: {tracking.without_credentials((str(exc).splitlines() or [''])[0])})",
                  file=sys.stderr)
        raise
    say(f"promote: {comparison.note}")
    interval = evaluation["improvement_interval"]
    tags = {"bundle_version": str(evaluation.get("bundle_version")), "code_version": evaluation["code_version"][:16],
            # named as the evaluation run's metrics: the validation window's score, the backtest windows' interval
            "heldout_validation_candidate_nwrmsle": f"{evaluation['candidate_nwrmsle']:.6f}",
            "heldout_backtest_improvement": f"{interval['estimate']:.6f} [{interval['low']:.6f}, "
                                            f"{interval['high']:.6f}] ({interval['confidence']:.0%}, "
                                            f"{interval['series']} series)",
            "threshold_test": "passed",
            "evaluation_run_id": evaluation_run(root, home, raw, evaluation, digest, trained.info.run_id, say),
            **comparison.tags()}
    # Production (params' alias) is installed on this host; a candidate alias (CI's SHELFCAST_PROMOTE_ALIAS=shadow)
    # is only published: `release` installs candidates, and this host's production stays what it serves.
    production = alias == pparams.alias
    # a bundle registered before is not published again: its DVC entry is checked in the remote, pushed when lost
    dvc_note = None if registered is None else ensure_in_dvc_remote(root, registered)
    if not production and registered is not None:
        serving_now = tracking.production_version(root, pparams.model_name, pparams.alias)
        if serving_now is not None and str(serving_now.version) == str(registered.version):
            say(f"promote: {pparams.model_name} version {registered.version} is '{pparams.alias}' already: "
                f"'{alias}' not moved (a candidate of production would be judged against itself: nothing to release)")
            return {"model": pparams.model_name, "version": str(registered.version), "alias": alias, "moved": False,
                    "registered": False, "installed": False, "digest": digest,
                    "dvc": dvc_note, "champion_challenger": comparison.to_json()}
    target, staging = root / PRODUCTION_DIR, root / f"{CANDIDATE_STAGING}{alias}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # a killed promote's
    try:  # nothing reaches models/production before the alias has moved: on any failure it stays as it was
        if registered is None:
            version, created, dvc_note = publish(root, home, digest, trained, tags, staging, pparams.model_name, alias,
                                                 PRODUCTION_DIR if production else staging.relative_to(root).as_posix(),
                                                 say, production=pparams.alias)
        else:
            if production and installed_digest(target) != serving:
                registry_fetch.download_version(root, registered, staging)  # verified against serving_digest
            version, created = tracking.register_production(root, registered.run_id, digest, tags,
                                                            name=pparams.model_name, alias=alias,
                                                            production=pparams.alias)
        installed = production and staging.is_dir()
        if installed:
            remove_abandoned_copies(target)
            swap_in_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if production:  # another host's move landing after this one's leaves the registry naming another version
        installed = follow_production(root, pparams.model_name, alias, str(version.version)) or installed
    adopted = registered is None and not created  # another promote registered it meanwhile: its record stands
    if (created or comparison.status != champion.SAME_BUNDLE) and not adopted:  # already that version: its record
        champion.record(root, pparams.model_name, None if created else str(version.version), version.run_id,
                        comparison)  # is what it was promoted on, never "already production" (`make run` promotes)
    summary = {"model": pparams.model_name, "version": str(version.version), "alias": alias, "moved": True,
               "registered": created, "installed": installed, "digest": digest, "dvc": dvc_note,
               "champion_challenger": comparison.to_json()}
    # the candidate's digest, and the serving bundle's (its own digest: the one the app, `release status` and
    # `make fetch-model` report) where this host serves it
    served = installed_digest(root / PRODUCTION_DIR) if production else None
    digests = f"candidate {digest[:12]}" + (f", served as {served[:12]}" if served else "")
    where = (f"{PRODUCTION_DIR} {'installed' if installed else 'already up to date'}" if production else
             f"{PRODUCTION_DIR} left as it is ('{alias}' is a candidate: `release sync` installs it where it serves)")
    say(f"promote: {pparams.model_name} version {version.version} "
        f"({'newly registered' if created else 'already registered'}) is now '{alias}'; "
        f"{where} ({digests}); {dvc_note}")
    return summary


def follow_production(root: Path, name: str, alias: str, moved: str) -> bool:
    """After this host moved production to ``moved`` and installed it: when the alias names another version now
    (another host's promote or release moved it after this one), install that version's serving bundle instead, as
    `release sync` would (before, this host served ``moved`` until someone ran it). Returns whether it installed."""
    now = tracking.production_version(root, name, alias)
    if now is None or str(now.version) == moved:
        return False
    target, staging = root / PRODUCTION_DIR, root / f"{CANDIDATE_STAGING}{alias}"
    serving = registry_fetch.promoted_digest(now)  # FetchError: registered by hand, nothing this host can serve
    if installed_digest(target) != serving:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            registry_fetch.download_version(root, now, staging)  # verified against serving_digest
            remove_abandoned_copies(target)
            swap_in_directory(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"promote: another move made version {now.version} '{alias}' after this promote moved it to {moved} "
          f"(another host's promote or release): {PRODUCTION_DIR} now holds version {now.version}, as the registry "
          "names it", file=sys.stderr)
    return True


def main(argv=None) -> int:
    def body(args) -> int | None:
        candidate = None if args.candidate is None else args.root / args.candidate
        if candidate is not None and not candidate.is_dir():  # said before promote takes models/ to write
            raise StageError(f"--candidate {candidate}: no such directory (a folder laid out like the project, such "
                             "as the sweep/ that `python -m pipeline.sweep`, i.e. `make sweep`, leaves: run that "
                             "first)")
        try:
            with tracking.mlflow_errors_named(args.root):
                run(args.root, candidate_root=candidate)
        except PromotionRefused as exc:
            print(f"promote: refused: {exc}", file=sys.stderr)
            return REFUSED
        except champion.WorseThanProduction as exc:
            print(f"promote: refused: {exc}", file=sys.stderr)
            return WORSE_THAN_PRODUCTION
        return None

    def options(parser) -> None:
        parser.add_argument("--candidate", type=Path, default=None, metavar="DIR",
                            help="promote the candidate evaluated in DIR (params.yaml, models/candidate, results/), "
                                 "e.g. sweep for `python -m pipeline.sweep`'s best; default: the project's own")

    return run_stage("promote", body, argv, errors=(BundleError, tracking.TrackingError, registry_fetch.FetchError,
                                                   DirectoryBusy),
                     description=__doc__.splitlines()[0], options=options)


if __name__ == "__main__":
    sys.exit(main())
