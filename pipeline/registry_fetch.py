"""The handoff between the ML pipeline and the app pipeline: model versions by registry alias.

The ML pipeline's ``promote`` uploads the bundle it installed (rolled forward to the last
known day) to the candidate's MLflow run under ``serving_bundle/`` and records on the model
version where it is (``serving_artifact``), its digest (``serving_digest``) and, when DVC
tracked it, its DVC entry (``dvc_out``: hash, size, files). The app side needs nothing from git but params.yaml:
given the tracking URI (``MLFLOW_TRACKING_URI``) it resolves ``models:/<name>@<alias>`` (the name: params.yaml's
``promote.model_name``, or ``--name``) and downloads the bundle from the tracking server's artifact store, or —
``--from dvc`` — pulls the same bytes from the DVC remote by the recorded hash. Either way the bundle is
verified against the digest the registry recorded, and must pass the app's own check that it can serve
(pipeline/bundle_checks.py: finite, moderate weights, plausible forecasts, a possible history), before it is
installed; a bundle that fails either is refused and what was installed stays.

    python -m pipeline.registry_fetch [--alias A] [--to DIR] [--from mlflow|dvc]

``--alias`` defaults to production's, params.yaml's ``promote.alias``, installed at models/production; another
alias (``canary``, ``shadow``) at models/<alias>.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import command_name, dvc_remote, tracking
from pipeline.atomic import DirectoryBusy, one_writer, scratch_directory
from pipeline.bundle import CHECKSUMS_FILE, DATA_FILES, GRAPH_FILES, BundleError, copy_bundle, verify_bundle
from pipeline.bundle_checks import load_servable
from pipeline.stage import CommandParser, output_any_terminal_can_take, run_interruptible
from pipeline.model_params import CANDIDATE_ALIASES, model_named, production_alias, registry_alias
from pipeline.params import ParamsError
from pipeline.release_store import PRODUCTION, bundle_name

SERVING_ARTIFACT = "serving_bundle"
ENV_PROMOTE_ALIAS = "SHELFCAST_PROMOTE_ALIAS"  # CI: promote registers a candidate (shadow, canary), not production
ALREADY_INSTALLED = "already installed"  # Fetched.source when the target holds the registered bundle already
TAG_ARTIFACT, TAG_DIGEST, TAG_DVC = "serving_artifact", "serving_digest", "dvc_out"
# + a name: where a bundle is staged for DVC, in models/ of the project (promote: + the alias; fetch --from dvc:
# fetch). The .gitignore un-ignores its .dvc file: DVC refuses to write or read a git-ignored one.
DVC_STAGING = "models/promoted-"


class FetchError(RuntimeError):
    """The alias, version or its bundle cannot be fetched; the message says which and from where."""


def promote_alias(configured: str) -> str:
    """The alias promote moves: params.yaml's (``configured``, production's), unless ``SHELFCAST_PROMOTE_ALIAS``
    names a release candidate's (shadow, canary: what `release deploy` and `sync` read); naming ``configured`` itself
    is production's promote, as when unset. Any other alias is refused in one line naming the ones accepted: a
    version registered under ``staging``, under ``production`` while production's alias is ``champion``, or under
    ``Production`` (MLflow's aliases are case-sensitive: a second alias beside ``production``) is read by no release
    command, so it would never be judged or deployed, and nothing would say so."""
    chosen = os.environ.get(ENV_PROMOTE_ALIAS, "").strip()
    if not chosen:
        return configured
    chosen = registry_alias(chosen, ENV_PROMOTE_ALIAS)
    accepted = (configured, *CANDIDATE_ALIASES)
    if chosen in accepted:
        return chosen
    same_letters = [alias for alias in accepted if alias.lower() == chosen.lower()]
    if same_letters:
        why = (f"not {same_letters[0]!r}: registry aliases are case-sensitive (MLflow would register a second alias "
               f"{chosen!r} beside {same_letters[0]!r})")
    elif chosen == PRODUCTION:
        why = f"not production's alias here (promote.alias is {configured!r})"
    else:
        why = "an alias no release reads, so the version would never be judged or deployed"
    candidates = ", ".join(map(repr, CANDIDATE_ALIASES))
    raise ParamsError(f"{ENV_PROMOTE_ALIAS}: {chosen!r} is {why}; it takes exactly {configured!r} (production's, "
                      f"promote.alias; as when unset) or a release candidate's: {candidates}")


def publish_serving_bundle(root: Path, run_id: str, bundle_dir: Path) -> dict[str, str]:
    """Upload the installed production bundle to the candidate's run; returns the version tags that find it."""
    digest = verify_bundle(bundle_dir)
    mlflow_client = tracking.client(root, create=False)
    try:
        mlflow_client.log_artifacts(run_id, str(bundle_dir), SERVING_ARTIFACT)
    except Exception as exc:  # noqa: BLE001 MlflowException or an artifact store's own (boto, requests) error
        raise tracking.TrackingError(f"uploading {bundle_dir} to run {run_id}: "
                                     f"{tracking.without_credentials(str(exc))}{tracking.access_hint(exc)}") from None
    tags = {TAG_ARTIFACT: SERVING_ARTIFACT, TAG_DIGEST: digest}
    dvc_file = bundle_dir.with_name(bundle_dir.name + ".dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
        if outs[0].get("md5"):  # the whole entry (hash kind, size, files): a .dvc file can be written from it
            tags[TAG_DVC] = json.dumps(outs[0], sort_keys=True)
    return tags


@dataclass(frozen=True)
class Fetched:
    name: str
    alias: str
    version: str
    digest: str
    source: str  # "mlflow", "dvc" or ALREADY_INSTALLED
    seconds: float


@model_named
def resolve(root: Path, alias: str, name: str | None = None):
    """The model version ``models:/<name>@<alias>`` names; FetchError when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client(root, create=False).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        hint = ""
        # CI registers candidates as shadow: the very first production is made by hand, once (not said for a refused
        # login: the line then says which credentials to set, and the model may well exist)
        if alias == production_alias(root) and exc.error_code != "UNAUTHENTICATED":
            hint = ("; a new registry (or a new promote.model_name) has no production model until one is promoted by "
                    "hand, once: `make run` (or "
                    "`dvc repro` then `make promote`) with MLFLOW_TRACKING_URI set to this registry and "
                    "SHELFCAST_PROMOTE_ALIAS unset (README, CI/CD)")
        reason = tracking.store_error_text(exc)
        raise FetchError(f"models:/{name}@{alias} at {tracking.shown_uri(root)}: {reason}{hint}") from None


def promoted_digest(version) -> str:
    """The serving digest of a version ``pipeline.promote`` registered; FetchError for one registered by hand (the
    UI, a script): no threshold test, no rolled-forward history, nothing to verify it by. Asked before anything is
    installed, and also when the bundle is already on this host."""
    tags = version.tags or {}
    if not tags.get(TAG_DIGEST) or tags.get(tracking.VERDICT_TAG) != "passed":
        raise FetchError(f"version {version.version} was not registered by `pipeline.promote` (no {TAG_DIGEST} tag or "
                         f"no {tracking.VERDICT_TAG}=passed): its bundle was neither judged by the threshold test nor "
                         "made to forecast from the last known day; refusing it (promote a candidate with `make "
                         "promote`)")
    return tags[TAG_DIGEST]


def download_version(root: Path, version, into: Path, via: str = "mlflow") -> str:
    """Download a model version's serving bundle and install it at ``into`` (only when its digest is the
    registered one); returns the digest."""
    tags = version.tags or {}
    want = promoted_digest(version)

    def check(digest: str) -> str:
        if digest != want:
            raise FetchError(f"version {version.version}: fetched bundle digest {digest[:12]} is not the registered "
                             f"{want[:12]}; refusing it")
        return digest

    def servable(bundle: Path, shown: str) -> None:  # what the app would refuse is never installed
        carried = bundle_name(Path(bundle))
        if carried is not None and carried != version.name:
            raise FetchError(
                f"version {version.version} of {version.name} holds a bundle of another model, {carried!r} ({shown}'s "
                "bundle.json name; a version copied from that model's, as MLflow's copy_model_version does, keeps its "
                f"bundle and tags): the app would serve and log it as {carried!r}; refusing it (train and promote "
                f"with promote.model_name: {version.name})")
        try:
            load_servable(bundle)
        except BundleError as exc:  # named by where it is stored, not by the copy about to be deleted
            raise FetchError(f"version {version.version}: the registry's bundle cannot serve, not installed: "
                             f"{str(exc).replace(str(bundle), shown)}") from None

    if via == "dvc":
        with _dvc_pull(root, version) as pulled:  # DVC checks the content against the recorded hash
            check(verify_bundle(pulled))
            servable(pulled, f"the DVC remote's {want[:12]}")
            return copy_bundle(pulled, into)
    if via != "mlflow":
        raise FetchError(f"--from: expected mlflow or dvc, got {via!r}")
    artifact = tags.get(TAG_ARTIFACT, tracking.BUNDLE_ARTIFACT_PATH)
    where = f"runs:/{version.run_id}/{artifact}"
    stored = _stored_bundle(root, version, artifact, where, into.parent)
    with scratch_directory(into.parent, ".fetch.") as scratch:  # a killed fetch's is deleted by the next
        try:
            local = stored.download_artifacts(artifact, str(scratch))
        except Exception as exc:  # noqa: BLE001 MlflowException or the artifact store's own error (one line)
            raise FetchError(f"version {version.version}: downloading {where}: {tracking.store_error_text(exc)}"
                             ) from None
        try:
            digest = verify_bundle(local)
        except BundleError as exc:  # named by where it is stored, not by the scratch copy about to be deleted
            raise FetchError(f"version {version.version}: the registry's bundle {where} is damaged: "
                             f"{str(exc).replace(str(local), where)}") from None
        check(digest)
        servable(local, where)
        return copy_bundle(local, into)


BUNDLE_FILES = frozenset(GRAPH_FILES + DATA_FILES + (CHECKSUMS_FILE,))  # all a serving bundle's folder holds


def _stored_bundle(root: Path, version, artifact: str, where: str, landing: Path):
    """The artifact repository of the version's run (tracking.run_artifacts: its download errors said as they are),
    once its listing of ``artifact`` shows exactly a bundle's files. Refused, before anything is downloaded, a stored
    bundle folder that does not hold exactly a bundle's files:
    MLflow downloads every file and folder under it, so one more (a 2 GB file, a tree logged there by hand, a named
    pipe) was downloaded whole, filling the host's disk, before verify_bundle refused it as unlisted (probed: a 2 GB
    extra file, 15 s and 2 GB written), and a folder with none of them (a serving_artifact tag edited to '', the
    run's root) was the whole run's artifacts."""
    mlflow_client = tracking.client(root, create=False)
    try:
        stored = tracking.run_artifacts(mlflow_client, version.run_id)
        listed = stored.list_artifacts(artifact)
    except ModuleNotFoundError as exc:  # MLflow's client of that store (boto3 for s3://) is an extra not installed
        stored_at = mlflow_client.get_run(version.run_id).info.artifact_uri
        raise FetchError(f"version {version.version}: {where} is stored at {tracking.without_credentials(stored_at)}, "
                         f"whose client library MLflow imports, {exc.name!r}, is not installed here: install it where "
                         f"this runs (s3:// needs boto3, gs:// google-cloud-storage, wasbs:// azure-storage-blob), or "
                         "fetch from the DVC remote (--from dvc, MODEL_SOURCE=dvc)") from None
    except Exception as exc:  # noqa: BLE001 MlflowException or the artifact store's own error
        raise FetchError(f"version {version.version}: listing {where}: {tracking.store_error_text(exc)}") from None
    if not listed:
        raise FetchError(f"version {version.version}: {where} holds no artifacts (deleted from the artifact store, "
                         f"or its {TAG_ARTIFACT} tag names another folder); nothing downloaded")
    names = {entry.path.rstrip("/").rpartition("/")[2] + ("/" if entry.is_dir else "") for entry in listed}
    odd = sorted(names ^ BUNDLE_FILES)  # a folder's name ends in "/"
    if odd:  # worded as verify_bundle words a bundle on disk
        raise FetchError(f"version {version.version}: the registry's bundle {where} is damaged: {where}: missing or "
                         f"unlisted file(s): {', '.join(odd)} (refused before downloading anything)")
    _check_room(version, where, listed, landing)
    return stored


def _check_room(version, where: str, listed, landing: Path) -> None:
    """Refuse a bundle whose listed size needs more room than ``landing`` (where the scratch copy and the installed
    one are written) has free: twice its size at least, the downloaded copy and the installed one. Before, a stored file
    far larger than any real bundle (a weights.npz of 1 TiB listed) was downloaded until the disk was full, the host's
    logs, event spool and database with it."""
    sizes = {entry.path.rpartition("/")[2]: entry.file_size or 0 for entry in listed}
    needed = 2 * sum(sizes.values())
    landing.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(landing).free
    if needed > free:
        largest = max(sizes, key=sizes.get)
        raise FetchError(f"version {version.version}: the registry's bundle {where} is {sum(sizes.values()):,} bytes "
                         f"as stored ({largest}: {sizes[largest]:,}); {landing} has {free:,} bytes free and a fetch "
                         "needs twice the bundle's size there (the downloaded copy and the installed one); nothing "
                         "downloaded")


@contextlib.contextmanager
def _dvc_pull(root: Path, version, name: str = "fetch"):
    """Pull the version's recorded DVC entry into ``models/promoted-fetch/`` of ``root`` (its ``.dvc`` file is one
    the project's .gitignore does not ignore: DVC refuses to read an ignored one, as it refused
    models/production.dvc) and yield that folder; both are removed afterwards, whatever happens."""
    recorded = (version.tags or {}).get(TAG_DVC)
    if not recorded:
        raise FetchError(f"version {version.version} records no DVC hash ({TAG_DVC}): registered where no DVC remote "
                         "was configured; fetch it from MLflow instead, or promote the same bundle again where one is "
                         "(`make promote` pushes it and records the hash)")
    if not (root / ".dvc").is_dir():
        raise FetchError(f"{root}: not a DVC project; `--from dvc` needs the repository's .dvc/ and a remote")
    try:
        entry = json.loads(recorded)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("md5"), str):  # a tag edited by hand, or cut short
        raise FetchError(f"version {version.version}: its {TAG_DVC} tag is no DVC output entry with an md5 "
                         f"({recorded[:80]!r}); fetch it from MLflow instead (MODEL_SOURCE=mlflow, the default)")
    staging = root / f"{DVC_STAGING}{name}"
    dvc_file = staging.with_name(staging.name + ".dvc")
    out = {**entry, "path": staging.name}
    md5 = out["md5"]

    def clean() -> None:
        dvc_file.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)

    clean()  # what a run killed midway left
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        dvc_file.write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False), encoding="utf-8")
        shown = dvc_file.relative_to(root).as_posix()
        done = dvc_remote.dvc(root, "pull", shown)
        if done.returncode != 0:
            lost = ("the remote lacks this version's bundle (deleted from the store, or never pushed): promoting the "
                    "same bundle again (`make promote`) pushes it back")
            raise FetchError(f"version {version.version} ({md5}): "
                             f"{dvc_remote.failure(f'dvc pull {shown}', done, missing=lost)}; the registry's artifact "
                             "store has it too (MODEL_SOURCE=mlflow, the default)")
        yield staging
    finally:
        clean()


@model_named
def fetch(root: Path, alias: str, target: Path, name: str | None = None, via: str = "mlflow") -> Fetched:
    """Install the bundle of ``models:/<name>@<alias>`` at ``target`` (verified; atomic), holding the writer lock of
    ``target``'s folder (``atomic.one_writer``, promote's and release's: on a serving host, models/): a fetch that
    ran beside a `release promote` swapped in the version it had resolved before the release moved the alias, and
    the host served it while the registry named the release's; two fetches at once raced to swap one folder."""
    started = time.perf_counter()
    target = target if target.is_absolute() else root / target
    promoted_digest(resolve(root, alias, name))  # a refusal (no store, no such alias) writes nothing, no lock file
    with one_writer(target.parent, "fetch-model"):
        version = resolve(root, alias, name)  # again under the lock: a release that held it may have moved the alias
        want = promoted_digest(version)
        if target.is_dir() and _installed_digest(target) == want:
            # already here (make build-image and publish-image fetch again in the same checkout): nothing to download
            return Fetched(name, alias, str(version.version), want, ALREADY_INSTALLED, time.perf_counter() - started)
        digest = download_version(root, version, target, via)
    return Fetched(name, alias, str(version.version), digest, via, time.perf_counter() - started)


