"""``prune`` (``make prune``): bound what daily retrains accumulate, keeping everything a release can need.

Every cycle of ``dvc repro`` + ``promote`` adds a training run and an evaluation run to MLflow (the candidate
bundle, and for a promoted one its serving bundle, as artifacts), usually a model version, and new data and model
objects to the DVC cache and remote. None of it is ever removed by the pipeline (README "Disk over a year of
retrains" has the measured growth). This removes the old ones and never what these still name:

- the registered versions an alias names (``production``, ``canary``, ``shadow``, any other), the version a
  rollback returns to (the registered model's ``previous_production`` tag, and production's ``production_move``
  record's), the versions this host serves or
  keeps in ``releases/`` (project ``models/`` and ``--models``), the current candidate's (``models/candidate``, by
  its digest), and the newest ``prune.keep_versions``; another registered model's versions are not this prune's
  (``promote.model_name`` names the one it judges): all they name stays;
- the MLflow runs behind those versions, the current candidate's runs, the newest ``prune.keep_runs`` training
  runs, any run still RUNNING, and the evaluation runs nested under a kept run; a run of any other kind (a sweep's)
  is left alone, and so is a run of another registered model (``tracking.REGISTERED_MODEL_TAG``: another project
  sharing the tracking server, the name before a rename), and a run without that tag (made before runs recorded it)
  unless a version of this model was registered from it (``own_run``). An evaluation run is its training run's,
  whatever model it records (one made after a rename records the new name under a run of the old): it goes with
  that run, and stays with it. A kept run deleted by hand (the MLflow UI)
  is restored: deleted, it lives only until the next ``mlflow gc``, which would remove a kept version's bundle for
  good. A training run (or its evaluation) deleted by hand that nothing keeps is garbage-collected with the runs
  prune deletes, so its artifacts are freed;
- in DVC: what the workspace's ``dvc.lock`` and ``.dvc`` files, the tips of all branches and all tags use, plus the
  DVC entry (``dvc_out``) of every kept version (production's bundle and rollback's are not used by any ``.dvc`` file:
  promote deletes its ``.dvc`` once the version records the entry, so a bare ``dvc gc -w`` deleted them).

Order: the kept runs deleted by hand are restored first (before any ``mlflow gc`` can run), then model versions
are deleted, then runs (deleted, then ``mlflow gc`` on a local store, which removes their artifacts for good),
then ``dvc gc`` of the cache, and of the remote when ``prune.dvc_remote`` is true. ``--dry-run`` lists all of it
and deletes (and restores) nothing; a prune that stops after deleting something (``dvc gc`` failing, Ctrl-C) says
what it deleted so far (``stopped_line``) before its error. One writer at a time: it holds ``models/``'s lock, as
promote and release do.
Two prunes of one store from two checkouts (two CI jobs) both plan the same deletions: a version or run the other
deleted first (``tracking.is_gone``) is done, counted as deleted by another, not as this prune's. A
version the registry names by the time it is reached (another checkout's promote or canary of it) is kept, with its
runs and DVC entry (``_named_since``); a version registered since the plan (another checkout's promote) keeps its
runs and DVC entry (``keep_registered_since``).

    python -m pipeline.prune [--dry-run] [--models DIR]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from pipeline import dvc_remote, registry_fetch, tracking
from pipeline.atomic import DirectoryBusy, one_writer
from pipeline.bundle import BundleError, verify_bundle
from pipeline.model_params import production_alias, promote_params
from pipeline.params import ParamsError, _Section, load_yaml, names_file
from pipeline.release_store import RELEASES, VARIANTS
from pipeline.stage import StageError, run_stage

CANDIDATE_DIR = "models/candidate"
# What `mlflow gc` prints of each run it removes (MLflow 3's wording; unmatched, a run is taken as another's)
GC_REMOVED = re.compile(r"Run with ID (\S+) has been permanently deleted")
GC_ATTEMPTS = 4  # `mlflow gc` runs, while each failed one finds runs another prune removed meanwhile
KEEP_FILE_PREFIX = ".prune-keep-"  # + version + .dvc: at the project root, where `dvc gc` reads .dvc files (it
# never walks models/, which .gitignore's `/models/*` hides from it); written for one gc, removed after it


@dataclass(frozen=True)
class PruneParams:
    keep_versions: int  # newest registered versions kept besides those something names
    keep_runs: int  # newest training runs kept besides those behind kept versions
    dvc_remote: bool  # also `dvc gc --cloud` the default remote
    dvc_projects: tuple[str, ...] = ()  # other projects' folders whose data the shared remote keeps (dvc gc -p)


@names_file
def prune_params(raw: Mapping[str, Any]) -> PruneParams:
    s = _Section.of(raw, "prune", ("keep_versions", "keep_runs", "dvc_remote", "dvc_projects"))
    remote = s._get("dvc_remote")
    if not isinstance(remote, bool):
        raise ParamsError(f"prune.dvc_remote: expected true or false, got {remote!r}")
    projects = s.values.get("dvc_projects") or []  # optional: a params.yaml from before it keeps working
    if not isinstance(projects, list) or not all(isinstance(p, str) and p.strip() for p in projects):
        raise ParamsError(f"prune.dvc_projects: expected a list of project folders, got {projects!r}")
    return PruneParams(keep_versions=s.integer("keep_versions", 0), keep_runs=s.integer("keep_runs", 0),
                       dvc_remote=remote, dvc_projects=tuple(p.strip() for p in projects))


@dataclass
class Plan:
    model_name: str
    kept_versions: dict[str, list[str]] = field(default_factory=dict)  # version -> why kept
    versions: list[str] = field(default_factory=list)  # to delete
    kept_runs: dict[str, str] = field(default_factory=dict)  # run id -> why kept
    runs: dict[str, int | None] = field(default_factory=dict)  # to delete: run id -> artifact bytes (None: remote)
    dvc_keep: dict[str, dict] = field(default_factory=dict)  # kept version -> its DVC entry
    run_dirs: list[Path] = field(default_factory=list)  # the deleted runs' local artifact folders
    restore: dict[str, str] = field(default_factory=dict)  # kept runs deleted by hand -> why kept
    freed: dict[str, int | None] = field(default_factory=dict)  # runs deleted by hand, kept by nothing: gc only
    unclaimed: int = 0  # training runs without REGISTERED_MODEL_TAG that are not this model's by its registry: left
    versions_by_another: list[str] = field(default_factory=list)  # planned, found deleted by another prune
    versions_named_since: list[str] = field(default_factory=list)  # planned, named by the registry when reached: kept
    alias: str = "production"  # production's alias, whose move record names what a rollback returns to
    parents: dict[str, str] = field(default_factory=dict)  # a planned nested run (an evaluation) -> its parent run
    runs_by_another: list[str] = field(default_factory=list)  # planned (runs or freed), removed by another prune
    seen: set[tuple[str, str]] = field(default_factory=set)  # (model, version) of every version the plan read
    registered_since: list[str] = field(default_factory=list)  # versions of any model registered after the plan
    done: dict[str, list[str]] = field(default_factory=lambda: {"versions": [], "runs": [], "restored": []})
    # ^ what this prune has deleted (and restored) so far, each as it went: said when it stops before the end
    collected: str | None = None  # what its `mlflow gc` did (or, on a server, the command to run), once it finished

    def summary(self) -> dict:
        runs = {r: size for r, size in self.runs.items() if r not in self.runs_by_another}
        freed = {r: size for r, size in self.freed.items() if r not in self.runs_by_another}
        sizes = [size for size in [*runs.values(), *freed.values()] if size is not None]
        gone = runs or freed
        return {"model": self.model_name,
                "kept_versions": {v: ", ".join(why) for v, why in sorted(self.kept_versions.items(), key=_numeric)},
                "deleted_versions": sorted(set(self.versions) - set(self.versions_by_another)
                                           - set(self.versions_named_since), key=int),
                "kept_runs": len(self.kept_runs), "deleted_runs": sorted(runs),
                "restored_runs": dict(sorted(self.restore.items())), "freed_deleted_runs": sorted(freed),
                "versions_deleted_by_another": sorted(self.versions_by_another, key=int),
                "runs_deleted_by_another": sorted(self.runs_by_another),
                "untagged_runs_left": self.unclaimed, "versions_registered_since": list(self.registered_since),
                "deleted_artifact_bytes": sum(sizes) if sizes else (None if gone else 0)}


def _numeric(item) -> int:
    return int(item[0]) if str(item[0]).isdigit() else -1


def _digest(path: Path) -> str | None:
    try:
        return verify_bundle(path)
    except BundleError:
        return None


def host_digests(models_dirs: list[Path]) -> dict[str, str]:
    """Bundle digest -> where, for every bundle this host serves or keeps (variants and releases/)."""
    found: dict[str, str] = {}
    for models in models_dirs:
        places = [models / variant for variant in VARIANTS]
        if (models / RELEASES).is_dir():
            places += sorted(p for p in (models / RELEASES).iterdir() if p.is_dir() and not p.name.startswith("."))
        for place in places:
            digest = _digest(place) if place.is_dir() else None
            if digest is not None:
                found.setdefault(digest, str(place))
    return found


def local_artifact_bytes(artifact_uri: str) -> int | None:
    """Bytes under a run's artifact location when it is a local folder (file:// or a path); None otherwise."""
    path = local_artifact_dir(artifact_uri)
    if path is None:
        return None
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _all_runs(client, experiment_id: str) -> list:
    """Every run of the experiment, the deleted ones (by hand, awaiting `mlflow gc`) too, newest first."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def plan(root: Path, params: PruneParams, model_name: str, models_dirs: list[Path], production: str | None = None
         ) -> Plan:
    """What prune keeps and deletes, and why; reads only. ``production``: production's alias (promote.alias of the
    project's params.yaml unless given), whose version's move record names the version a rollback returns to."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(root, create=False)  # a project with no store has nothing to prune: not given one
    result = Plan(model_name)
    production = production or production_alias(root)
    candidate = _digest(root / CANDIDATE_DIR)
    on_host = host_digests(models_dirs)

    def keep(version: str, why: str) -> None:
        result.kept_versions.setdefault(str(version), []).append(why)

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if not tracking.is_gone(exc):
            raise
        model = None
    versions = [] if model is None else tracking.model_versions(client, f"name='{model_name}'")
    by_number = {str(v.version): v for v in versions}
    result.seen = {(model_name, number) for number in by_number}
    result.alias = production
    if model is not None:
        for version, why in registry_names(model, production, by_number.get).items():
            if version in by_number:
                for reason in why:
                    keep(version, reason)
    for v in versions:
        tags = v.tags or {}
        if tags.get(registry_fetch.TAG_DIGEST) in on_host:
            keep(v.version, f"on this host: {on_host[tags[registry_fetch.TAG_DIGEST]]}")
        if candidate is not None and tags.get(tracking.BUNDLE_DIGEST_TAG) == candidate:
            keep(v.version, f"the current candidate ({CANDIDATE_DIR})")
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True)[:params.keep_versions]:
        keep(v.version, f"newest {params.keep_versions} (prune.keep_versions)")
    result.versions = [str(v.version) for v in versions if str(v.version) not in result.kept_versions]
    for number in result.kept_versions:
        recorded = (by_number[number].tags or {}).get(registry_fetch.TAG_DVC) if number in by_number else None
        if recorded:
            result.dvc_keep[number] = dvc_entry(model_name, number, recorded)

    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    runs = [] if experiment is None else _all_runs(client, experiment.experiment_id)
    backing = [(by_number.get(number), f"version {number}") for number in result.kept_versions]
    for index, v in enumerate(other_models_versions(client, model_name)):
        result.seen.add((v.name, str(v.version)))
        # another registered model in this experiment (the name before promote.model_name changed, another
        # project's): not this prune's to judge, so all it names stays: its runs and its DVC entries
        backing.append((v, f"{v.name} version {v.version} (another registered model)"))
        recorded = (v.tags or {}).get(registry_fetch.TAG_DVC)
        if recorded:
            result.dvc_keep[f"other-{index}"] = dvc_entry(v.name, str(v.version), recorded)
    for v, which in backing:
        if v is not None and v.run_id:
            result.kept_runs.setdefault(v.run_id, f"backs {which}")
            evaluation = (v.tags or {}).get("evaluation_run_id")
            if evaluation:
                result.kept_runs.setdefault(evaluation, f"the evaluation of {which}")
    registered = {v.run_id for v in versions} | {(v.tags or {}).get("evaluation_run_id") for v in versions}
    training = [r for r in runs if r.data.tags.get("stage") == "train"]  # newest first
    result.unclaimed = sum(1 for r in training if tracking.REGISTERED_MODEL_TAG not in r.data.tags
                           and r.info.run_id not in registered and r.info.lifecycle_stage != "deleted")
    training = [r for r in training if own_run(r, model_name, registered)]
    active_training = [r for r in training if r.info.lifecycle_stage != "deleted"]  # one deleted by hand is no keep
    for r in active_training[:params.keep_runs]:
        result.kept_runs.setdefault(r.info.run_id, f"newest {params.keep_runs} training runs (prune.keep_runs)")
    for r in runs:
        tags = r.data.tags
        if candidate is not None and tags.get(tracking.BUNDLE_DIGEST_TAG) == candidate:
            result.kept_runs.setdefault(r.info.run_id, f"the current candidate ({CANDIDATE_DIR})")
        if r.info.status == "RUNNING":
            result.kept_runs.setdefault(r.info.run_id, "running")
    for r in runs:  # nested runs follow their parent (an evaluation its training run)
        parent = r.data.tags.get(tracking.PARENT_RUN_TAG)
        if parent in result.kept_runs:
            result.kept_runs.setdefault(r.info.run_id, f"nested under {parent}")
    prunable = {r.info.run_id for r in training}
    # an evaluation is its training run's, whatever model it records: one recorded after a rename (evaluate finds
    # the candidate's run by its digest) records the new name under a run of the old, and went with neither
    prunable |= {r.info.run_id for r in runs if r.data.tags.get(tracking.PARENT_RUN_TAG) in prunable
                 and r.data.tags.get("stage") == "evaluate"}
    for r in runs:
        if r.info.run_id in prunable and r.info.run_id not in result.kept_runs:
            if r.data.tags.get(tracking.PARENT_RUN_TAG):
                result.parents[r.info.run_id] = r.data.tags[tracking.PARENT_RUN_TAG]
            deleted = r.info.lifecycle_stage == "deleted"  # by hand: only `mlflow gc` still has to free it
            (result.freed if deleted else result.runs)[r.info.run_id] = local_artifact_bytes(r.info.artifact_uri)
            if (folder := local_artifact_dir(r.info.artifact_uri)) is not None:
                result.run_dirs.append(folder)
    listed = {r.info.run_id: r.info.lifecycle_stage for r in runs}
    for run_id, why in result.kept_runs.items():
        if why == "running":  # a train deleted while it runs: left as its deleter left it (nor collected)
            continue
        stage = listed.get(run_id) or _lifecycle(client, run_id)  # a kept version's run in another experiment
        if stage == "deleted":
            result.restore[run_id] = why
    return result


def registry_names(model, production: str, version_of) -> dict[str, list[str]]:
    """The versions the registered ``model`` names, and why: its aliases, previous_production (a rollback returns
    to it) and, while production's move is not marked done, what its move record says it replaced. ``version_of``:
    a version number -> its ModelVersion (None if not there)."""
    named: dict[str, list[str]] = {}
    aliases = model.aliases or {}
    for alias, version in aliases.items():
        named.setdefault(str(version), []).append(f"alias {alias}")
    previous = (model.tags or {}).get(tracking.PREVIOUS_PRODUCTION_TAG)
    if previous:  # as rollback reads it: " 3" and "03" name version 3
        named.setdefault(tracking.version_number(previous) or str(previous), []).append(
            f"{tracking.PREVIOUS_PRODUCTION_TAG}: a rollback returns to it")
    serving = None if aliases.get(production) is None else version_of(str(aliases[production]))
    recorded = None if serving is None else tracking.recorded_previous(serving)
    if recorded:  # what rollback returns to while production's move is not marked done
        named.setdefault(recorded, []).append(f"{production}'s {tracking.MOVE_TAG}: a rollback returns to it")
    return named


def own_run(run, model_name: str, registered: set) -> bool:
    """Whether ``run`` is this prune's model's to judge: its REGISTERED_MODEL_TAG names ``model_name``. A run without
    the tag (made before runs recorded it) is so only when a version of ``model_name`` was registered from it or
    names it as its evaluation (``registered``): another project sharing the tracking server and experiment made
    the rest as likely as this one, and nothing else recorded on a run tells them apart."""
    tagged = run.data.tags.get(tracking.REGISTERED_MODEL_TAG)
    return tagged == model_name if tagged is not None else run.info.run_id in registered