def _installed_digest(target: Path) -> str | None:
    try:
        return verify_bundle(target)
    except BundleError:
        return None  # damaged or partial: fetched again


LOCAL = "local"  # --from local: no registry to fetch from, the bundle already installed is the one


def installed_here(target: Path) -> int:
    """``make fetch-model`` without MLFLOW_TRACKING_URI: the bundle already at ``target`` (a docker build copies it),
    verified, named in one line; none there, or one damaged, is ``fetch-model: error: ...`` and 1 (BundleError, caught
    by the caller). Before, the target ran ``python -c "...verify_bundle('models/production')"``: a fresh clone's
    ``make fetch-model`` (and ``make build-image``, which needs it) was a BundleError traceback."""
    digest = verify_bundle(target)
    print(f"fetch-model: no MLFLOW_TRACKING_URI; local {target} {digest[:12]}", flush=True)
    return 0


def main(argv=None) -> int:
    """Not a stage (no run_stage): Ctrl-C and SIGTERM end it as they end one, its scratch copy removed, then the one
    line and 130 / 143."""
    return run_interruptible(command_name("registry_fetch"), lambda: _fetch_model(argv))


def _fetch_model(argv) -> int:
    output_any_terminal_can_take()
    parser = CommandParser(prog="python -m pipeline.registry_fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    parser.add_argument("--alias", help="registry alias (default: production's, promote.alias of --root's "
                                         "params.yaml; canary, shadow)")
    parser.add_argument("--to", type=Path, help="where to install the bundle (default: models/production for "
                                                "production's alias, else models/<alias>)")
    parser.add_argument("--from", dest="via", choices=("mlflow", "dvc", LOCAL), default="mlflow",
                        help="the tracking server's artifact store (default), the DVC remote, or local: no registry "
                             "(make fetch-model without MLFLOW_TRACKING_URI), the bundle already at --to, verified")
    parser.add_argument("--name", help="registered model name (default: promote.model_name of --root's params.yaml)")
    args = parser.parse_args(argv)
    try:
        if args.via == LOCAL:
            return installed_here(args.to or Path("models") / (args.alias or PRODUCTION))
        root = args.root.resolve()
        production = production_alias(root)
        alias = args.alias or production
        args.to = args.to or Path("models") / (PRODUCTION if alias == production else alias)
        got = fetch(root, alias, args.to, args.name, args.via)
    except (FetchError, BundleError, tracking.TrackingError, ParamsError, DirectoryBusy) as exc:
        print(f"fetch-model: error: {exc}", file=sys.stderr)
        return 1
    how = "already installed at" if got.source == ALREADY_INSTALLED else f"from {got.source} ->"
    print(f"fetch-model: models:/{got.name}@{got.alias} = version {got.version} ({got.digest[:12]}) {how} "
          f"{args.to} in {got.seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