def _lifecycle(client, run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage
    except MlflowException as exc:
        if not tracking.is_gone(exc):
            raise
        return None  # gone for good already: nothing to restore


def dvc_entry(name: str, version: str, recorded: str) -> dict:
    """A kept version's recorded DVC entry (its ``dvc_out`` tag), which DVC's gc must keep; StageError, naming the
    version and the tag, when it is no DVC output entry (edited by hand, cut short): DVC's gc could not keep it."""
    try:
        entry = json.loads(recorded)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("md5"), str):
        raise StageError(f"{name} version {version}: its {registry_fetch.TAG_DVC} tag is no DVC output entry with an "
                         f"md5 ({recorded[:80]!r}), so DVC's gc could not keep its bundle; delete the tag (`make "
                         f"promote` of that version then pushes the bundle and records it again), then prune again")
    return entry


def other_models_versions(client, model_name: str) -> list:
    """Every registered version of the models not named ``model_name``."""
    versions, token = [], None
    while True:
        page = client.search_model_versions(max_results=1000, page_token=token)
        versions.extend(v for v in page if v.name != model_name)
        token = page.token
        if not token:
            return versions


def local_artifact_dir(artifact_uri: str) -> Path | None:
    parts = urlsplit(artifact_uri)
    return Path(unquote(parts.path)) if parts.scheme in ("", "file") else None


def remove_empty_run_folders(run_dirs: list[Path]) -> None:
    """``mlflow gc`` deletes a local run's artifact files and leaves its folders (``<run>/artifacts/...``): one
    empty tree per run, for good. Removed here, bottom up, only while empty."""
    for artifacts in run_dirs:
        for folder in sorted((p for p in artifacts.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                             reverse=True) + [artifacts, artifacts.parent]:
            try:
                folder.rmdir()
            except OSError:  # not empty (something else is in it), or gone
                pass


def restore_runs(root: Path, result: Plan) -> None:
    """Restore the kept runs deleted by hand, before anything is deleted or collected: a kept version's run left
    deleted loses its bundle to the next `mlflow gc`, prune's or an operator's."""
    client = tracking.client(root, create=False)
    for run_id in result.restore:
        client.restore_run(run_id)
        result.done["restored"].append(run_id)


def delete_registry(root: Path, result: Plan) -> list[str]:
    """Delete the planned model versions and runs; returns the run ids to garbage-collect (those, and the runs
    deleted by hand that nothing keeps). One another prune deleted first (``tracking.is_gone``) is done: recorded in
    ``result.versions_by_another`` / ``runs_by_another``, and not collected."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(root, create=False)
    for version in result.versions:
        if _named_since(client, result, version):
            continue
        try:
            client.delete_model_version(result.model_name, version)
            result.done["versions"].append(version)
        except MlflowException as exc:
            if not tracking.is_gone(exc):
                raise
            result.versions_by_another.append(version)
    keep_registered_since(client, result)  # a promote that landed meanwhile: its run and evaluation stay
    for run_id in list(result.runs):
        try:
            client.delete_run(run_id)
            result.done["runs"].append(run_id)
        except MlflowException as exc:  # a run deleted but not yet collected is deleted again without a word
            if not tracking.is_gone(exc):
                raise
            result.runs_by_another.append(run_id)
    return [run_id for run_id in [*result.runs, *result.freed] if run_id not in result.runs_by_another]


def _named_since(client, result: Plan, version: str) -> bool:
    """Whether the registry names ``version`` now, judged again just before its deletion: another checkout's promote,
    canary or shadow of it since the plan (MLflow deletes a version's aliases with it: the registry then named no
    production). Such a version is kept, with its runs (a deleted one restored) and its DVC entry. The registry has
    no compare-and-set: a move between this read and the deletion, milliseconds later, is still lost."""
    from mlflow.exceptions import MlflowException

    def version_of(number: str):
        try:
            return client.get_model_version(result.model_name, number)
        except MlflowException as exc:
            if not tracking.is_gone(exc):
                raise
            return None

    try:
        model = client.get_registered_model(result.model_name)
    except MlflowException as exc:
        if not tracking.is_gone(exc):
            raise
        return False
    why = registry_names(model, result.alias, version_of).get(version)
    now = version_of(version) if why else None
    if now is None:
        return False
    result.versions_named_since.append(version)
    result.kept_versions.setdefault(version, []).extend(f"named since prune planned: {reason}" for reason in why)
    recorded = (now.tags or {}).get(registry_fetch.TAG_DVC)
    if recorded:
        result.dvc_keep[version] = dvc_entry(result.model_name, version, recorded)
    _spare_runs(client, result, now, f"backs version {version}, named since prune planned")
    return True


def _spare_runs(client, result: Plan, version, why: str) -> None:
    """Take the runs behind ``version`` (its run, its evaluation, the runs nested under either) out of the planned
    deletions; one deleted by hand is restored, as plan restores a kept run (restore_runs)."""
    spared = {version.run_id, (version.tags or {}).get("evaluation_run_id")} - {None}
    spared |= {run_id for run_id, parent in result.parents.items() if parent in spared}
    for run_id in spared:
        if run_id in result.runs or run_id in result.freed:
            result.kept_runs[run_id] = why
            if run_id in result.freed:
                del result.freed[run_id]
                client.restore_run(run_id)
            result.runs.pop(run_id, None)


def keep_registered_since(client, result: Plan, spare_runs: bool = True) -> None:
    """Keep what a version registered after the plan needs (another checkout's promote landing while prune runs,
    of this model or another): its runs, planned for deletion when older than ``prune.keep_runs``, and its DVC entry,
    which no ``.dvc`` file here names, so ``dvc gc`` would delete its bundle from the cache and remote. Read again
    just before the runs are deleted and again (``spare_runs`` False: they are gone) before ``dvc gc``. The
    registry has no compare-and-set: a promote in the moment between a read and the deletion is still lost."""
    for v in [*tracking.model_versions(client, f"name='{result.model_name}'"),
              *other_models_versions(client, result.model_name)]:
        key = (v.name, str(v.version))
        if key in result.seen:
            continue
        result.seen.add(key)
        mine = v.name == result.model_name
        which = f"version {v.version}" if mine else f"{v.name} version {v.version} (another registered model)"
        result.registered_since.append(f"{v.name} {v.version}")
        if mine:
            result.kept_versions.setdefault(str(v.version), []).append("registered since prune planned")
        recorded = (v.tags or {}).get(registry_fetch.TAG_DVC)
        if recorded:
            slot = str(v.version) if mine else f"since-{len(result.registered_since)}"
            result.dvc_keep[slot] = dvc_entry(v.name, str(v.version), recorded)
        if spare_runs:
            _spare_runs(client, result, v, f"backs {which}, registered since prune planned")


def mlflow_gc(root: Path, run_ids: list[str], result: Plan | None = None) -> str:
    """``mlflow gc`` of the deleted runs on a local store (their artifacts go for good); on a server, the command
    to run where its backend store is. A gc that fails because another prune's gc removed some of the runs first
    (MLflow's gc stops at the first run it cannot find) is run again for the rest; those are recorded in
    ``result.runs_by_another``."""
    if not run_ids:
        return "no MLflow runs to garbage-collect"
    uri = tracking.tracking_uri(root)
    if tracking.local_store_path(uri) is None:
        return (f"{len(run_ids)} runs deleted (recoverable until garbage-collected): on the tracking server's host run "
                f"`mlflow gc --backend-store-uri <its database> --run-ids {','.join(run_ids)}` (with "
                "MLFLOW_TRACKING_URI set to the server when it proxies artifacts) to free their artifacts")
    beside = Path(sys.executable).with_name("mlflow")
    client = tracking.client(root, create=False)
    pending, removed = list(run_ids), set()
    for _ in range(GC_ATTEMPTS):
        done = subprocess.run([str(beside) if beside.exists() else "mlflow", "gc", "--backend-store-uri", uri,
                               "--tracking-uri", uri, "--run-ids", ",".join(pending)], cwd=root, capture_output=True,
                              text=True)
        removed |= set(GC_REMOVED.findall(done.stdout or ""))
        if done.returncode == 0:
            removed |= set(pending)
            break
        gone = [run_id for run_id in pending if _lifecycle(client, run_id) is None]
        by_another = [run_id for run_id in gone if run_id not in removed]
        if not by_another:  # not another prune's doing: as before
            said = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
            raise StageError(f"`mlflow gc` failed ({said[-1] if said else f'exit status {done.returncode}'}); the "
                             "runs are deleted, not yet removed: run prune again")
        if result is not None:
            result.runs_by_another.extend(by_another)
        pending = [run_id for run_id in pending if run_id not in gone]
        if not pending:
            break
    else:
        raise StageError(f"`mlflow gc` failed {GC_ATTEMPTS} times while other prunes removed runs it was given; the "
                         "runs are deleted, not yet removed: run prune again")
    return f"mlflow gc removed {len(removed & set(run_ids))} runs and their artifacts"


def remove_keep_files(root: Path) -> None:
    for stale in root.glob(f"{KEEP_FILE_PREFIX}*.dvc"):
        stale.unlink(missing_ok=True)


def _gc(root: Path, args: list[str]) -> subprocess.CompletedProcess:
    done = dvc_remote.dvc(root, *args)
    if done.returncode != 0:
        raise StageError(dvc_remote.failure(f"dvc {' '.join(args)}", done))
    return done


def dvc_gc(root: Path, result: Plan, cloud: bool, dry_run: bool, projects: tuple[str, ...] = ()) -> dict:
    """``dvc gc`` keeping the workspace, all branch tips and tags, and every kept version's DVC entry. Run with
    ``--dry`` first, which names every object it would remove: their count and (where they are files on this
    machine: the cache, a local remote) bytes, then for real unless ``dry_run``. ``projects``: the folders of other
    DVC projects sharing the remote, whose workspaces ``dvc gc --projects`` keeps too (prune.dvc_projects)."""
    if not (root / ".dvc").is_dir():
        return {"note": "not a DVC project: no DVC cache to collect"}
    note = None
    if cloud:
        try:
            remotes = dvc_remote.remote_names(root)
        except dvc_remote.RemoteListError as exc:  # a .dvc/config it cannot read is not "no remote" (as dvc-push)
            raise StageError(str(exc)) from None
        if not remotes:
            cloud, note = False, "prune.dvc_remote: no DVC remote configured; the cache only"
    remove_keep_files(root)  # what a prune killed midway left
    try:
        for version, entry in result.dvc_keep.items():
            out = {**entry, "path": f"models/{KEEP_FILE_PREFIX.strip('.')}{version}"}
            (root / f"{KEEP_FILE_PREFIX}{version}.dvc").write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False),
                                                                    encoding="utf-8")
        args = ["gc", "--workspace", "--all-branches", "--all-tags", "--force"] + (["--cloud"] if cloud else [])
        if cloud and projects:
            args += ["--projects", *(str((root / project).resolve()) for project in projects)]
        listed = _gc(root, args + ["--dry"])
        doomed = [line[len("Removing "):].strip() for line in listed.stdout.splitlines()
                  if line.startswith("Removing ")]
        freed = sum(os.path.getsize(path) for path in doomed if "://" not in path and os.path.isfile(path))
        if not dry_run:
            _gc(root, args)
    finally:
        remove_keep_files(root)
    return {"objects": len(doomed), "bytes_on_local_disks": freed, "remote": cloud, **({"note": note} if note else {})}


def run(root: Path, dry_run: bool = False, models_dir: Path | None = None) -> dict:
    raw = load_yaml(root / "params.yaml")
    params = prune_params(raw)
    pparams = promote_params(raw)
    name = pparams.model_name
    models = root / "models"
    dirs = [models] + ([models_dir] if models_dir is not None and models_dir.resolve() != models.resolve() else [])
    with one_writer(models, "prune"):
        result = plan(root, params, name, dirs, pparams.alias)
        if dry_run:
            summary = {**result.summary(), "mlflow": "dry run: nothing deleted"}
        else:
            try:
                restore_runs(root, result)  # first: no gc may run while a kept run is deleted
                collected = mlflow_gc(root, delete_registry(root, result), result)
                result.collected = collected
                # a promote that landed since the runs were deleted: its bundle stays in the DVC cache and remote
                keep_registered_since(tracking.client(root, create=False), result, spare_runs=False)
                summary = {**result.summary(), "mlflow": collected}  # what another prune deleted first is not ours
                if tracking.local_store_path(tracking.tracking_uri(root)) is not None:
                    remove_empty_run_folders(result.run_dirs)
                summary["dvc"] = dvc_gc(root, result, params.dvc_remote, dry_run, params.dvc_projects)
            except BaseException:  # a failure (the DVC remote unreachable) or Ctrl-C after it deleted something
                if any(result.done.values()):
                    print(stopped_line(result), flush=True)
                raise
            summary["dry_run"] = dry_run
            return summary
        summary["dvc"] = dvc_gc(root, result, params.dvc_remote, dry_run, params.dvc_projects)
    summary["dry_run"] = dry_run
    return summary


def stopped_line(result: Plan) -> str:
    """What a prune that stops before its end (an error, Ctrl-C) has done already: its report never comes."""
    versions, runs, restored = result.done["versions"], result.done["runs"], result.done["restored"]
    return (f"prune: stopped before the end, after it deleted {len(versions)} model versions"
            + (f" ({', '.join(sorted(versions, key=int))})" if versions else "")
            + f" and {len(runs)} MLflow runs"
            + (f" ({', '.join(sorted(runs))})" if runs else "")
            + (f" and restored {len(restored)} kept runs deleted by hand ({', '.join(sorted(restored))})"
               if restored else "")
            + (f"; {result.collected}" if result.collected and runs else
               "; those runs are deleted, not yet garbage-collected" if runs else "")
            + "; DVC's cache and remote were not collected. Run prune again to finish: it keeps what this one kept")


def report(summary: dict) -> str:
    verb = "would delete" if summary["dry_run"] else "deleted"
    freed = summary["deleted_artifact_bytes"]
    lines = [f"prune: {summary['model']}: keeps version {v} ({why})" for v, why in summary["kept_versions"].items()]
    lines.append(f"prune: {verb} {len(summary['deleted_versions'])} model versions"
                 + (f" ({', '.join(summary['deleted_versions'])})" if summary["deleted_versions"] else ""))
    restored = summary["restored_runs"]
    if restored:
        lines.append(f"prune: {'would restore' if summary['dry_run'] else 'restored'} {len(restored)} deleted MLflow "
                     "runs it keeps (deleted by hand, the next `mlflow gc` would have removed their artifacts): "
                     + "; ".join(f"{run_id} ({why})" for run_id, why in restored.items()))
    earlier = summary["freed_deleted_runs"]
    lines.append(f"prune: keeps {summary['kept_runs']} MLflow runs; {verb} {len(summary['deleted_runs'])}"
                 + (f", and {'would free' if summary['dry_run'] else 'freed'} {len(earlier)} deleted by hand earlier"
                    if earlier else "")
                 + ("" if freed is None else f" ({freed / 1e6:.1f} MB of artifacts)"))
    versions, runs = summary.get("versions_deleted_by_another", []), summary.get("runs_deleted_by_another", [])
    if versions or runs:
        lines.append(f"prune: found {len(versions)} model versions" + (f" ({', '.join(versions)})" if versions else "")
                     + f" and {len(runs)} MLflow runs it was deleting already deleted by another prune (done)")
    since = summary.get("versions_registered_since", [])
    if since:
        lines.append(f"prune: keeps the runs and DVC entries of {len(since)} model versions registered since it "
                     f"planned (another checkout's promote): {', '.join(since)}")
    if summary["untagged_runs_left"]:
        left = summary["untagged_runs_left"]
        runs = "1 training run that records" if left == 1 else f"{left} training runs that record"
        lines.append(f"prune: leaves {runs} no registered model "
                     f"({tracking.REGISTERED_MODEL_TAG} tag: made before runs recorded it) and back no version of "
                     f"{summary['model']}: another project on this tracking server may have made them (README, "
                     "make prune)")
    lines.append(f"prune: {summary['mlflow']}")
    dvc = summary["dvc"]
    if "note" in dvc:
        lines.append(f"prune: {dvc['note']}")
    if "objects" in dvc:
        where = "the DVC cache and remote" if dvc["remote"] else "the DVC cache"
        lines.append(f"prune: {verb} {dvc['objects']} objects from {where} ({dvc['bytes_on_local_disks'] / 1e6:.1f} MB "
                     "on this machine's disks)")
    return "\n".join(lines)


def closing_line(summary: dict, seconds: float) -> str:
    """The one line that ends a prune (each kept and deleted item is its own line above it)."""
    verb = "would delete" if summary["dry_run"] else "deleted"
    objects = summary["dvc"].get("objects")
    freed = (summary["deleted_artifact_bytes"] or 0) + (summary["dvc"].get("bytes_on_local_disks") or 0)
    return (f"prune: {'dry run ' if summary['dry_run'] else ''}done in {seconds:.0f} s: {verb} "
            f"{len(summary['deleted_versions'])} model versions, {len(summary['deleted_runs'])} MLflow runs"
            + ("" if objects is None else f" and {objects} DVC objects")
            + f" ({freed / 1e6:.1f} MB on this machine's disks"
            + ("" if summary["deleted_artifact_bytes"] is not None else ", artifacts of a remote store not counted")
            + ")")


def main(argv=None) -> int:
    def body(args) -> None:
        started = time.monotonic()
        root = args.root.resolve()
        models = None if args.models is None else (args.models if args.models.is_absolute() else root / args.models)
        with tracking.mlflow_errors_named(root):
            summary = run(root, dry_run=args.dry_run, models_dir=models)
        print(report(summary), flush=True)
        print(closing_line(summary, time.monotonic() - started), flush=True)
        if args.json:
            print(json.dumps(summary, indent=1))

    def options(parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
        parser.add_argument("--models", type=Path, default=_host_store(),
                            help="the serving host's release store, when not the project's models/ (its variants "
                                 "and releases/ are kept); default $SHELFCAST_MODELS_HOST")
        parser.add_argument("--json", action="store_true", help="also print the summary as JSON")

    return run_stage("prune", body, argv, errors=(BundleError, tracking.TrackingError, DirectoryBusy),
                     description=__doc__.splitlines()[0], options=options)


def _host_store() -> Path | None:
    value = os.environ.get("SHELFCAST_MODELS_HOST", "").strip()
    return Path(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
