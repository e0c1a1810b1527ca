"""MLflow: every train is a run, every evaluation a run nested under it; promotion registers a model version.

The embedded default is a local, database-backed store inside the project
(``sqlite:///<project>/mlflow.db``, artifacts under ``<project>/mlartifacts``);
the model registry needs a database-backed store, which is why it is not
``./mlruns``. ``MLFLOW_TRACKING_URI`` points everything at a server instead.
Training-only: serving code never imports this module (nor MLflow).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import socket
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from pipeline.atomic import process_alive
from pipeline.model_params import model_named, production_alias, registered_model
from pipeline.stage import StageError
from pipeline.url_credentials import (refused_url_shown, split_credentials,  # noqa: F401 - tracking.without_credentials
                                     without_credentials)

EXPERIMENT_NAME = "shelfcast"
# The registered model's name is no constant: params.yaml's promote.model_name (model_params.registered_model), nor is
# production's alias: its promote.alias (model_params.production_alias)
BUNDLE_ARTIFACT_PATH = "bundle"
# MLflow 3's UI reads this experiment tag to choose its view; "custom_model_development" is its
# "Machine learning" (model training) kind, "genai_development" the GenAI one (mlflow/server/js).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
PARENT_RUN_TAG = "mlflow.parentRunId"
# A run's provenance (start time, git commit, run id) lives here, not in the tracked outputs: train tags
# its run with the digest of the bundle it wrote, evaluate tags its run with the digest it judged,
# and whoever needs "which run made this bundle" asks MLflow (run_of_bundle).
BUNDLE_DIGEST_TAG = "bundle_digest"
# Held-out scores (evaluate) are named apart from the training curves a train run logs per step.
HELDOUT_PREFIX = "heldout_"
VERDICT_TAG = "threshold_test"
# An evaluate run's tag: the sha256 of the results/evaluation.json it wrote, so promote links a model version to
# the evaluation it promotes on, not to another of the same bundle (other params, another teammate's).
EVALUATION_DIGEST_TAG = "evaluation_digest"
# Every run's registered model: promote.model_name of the project it was made in (TrainingRun tags it, a sweep's
# child runs copy it). Projects sharing one tracking server share the `shelfcast` experiment; prune deletes only its
# own model's runs by it (a run without it predates it: pipeline/prune.py says which of those are its own).
REGISTERED_MODEL_TAG = "registered_model"
PROCESS_TAG = "stage_process"  # a run's "<host>:<pid>": a run left RUNNING by a killed stage is found by it
OLDER_PROCESS_TAG = "train_process"  # the same, on the train runs of the code before 2026-12-05 (an upgraded store)
# A file: register_production, having found no version of the bundle, writes <file>.held and waits (at most
# HOLD_LIMIT_S) until the file exists before it registers one: tests/pipeline/models/test_promote_races.py stops one
# of two racing promotes there, where both have looked and neither has registered.
HOLD_BEFORE_REGISTER = "SHELFCAST_PROMOTE_HOLD_BEFORE_REGISTER"
HOLD_LIMIT_S = 600.0
# The same for point_alias's moves of production (tests/pipeline/models/test_alias_races.py): HOLD_ALIAS_MOVE once it
# has read production, before it moves it; HOLD_ALIAS_SET once the alias is moved, before its MOVE_SET_TAG says so.
HOLD_ALIAS_MOVE = "SHELFCAST_HOLD_ALIAS_MOVE"
HOLD_ALIAS_SET = "SHELFCAST_HOLD_ALIAS_SET"
# A version's record of its latest move to production (point_alias), JSON {"id", "from", "after"}: the move's own id,
# the version it replaced, and the id of that version's move (its tenure as production: "<version>@untracked" for
# one moved before these records, "none" for no production); MOVE_SET_TAG: that id once the alias has moved.
MOVE_TAG = "production_move"
MOVE_SET_TAG = "production_move_set"
DUPLICATE_TAG = "duplicate_of"  # a version a racing promote registered twice and could not delete: never chosen
PREVIOUS_PRODUCTION_TAG = "previous_production"  # registered-model tag: the version a rollback returns to
# A run's data, as MLflow's Datasets panel shows it (mlflow.log_input's record, through the client): named by
# the source the data stages read (data/source.json), with the digest of the files the stage read and its role.
DATA_SOURCE_TAG = "data_source"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the input tag mlflow.log_input(context=...) writes
DATASET_DIGEST_CHARS = 16  # MLflow's stores keep at most 36 characters of a dataset digest


class RunData(NamedTuple):
    """What a stage's run read: ``source`` as pipeline.versions.shown_source gives it, the digests of the files
    (versions.data_version) and a profile (rows, days) for the Datasets panel."""

    source: str
    digests: Mapping[str, str]
    profile: Mapping[str, Any]

    def dataset_input(self, context: str):
        """The MLflow DatasetInput of this data in the role ``context`` ("training", "evaluation")."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = hashlib.sha256(json.dumps(sorted(self.digests.items())).encode("utf-8")).hexdigest()
        kind = "http" if self.source.startswith(("http://", "https://")) else \
            "code" if self.source == "synthetic" else "local"
        name = self.source.rstrip("/").rsplit("/", 1)[-1] or self.source
        return DatasetInput(Dataset(name=name, digest=digest[:DATASET_DIGEST_CHARS], source_type=kind,
                                    source=json.dumps({"uri": self.source}),
                                    profile=json.dumps(dict(self.profile), default=str)),
                            [InputTag(DATASET_CONTEXT_TAG, context)])


class TrackingError(StageError):
    """The tracking store or registry refused an operation, or cannot be reached (the message says which and where)."""


METRICS_PER_BATCH = 1000  # the most metrics MLflow takes in one log_batch (mlflow.utils.validation)
REACH_TIMEOUT_S = 10.0  # how long a tracking server has to answer its first request (MLflow's retries take minutes)
_reached: set[str] = set()  # tracking servers this process has reached


# MLflow's HTTP retries for every command that talks to a tracking server (train, evaluate, promote, fetch-model,
# release), where the user has not set them. MLflow's defaults (7 retries, backoff factor 2, 120 s a request) held a
# command for about 4 minutes (246 s measured) once the server it had reached died or restarted, and about 18
# minutes on a server (or proxy) that accepts connections and never answers: reachability is only checked once a
# process (check_reachable), by a TCP connection, which such a server accepts. With these, a server gone fails a
# request within seconds (3 tries, 0 + 2 s apart plus MLflow's jitter) and one that hangs within about a minute
# (3 x 20 s); a slow answer still has 20 s (a read timeout: between bytes, so a large upload is not cut short).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def bound_http_retries(environ=os.environ) -> None:
    """Set HTTP_DEFAULTS in ``environ`` where the user has not set them (MLflow reads them at each request)."""
    for key, value in HTTP_DEFAULTS.items():
        if not environ.get(key, "").strip():
            environ[key] = value


def tracking_uri(project_root: Path | str = ".") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        db = local_store_path(env)
        if db is not None and not db.is_absolute():
            # a relative sqlite store (MLflow's own example, sqlite:///mlflow.db) is the project's: SQLAlchemy reads
            # it from the working directory, which under `dvc exp run --temp` is the copy DVC deletes afterwards
            return sqlite_uri(store_home(project_root) / db)
        return env
    return sqlite_uri(store_home(project_root) / "mlflow.db")


def ui_store_uri(project_root: Path | str = ".") -> str:
    """The store ``make mlflow-ui`` serves: the stages' own where it is a local sqlite database (the project's, or
    the one MLFLOW_TRACKING_URI names), else the project's (a tracking server's runs are in that server's UI)."""
    uri = tracking_uri(project_root)
    return uri if local_store_path(uri) is not None else sqlite_uri(store_home(project_root) / "mlflow.db")


def sqlite_uri(db: Path) -> str:
    """``sqlite:///<db>`` with the two characters SQLAlchemy reads specially in it escaped: a project folder named
    ``runs?2`` put the store in a file ``runs`` beside it (the rest read as a query), and ``a%20b`` opened ``a b``."""
    return "sqlite:///" + db.as_posix().replace("%", "%25").replace("?", "%3F")


def shown_uri(project_root: Path | str = ".") -> str:
    """tracking_uri as messages show it: without the user and password a URI may carry."""
    return split_credentials(tracking_uri(project_root))[0]


def artifact_root(project_root: Path | str = ".") -> str | None:
    """Where a new experiment keeps its runs' artifacts: ``mlartifacts/`` beside a local sqlite store's database, the
    default store's and one MLFLOW_TRACKING_URI names alike; None for any other store (a server decides). MLflow's own
    default, ``./mlruns`` of the working directory, put a ``dvc exp run --temp`` experiment's artifacts in the copy
    DVC deletes, and every later run of that experiment under the deleted copy's path."""
    db = local_store_path(tracking_uri(project_root))
    return None if db is None else (db.parent / "mlartifacts").as_uri()


def store_home(project_root: Path | str = ".") -> Path:
    """The project whose local store (mlflow.db, mlartifacts/) a stage records into. ``dvc exp run --temp`` and
    queued experiments run the stages in a copy under ``<project>/.dvc/tmp/exps/`` that DVC deletes afterwards:
    their runs go to the project's store, or they would be lost with the copy."""
    path = Path(project_root).resolve()
    parts = path.parts
    for i in range(1, len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def check_reachable(uri: str) -> None:
    """TrackingError, at once, for a tracking URI that cannot work: an http(s) server nothing listens at (MLflow
    itself retries for minutes, then prints a traceback), or an address without its scheme (MLflow reads it as a
    path). Only a TCP connection is tried, so credentials, TLS settings and slow answers stay MLflow's business;
    where a proxy is configured for the host, MLflow's requests go through it and nothing is tried here."""
    if uri in _reached:
        return
    if re.fullmatch(r"[\w.-]+:\d+/?", uri):
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri!r}: an address without its scheme; did you mean http://{uri}?")
    mistyped = re.fullmatch(r"(https?)(:/|//|:)([^/].*)", uri, flags=re.IGNORECASE)
    if mistyped:  # MLflow reads it as a folder: refused as a file store, or with MLFLOW_ALLOW_FILE_STORE made there
        scheme, typed, rest = mistyped.groups()
        raise TrackingError(f"MLFLOW_TRACKING_URI starts {scheme + typed!r}, not '{scheme}://': MLflow would read it "
                            f"as a folder's path; did you mean {scheme.lower()}://{refused_url_shown(rest)}?")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise TrackingError(f"MLFLOW_TRACKING_URI: {exc}") from None
        where = f"{parts.scheme}://{parts.hostname}:{port}"  # never the credentials a URI may carry
        exc = _connect_error(uri, REACH_TIMEOUT_S)
        if exc is not None:
            raise TrackingError(f"MLflow tracking server {where} (MLFLOW_TRACKING_URI) cannot be reached: "
                                f"{exc.strerror or exc}; is it running?") from None
    _reached.add(uri)


def _connect_error(uri: str, timeout: float) -> OSError | None:
    """Why a TCP connection to an http(s) tracking server cannot be made now, or None (it can; not an http(s) URI;
    a proxy is configured for the host, which MLflow's requests go through)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return exc
    return None


@contextlib.contextmanager
def mlflow_errors_named(project_root: Path | str = "."):
    """MLflow's own exceptions (a store that refused, a server gone mid-stage), and those of the database beneath a
    database-backed store (SQLAlchemy, sqlite3), as one TrackingError naming the store: a stage says one line, never
    a traceback."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        named = _store_error(exc, project_root)
        if named is None:
            raise
        raise named from None


_BROKEN_SCHEMA = re.compile(r"already exists|duplicate column|no such (?:table|column)|malformed|not a database")


def _store_error(exc: Exception, project_root: Path | str) -> TrackingError | None:
    """``exc`` as one line naming the store, when it came from MLflow or its database; else None.

    A local sqlite store whose schema is broken (half made by an interrupted first run of an older Shelfcast, or
    damaged) fails every later run the same way: the line says how to recover."""
    if not type(exc).__module__.startswith(("mlflow", "sqlalchemy", "sqlite3", "alembic")):
        return None
    text = store_error_text(exc)
    from_database = _database_error(exc) is not None or not type(exc).__module__.startswith("mlflow")
    db = local_store_path(tracking_uri(project_root))
    if db is not None and from_database and _BROKEN_SCHEMA.search(text):
        text += (f"; the store file is broken (half made or damaged): move it aside (mv {db} {db}.broken) and "
                 "rerun, which starts a new store (the runs recorded so far stay in the moved file)")
    return TrackingError(f"MLflow at {shown_uri(project_root)}: {text}")


# What SQLAlchemy appends to a database error's message: the statement, its parameters (a run's params and
# paths), a link; the statement itself may span lines.
_SQLALCHEMY_APPENDIX = re.compile(r"\s*(?:\[SQL: |\[parameters: |\(Background on this error at: )")


def store_error_text(exc: BaseException) -> str:
    """An error of MLflow or of the database beneath its store as one line: the database's own words when it is
    the cause (``database or disk is full``), never SQLAlchemy's statement, parameters and link lines."""
    database = _database_error(exc)
    if database is not None:
        text = str(database) or type(database).__name__
    else:
        text = str(getattr(exc, "message", None) or exc)
        text = _SQLALCHEMY_APPENDIX.split(text, maxsplit=1)[0]
    # one line, whatever the message's own layout, never the credentials of the URL MLflow requested
    return (without_credentials(" ".join(text.split())) or type(exc).__name__) + access_hint(exc)


# What a tracking server behind authentication (`mlflow server --app-name basic-auth`, or a proxy asking for a login)
# answers: 401, no or wrong credentials; 403, an account without the permission (MLflow's error codes, or the HTTP
# status of an artifact request, which MLflow raises as requests' HTTPError).
_AUTH_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
_AUTH_TEXT = re.compile(r"\b(401|403) Client Error\b")


def _auth_status(exc: BaseException) -> int | None:
    status = _AUTH_STATUS.get(getattr(exc, "error_code", None))
    response = getattr(exc, "response", None)
    if status is None and getattr(response, "status_code", None) in (401, 403):
        status = response.status_code
    found = _AUTH_TEXT.search(str(exc)) if status is None else None
    return int(found.group(1)) if found else status


def access_hint(exc: BaseException) -> str:
    """What to set when the tracking server refused ``exc``'s request for its credentials or their permissions, as
    a clause to append to the error's line (never the password); "" for any other error."""
    status = _auth_status(exc)
    if status is None:
        return ""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip()
    if status == 401:
        if os.environ.get("MLFLOW_TRACKING_TOKEN", "").strip():
            return "; the tracking server refused MLFLOW_TRACKING_TOKEN: set a valid one"
        if user:
            return (f"; the tracking server refused user {user!r}: check MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD")
        return ("; the tracking server asks for credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server")
    who = f"user {user!r} (MLFLOW_TRACKING_USERNAME)" if user else "this account"
    return (f"; {who} lacks the permission: train, evaluate and promote need EDIT on the experiment "
            f"{EXPERIMENT_NAME!r}, promote and release EDIT on the registered model (params.yaml's "
            "promote.model_name), fetch-model READ on both, which the server's admin grants (MLflow basic-auth: its "
            "permissions API); a basic-auth "
            "server also answers 403 for a registered model that does not exist yet")


def _database_error(exc: BaseException) -> BaseException | None:
    """The database driver's error (sqlite3's) that ``exc`` was raised from, following MLflow's ``raise ... from``
    and SQLAlchemy's ``.orig``; None when the database is not the cause."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] == "sqlite3":
            return exc
        orig = getattr(exc, "orig", None)
        if type(exc).__module__.startswith("sqlalchemy") and isinstance(orig, BaseException):
            return orig
        exc = exc.__cause__
    return None


def local_store_path(uri: str) -> Path | None:
    """The database file of a local sqlite tracking URI (``sqlite:///<path>``), else None."""
    if not uri.startswith("sqlite:///") or "?" in uri or uri == "sqlite:///:memory:":
        return None
    return Path(urllib.parse.unquote(uri[len("sqlite:///"):]))  # as SQLAlchemy reads it


def create_local_store(db: Path) -> None:
    """A new sqlite store, whole or not at all. MLflow makes a store's schema in dozens of migrations over seconds;
    a kill among them left a database every later run failed on. They run in a staging file beside ``db``, which is
    then linked into place (never over a store another process made meanwhile); a killed creation leaves no
    ``db``, and the next creation removes its staging file."""
    from mlflow import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    # a killed creation's staging file and SQLite's journal beside it (<staging>-journal, -wal, -shm: a kill inside
    # a migration's transaction leaves one), unless that process still runs
    for left in db.parent.glob(f".{db.name}.*.creating*"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(left.name[len(db.name) + 2:].split(".")[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                continue
            left.unlink()
    staging = db.with_name(f".{db.name}.{os.getpid()}.creating")
    staging.unlink(missing_ok=True)
    uri = sqlite_uri(staging)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # makes every table, migrated to head
        try:
            os.link(staging, db)
        except FileExistsError:
            pass  # another process made the store first: use that one
        except OSError:  # a file system without hard links
            if not db.exists():
                os.replace(staging, db)
    finally:
        staging.unlink(missing_ok=True)


def client(project_root: Path | str = ".", create: bool = True):
    """An MlflowClient on the project's store (imported here, never at module import); a local sqlite store that
    does not exist yet is created whole first (create_local_store), or, for ``create=False`` (the commands that
    only read or move what a train and a promote recorded), refused: run in the wrong folder, they made an empty
    ``mlflow.db`` there."""
    import logging

    from mlflow import MlflowClient

    # Against a server, MLflow prints "View experiment at: <server>/#/experiments/<id>" as each run ends (in --quiet
    # too): an address that opens MLflow 3.17's GenAI overview, no runs (ui_address says why). The stages name
    # their runs themselves; unless the user chose otherwise, MLflow prints no address.
    os.environ.setdefault(PRINT_URL_SWITCH, "true")
    bound_http_retries()
    # its exception() logs a database error as a traceback with the statement and parameters: our one line says it
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(project_root)
    check_reachable(uri)
    with mlflow_errors_named(project_root):
        db = local_store_path(uri)
        if db is not None and not db.exists():
            if not create:
                raise TrackingError(f"no MLflow store in {db.parent} ({db.name} not found): nothing was trained or "
                                    "promoted there. Run this in the project's root folder or pass --root PROJECT; "
                                    "a fresh clone's first: `dvc repro` then `python -m pipeline.promote` (or "
                                    "`make run`); a team's registry: set MLFLOW_TRACKING_URI")
            create_local_store(db)
        return _insert_races_retried(MlflowClient)(tracking_uri=uri, registry_uri=uri)


def run_artifacts(mlflow_client, run_id: str):
    """The artifact repository of run ``run_id``'s own artifact location (list_artifacts, download_artifacts), whose
    errors say what failed. MlflowClient.download_artifacts goes through MLflow's runs:/ repository, which drops any
    error of the run's download (a 500 or 502, a connection cut mid-file, a full disk, a store's missing client
    library), tries a logged model's artifacts of the same path instead, and then says only "Failed to download
    artifacts from path '…', please ensure that the path is correct" (probed: a 500 from the server answered so after
    6.6 s, a connection cut mid-file after 25 s)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(mlflow_client.get_run(run_id).info.artifact_uri,
                                   tracking_uri=mlflow_client.tracking_uri)


# How a database says an insert lost a race to an equal one (SQLite, PostgreSQL, MySQL, SQL Server), in the text
# MLflow passes on, from its own store or through a server's 400 (its SQLAlchemy error as the message).
UNIQUE_RACE_MARKS = ("unique constraint", "uniqueviolation", "duplicate entry", "duplicate key")
RACE_TRIES = 5  # a lost race's retry is an update (the row now exists): one retry does; 5 bound an odd store
# The MlflowClient writes Shelfcast's stages make at once on one key, each of which MLflow's store does by reading
# the row and inserting it when absent: the registered model's previous_production tag (racing releases), a
# version's tags and production's alias (racing movers), the experiment's mlflow.experimentKind mark (stages
# starting on an experiment made without it), a run's tags (two evaluates or promotes of one candidate tag its
# training run) and a dataset (stages reading the same data log it in the one experiment: the retry finds the
# dataset and links it to its own run). tests/pipeline/models/test_registry_write_races.py races the registry's
# against a real server, test_tracking_write_races.py the others against one and the local store.
INSERT_RACED_WRITES = ("set_registered_model_tag", "set_model_version_tag", "set_registered_model_alias",
                       "set_experiment_tag", "set_tag", "log_inputs")


def lost_insert_race(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that lost an insert race (another writer made the row first)."""
    text = str(exc).lower()
    return any(mark in text for mark in UNIQUE_RACE_MARKS)


@functools.cache
def _insert_races_retried(client_class):
    """``client_class`` (MlflowClient) whose INSERT_RACED_WRITES retry a lost insert race.

    MLflow's store sets a tag or an alias, and logs a dataset, by reading the row and inserting it when absent
    (SQLAlchemy's merge, or its own select then add): two writers of the same new key (four releases moving
    production at once, each writing ``previous_production``) both read none and the second insert fails, "UNIQUE
    constraint failed", and its command ended with a traceback. The store rolls the failed write back whole; the
    retry finds the row and updates (or, a dataset, reuses) it: last writer wins, as for any tag, and point_alias
    re-reads until the records agree."""

    def retried(name):
        def write(self, *args, **kwargs):
            from mlflow.exceptions import MlflowException

            for attempt in range(RACE_TRIES):
                try:
                    # client_class's method as it is now, not as this class was made: tests that make MLflow fail
                    # just then replace MlflowClient's (test_promote_faults, test_champion), and were bypassed
                    return getattr(client_class, name)(self, *args, **kwargs)
                except MlflowException as exc:
                    if attempt == RACE_TRIES - 1 or not lost_insert_race(exc):
                        raise
                    time.sleep(0.05 * (attempt + 1))

        write.__name__ = write.__qualname__ = name
        write.__doc__ = getattr(client_class, name).__doc__
        return write

    return type(RACE_SAFE_CLIENT, (client_class,), {name: retried(name) for name in INSERT_RACED_WRITES})


RACE_SAFE_CLIENT = "InsertRaceSafeClient"  # the name of _insert_races_retried(MlflowClient), as pickle finds it


def __getattr__(name: str):
    """The race-safe client class by its name (PEP 562), made on first use so MLflow loads only then: pickle finds
    an object's class by module and name, and an MlflowClient pickles (into a process pool, a Dask task), so
    tracking.client's must as well; a made class is in no module's namespace and failed to pickle."""
    if name == RACE_SAFE_CLIENT:
        from mlflow import MlflowClient

        return _insert_races_retried(MlflowClient)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ensure_experiment(mlflow_client, project_root: Path | str = ".", name: str = EXPERIMENT_NAME) -> str:
    """The experiment's id (created on first use), marked as model training for MLflow 3's UI.

    MLflow 3 opens an experiment without the ``mlflow.experimentKind`` tag in its GenAI
    (traces) view; the tag is set when absent, never over a kind a user chose. Stages that find no experiment at
    once (two first trains: on two CI runners sharing a server, or `dvc exp run --jobs 2` in a fresh clone) all
    create it; MLflow refuses all but the first (RESOURCE_ALREADY_EXISTS), and those record into the first's.
    """
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_root(project_root),
                                                   tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow_client.get_experiment_by_name(name)  # another stage created it meanwhile
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        # MLflow refuses a run in it ("must be in the 'active' state") and, until its store is garbage-collected,
        # a new experiment of that name: every later stage failed the same way, without saying the way out.
        eid = experiment.experiment_id
        uri = shlex.quote(shown_uri(project_root))
        # the commands as typed in any folder: a bare `mlflow experiments restore` reads MLflow's own default store
        # (sqlite:///mlflow.db of the working directory: from a subfolder it made one there and failed), and
        # `mlflow gc` wants --tracking-uri beside --backend-store-uri ("Tracking URL is not set")
        gc = (f"`mlflow gc --backend-store-uri {uri} --tracking-uri {uri} --experiment-ids {eid}`"
              if local_store_path(tracking_uri(project_root)) else
              f"`mlflow gc --backend-store-uri <its database> --tracking-uri {uri} --experiment-ids {eid}` on the "
              "tracking server's host")
        raise TrackingError(
            f"MLflow at {shown_uri(project_root)}: experiment {name!r} (id {eid}) was deleted, and runs cannot be "
            f"recorded in a deleted experiment: restore it (`MLFLOW_TRACKING_URI={uri} mlflow experiments restore "
            f"--experiment-id {eid}`, or the UI), or remove it for good ({gc}), after which the next run creates a "
            "new one")
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


PRINT_URL_SWITCH = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # MLflow's own "View run/experiment at" lines
UI_MODEL_TRAINING = "workflowType=machine_learning"  # MLflow 3.17's UI: the view an address opens in


def ui_address(base_url: str, project_root: Path | str = ".", name: str = EXPERIMENT_NAME) -> str:
    """Where the experiment opens in MLflow's UI as model training (runs, metrics, models).

    MLflow 3.17's UI picks its GenAI or machine-learning view from the address (``workflowType``), else
    from a per-browser setting that starts as GenAI, whatever the experiment's ``mlflow.experimentKind``
    tag says: the plain experiment address shows a traces overview with no runs. The experiments list
    when there is no experiment yet."""
    base = base_url.rstrip("/")
    experiment = client(project_root).get_experiment_by_name(name)
    if experiment is None:
        return f"{base}/#/experiments?{UI_MODEL_TRAINING}"
    return f"{base}/#/experiments/{experiment.experiment_id}?{UI_MODEL_TRAINING}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat ``section.key`` strings."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(list(value) if isinstance(value, tuple) else value)
    return out


def this_process() -> str:
    """What PROCESS_TAG holds for a run this process makes."""
    return f"{socket.gethostname()}:{os.getpid()}"


def close_killed_runs(mlflow_client, experiment_id: str) -> list[str]:
    """Mark KILLED the experiment's runs still RUNNING whose stage process, on this host, is gone: a stage killed
    outright (SIGKILL, out of memory, a power cut) could not close its run, which would show RUNNING forever (an
    evaluate's with its verdict tag). A train run the older code left so (tagged OLDER_PROCESS_TAG: a train killed
    before an upgrade) is closed too; before, it stayed RUNNING after the upgrade. Runs of another host, and runs
    without either tag, are left as they are: nothing here can tell they ended."""
    host = socket.gethostname()
    closed = []
    for run in mlflow_client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        owner, _, pid = (tags.get(PROCESS_TAG) or tags.get(OLDER_PROCESS_TAG, "")).rpartition(":")
        if owner == host and pid.isdigit() and int(pid) > 0 and not process_alive(int(pid)):
            mlflow_client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def closed_run_note(run_id: str) -> str:
    """What a stage says of a run close_killed_runs marked KILLED (after its ``<stage>: note: ``)."""
    return f"MLflow run {run_id} was left RUNNING by a process that is gone; marked KILLED"


class TrainingRun:
    """One MLflow run for one stage: ``with TrainingRun(root, name, tags) as run: run.log_metrics(...)``. It is
    tagged with this process (PROCESS_TAG) and, in a project (a folder with params.yaml), with its registered model
    (REGISTERED_MODEL_TAG, ``model_name``); ``closed`` lists the runs of killed processes it marked KILLED first.
    It ends FINISHED with the block, FAILED when the block raises, unless ``finish()`` ended it FINISHED before."""

    def __init__(self, project_root: Path | str, run_name: str, tags: Mapping[str, str]):
        self.project_root = Path(project_root)
        self.model_name = registered_model(project_root) if (self.project_root / "params.yaml").is_file() else None
        self.client = client(project_root)
        self.experiment_id = ensure_experiment(self.client, project_root)
        self.closed = close_killed_runs(self.client, self.experiment_id)
        self.run = self.client.create_run(self.experiment_id, run_name=run_name,
                                          tags={PROCESS_TAG: this_process(), **self.model_tag(), **tags})
        self.run_id = self.run.info.run_id
        self.finished = False

    def model_tag(self) -> dict[str, str]:
        """The REGISTERED_MODEL_TAG of this run, for a run nested under it too (a sweep's child runs); {} outside a
        project."""
        return {} if self.model_name is None else {REGISTERED_MODEL_TAG: self.model_name}

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc_type is None:
            self.client.set_terminated(self.run_id, status="FINISHED")
            return
        # The block failed: its error is what the stage says. Marking the run FAILED must neither replace that error
        # nor, with the tracking server gone (often why the block failed), wait out MLflow's retries (minutes) a
        # second time: the run is then left RUNNING, and the next stage on this host marks it KILLED.
        if _connect_error(tracking_uri(self.project_root), 2.0) is None:
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, status="FAILED")

    def finish(self) -> None:
        """End the run FINISHED now, before the block's last steps: a stage whose output must never be in place
        without a finished run (train's candidate, found by its bundle_digest tag) finishes it before installing
        the output. What fails after that fails the stage, and the run, complete, stays FINISHED."""
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.finished = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_steps([(step or 0, metrics)])

    def log_steps(self, points: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Metrics by step (a training curve, evaluate's windows) in as few requests as MLflow takes, METRICS_PER_BATCH
        each: a request per step cost a train that resumed at step 3,000 (150 evaluations) 34 s of its 45 against a
        tracking server on the same machine, more over a network."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for step, metrics in points for k, v in sorted(metrics.items())]
        for start in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start:start + METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_data(self, data: RunData, context: str) -> None:
        """Record what the run read: an MLflow dataset input (the Datasets panel), and the source as a tag."""
        self.client.log_inputs(self.run_id, datasets=[data.dataset_input(context)])
        self.client.set_tag(self.run_id, DATA_SOURCE_TAG, data.source)

    def log_bundle(self, bundle_dir: Path | str) -> str:
        self.client.log_artifacts(self.run_id, str(bundle_dir), BUNDLE_ARTIFACT_PATH)
        return f"runs:/{self.run_id}/{BUNDLE_ARTIFACT_PATH}"


class EvaluationRecord(NamedTuple):
    run_id: str  # the evaluation's own run
    training_run_updated: bool  # False: the candidate's run backs a registered version and was left as it was
    closed: list[str]  # runs of killed stage processes marked KILLED first (TrainingRun.closed)


# Model versions one search asks for (max_results). MlflowClient.search_model_versions returns one page, a PagedList
# whose ``token`` names the next: MLflow's client asks for 10,000 by default, another registry or a proxy in front
# may answer fewer, and a team retraining daily passes any page in time. Before, prune, promote's lookup of a bundle's
# version and the record of production's moves read the first page only: a version beyond it was never pruned, its
# DVC entry not kept from `dvc gc`, its bundle registered again. model_versions reads every page.
VERSIONS_PAGE = 1000


def model_versions(mlflow_client, filter_string: str, page_size: int | None = None) -> list:
    """Every model version ``filter_string`` matches (e.g. ``name='shelfcast-forecaster'``), each page of
    ``page_size`` (default VERSIONS_PAGE) read in turn by its page token. TrackingError when the registry hands back
    a token it gave already (a loop that would never end)."""
    found, token, seen = [], None, set()
    while True:
        page = mlflow_client.search_model_versions(filter_string, max_results=page_size or VERSIONS_PAGE,
                                                   page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found
        if token in seen:
            raise TrackingError(f"model registry: searching model versions ({filter_string}) returned the page "
                                f"token {token[:40]!r} twice after {len(found)} versions; stopped there")
        seen.add(token)


def is_registered(mlflow_client, run_id: str) -> bool:
    """Whether a registered model version was made from this run (its verdict is then history): one is enough."""
    return bool(mlflow_client.search_model_versions(f"run_id='{run_id}'", max_results=1))


def run_of_bundle(project_root: Path | str, bundle_digest: str, stage: str = "train",
                  tags: Mapping[str, str] | None = None):
    """The newest finished run of ``stage`` (train or evaluate) tagged with this bundle digest (and ``tags``), or None.

    Training is deterministic, so retraining the same inputs makes the same bundle again: several
    runs may carry one digest, and the newest is the one that made what is on disk now.
    """
    mlflow_client = client(project_root)
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return None
    wanted = {BUNDLE_DIGEST_TAG: bundle_digest, "stage": stage, **(tags or {})}
    query = " and ".join([f"tags.{key} = '{value}'" for key, value in wanted.items()]
                         + ["attributes.status = 'FINISHED'"])
    found = mlflow_client.search_runs([experiment.experiment_id], query, max_results=1,
                                      order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def evaluation_digest(text: str) -> str:
    """What EVALUATION_DIGEST_TAG holds for an evaluation.json of this text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log_evaluation(project_root: Path | str, training_run_id: str, *, passed: bool, headline: Mapping[str, Any],
                   windows: list[Mapping[str, Any]], params: Mapping[str, Any], artifacts: list[Path],
                   bundle_digest: str = "", evaluation_json: str = "",
                   tags: Mapping[str, str] | None = None, data: RunData | None = None) -> EvaluationRecord:
    """Record one evaluation: a run of its own, nested under the candidate's training run.

    The evaluation run holds the held-out metrics (``heldout_*``; per backtest window as steps),
    the params, the verdict tag and the result files. The training run gets the same held-out
    metrics and verdict too, so its row in the experiment shows them — unless a registered model
    version was made from it: a promoted model's verdict is what it was promoted on, and a later
    evaluation (other params, other data) never rewrites it. ``evaluation_json`` is the text of the
    evaluation.json it wrote: promote finds the evaluation it promotes on by its digest.
    """
    verdict = "passed" if passed else "failed"
    flat = {f"{HELDOUT_PREFIX}{k.replace('.', '_')}": float(v) for k, v in flatten(headline).items()
            if _is_number(v)}
    with TrainingRun(project_root, "evaluate", {PARENT_RUN_TAG: training_run_id, "stage": "evaluate",
                                                VERDICT_TAG: verdict, BUNDLE_DIGEST_TAG: bundle_digest,
                                                EVALUATION_DIGEST_TAG: evaluation_digest(evaluation_json),
                                                **(tags or {})}) as run:
        run.log_params(params)
        if data is not None:
            run.log_data(data, "evaluation")
        run.log_metrics(flat)
        run.log_steps([(int(window["window"]), {f"{HELDOUT_PREFIX}window_{k}": float(v) for k, v in window.items()
                                                 if k in ("candidate_nwrmsle", "baseline_nwrmsle", "improvement",
                                                          "improvement_low", "improvement_high")})
                       for window in windows])
        for path in artifacts:
            run.client.log_artifact(run.run_id, str(path), "results")
        update = not is_registered(run.client, training_run_id)
        if update:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            run.client.log_batch(training_run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(flat.items())])
            run.client.set_tag(training_run_id, VERDICT_TAG, verdict)
            run.client.set_tag(training_run_id, "evaluation_run_id", run.run_id)
    return EvaluationRecord(run.run_id, update, run.closed)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def run_data(project_root: Path | str, run_id: str):
    """(params, metrics, tags) of a run, e.g. for tests and reports."""
    data = client(project_root).get_run(run_id).data
    return data.params, data.metrics, data.tags


def metric_history(project_root: Path | str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client(project_root).get_metric_history(run_id, key)]


_GONE = "RESOURCE_DOES_NOT_EXIST"  # MlflowException.error_code of what the registry or store does not hold


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's "that does not exist" (a registered model, version or run never made or deleted
    for good), as a database store and a tracking server both answer it; any other error (refused, failing) is not:
    the one place callers tell "gone" from "cannot say"."""
    return getattr(exc, "error_code", None) == _GONE


def no_such_alias(exc) -> bool:
    """Whether MLflow's ``exc`` says the alias (or the registered model) does not exist: ``is_gone``, or a tracking
    server's INVALID_PARAMETER_VALUE "... alias X not found"."""
    return is_gone(exc) or (exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def _alias_version(mlflow_client, name: str, alias: str):
    """The version ``alias`` names, or None when the alias or the registered model does not exist; MLflow's error
    otherwise (a server gone or failing, a refused login): before, every error read as "no such alias", so a
    registry that failed that one request made promote skip the champion/challenger comparison ("no production
    yet") and point_alias forget the version a rollback returns to."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if no_such_alias(exc):
            return None
        # MLflow's basic-auth server answers 403, not 404, for a registered model that does not exist
        if exc.error_code == "PERMISSION_DENIED" and not mlflow_client.search_registered_models(
                f"name = '{name}'"):
            return None
        raise


@model_named
def production_version(project_root: Path | str, name: str | None = None, alias: str | None = None):
    """The model version the alias points at (production's, params.yaml's promote.alias, unless given), or None when
    there is none; TrackingError when the registry cannot say. ``name``: the project's registered model (params.yaml)
    unless given."""
    from mlflow.exceptions import MlflowException

    alias = alias or production_alias(project_root)
    mlflow_client = client(project_root)
    try:
        return _alias_version(mlflow_client, name, alias)
    except MlflowException as exc:
        raise TrackingError(f"model registry at {shown_uri(project_root)}: {store_error_text(exc)}") from None


def _versions_of_bundle(mlflow_client, name: str, bundle_digest: str) -> list:
    """The versions registered from this bundle, lowest first; a duplicate a racing promote left (DUPLICATE_TAG,
    where the registry refused to delete it) is not one of them."""
    found = [v for v in model_versions(mlflow_client, f"name='{name}'")
             if (v.tags or {}).get(BUNDLE_DIGEST_TAG) == bundle_digest and DUPLICATE_TAG not in (v.tags or {})]
    return sorted(found, key=lambda v: int(v.version))


def _version_of_bundle(mlflow_client, name: str, bundle_digest: str):
    existing = _versions_of_bundle(mlflow_client, name, bundle_digest)
    return existing[0] if existing else None


@model_named
def version_of_bundle(project_root: Path | str, bundle_digest: str, name: str | None = None):
    """The model version registered from this bundle (tag ``bundle_digest``; the lowest, should two promotes have
    raced), or None: the one ``register_production`` would reuse. ``name``: the project's (params.yaml) unless given."""
    from mlflow.exceptions import MlflowException

    try:
        return _version_of_bundle(client(project_root), name, bundle_digest)
    except MlflowException as exc:
        raise TrackingError(f"model registry at {shown_uri(project_root)}: {store_error_text(exc)}") from None


def _one_version_per_bundle(mlflow_client, name: str, bundle_digest: str, mine):
    """The version to keep once ``mine`` is registered: the lowest of this bundle's. Two promotes on two hosts (two
    CI runners sharing one tracking server) both found no version of the bundle, and both registered it: two
    versions, one digest, the alias on whichever moved last. The registry numbers versions in the order they are
    committed, so whatever the interleaving each racer finds the same lowest one, and the one that made another
    marks its own (``duplicate_of``) and deletes it: the alias is only ever pointed at the version both keep, which
    was complete when it was created (its serving bundle uploaded, its tags written with it)."""
    from mlflow.exceptions import MlflowException

    existing = _versions_of_bundle(mlflow_client, name, bundle_digest)
    first = existing[0] if existing else mine
    if int(first.version) >= int(mine.version):
        return mine
    mlflow_client.set_model_version_tag(name, str(mine.version), DUPLICATE_TAG, str(first.version))
    try:
        mlflow_client.delete_model_version(name, str(mine.version))
    except MlflowException:  # e.g. an account with EDIT, not MANAGE: the tag keeps it from ever being chosen
        pass
    return first


def hold_before_registering() -> None:
    """Where two promotes race (``HOLD_BEFORE_REGISTER``): once this one has found no version of its bundle, wait
    for the file the variable names, if it is set."""
    hold(HOLD_BEFORE_REGISTER)


def hold(variable: str) -> None:
    """A test's hold point: with ``variable`` naming a file, write <file>.held and wait (at most HOLD_LIMIT_S) until
    the file exists."""
    release = os.environ.get(variable, "").strip()
    if not release:
        return
    Path(f"{release}.held").touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TrackingError(f"{variable}: {release} did not appear in {HOLD_LIMIT_S:.0f} s; stopped there")
        time.sleep(0.05)


@model_named
def register_production(project_root: Path | str, run_id: str, bundle_digest: str, tags: Mapping[str, str],
                        name: str | None = None, alias: str | None = None, production: str | None = None):
    """Register the run's bundle as a model version and point the alias at it (``alias``; production's,
    ``production``, unless given: both default to the project's promote.alias).

    Idempotent: a version of this bundle (same digest) is reused as it is, not registered twice, even by two
    promotes racing on two hosts (``_one_version_per_bundle``: the one that registered second keeps the first's and
    returns created False): ``run_id`` and ``tags`` are then ignored (its run, serving bundle and tags are what it
    was promoted with; pipeline/promote.py installs that version's serving bundle, never another). Returns
    (version, created: bool). ``name``: the project's registered model (params.yaml) unless given.
    """
    from mlflow.exceptions import MlflowException

    production = production or production_alias(project_root)
    alias = alias or production
    mlflow_client = client(project_root)
    try:
        try:
            mlflow_client.get_registered_model(name)
        except MlflowException as missing:
            if not is_gone(missing):
                raise  # refused or failed: creating it would only fail with "already exists", hiding why
            try:
                mlflow_client.create_registered_model(name,
                                                      description="Shelfcast daily unit-sales forecaster (bundle)")
            except MlflowException as made:
                if made.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise  # else another promote (another host, CI) created it meanwhile: use that one
        version = _version_of_bundle(mlflow_client, name, bundle_digest)
        created = version is None
        if created:
            hold_before_registering()
            mine = mlflow_client.create_model_version(
                name, f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}", run_id=run_id,
                tags={BUNDLE_DIGEST_TAG: bundle_digest, **tags},
            )
            version = _one_version_per_bundle(mlflow_client, name, bundle_digest, mine)
            created = version is mine
        point_alias(mlflow_client, name, alias, version.version, production=production)
    except MlflowException as exc:
        raise TrackingError(f"model registry at {shown_uri(project_root)}: {store_error_text(exc)}") from None
    return version, created


def point_alias(mlflow_client, name: str, alias: str, version, *, production: str) -> None:
    """Point ``alias`` at ``version``. Moving ``production`` (the project's promote.alias: ``production``,
    ``champion``, ...) records the version it replaced (MOVE_TAG on the version, mirrored in the registered model's
    ``previous_production`` tag, named so whatever the alias): whoever moves it (promote, a release, a rollback), a
    rollback returns there.

    MLflow has no compare-and-set: two movers (promotes or releases on two hosts) may both read production A, then
    move it to B and to C, and C's mover believes it replaced A while B was production in between. So a move is
    recorded on its version before the alias moves, and marked done (MOVE_SET_TAG) after; then every mover chains
    the moves from the same production (the same ``after``) into one sequence, production's last (_chain_racers):
    of two racers, the record of the version left in production names the one production held just before it; of
    three or more, every racer is in the sequence once, in an order the registry cannot contradict (a production
    set by hand, not through here, is ordered from its next move on). Then ``previous_production`` is made to match
    the production version's record, re-read until it does, so the last writer of either leaves them agreeing."""
    version = str(version)
    if alias != production:
        mlflow_client.set_registered_model_alias(name, alias, version)
        return
    known = model_versions(mlflow_client, f"name='{name}'")  # before production is read: see below
    current = _alias_version(mlflow_client, name, alias)
    leaving = None if current is None else str(current.version)  # None: no production yet
    hold(HOLD_ALIAS_MOVE)
    if leaving == version:  # not a move: its record stands
        mlflow_client.set_registered_model_alias(name, alias, version)
        return
    after = "none" if current is None else ((_move_of(current) or {}).get("id") or f"{leaving}@untracked")
    if any(_move_done(v, after) for v in known):
        # a move from that tenure was done before production was read as it: production was set back by hand (the
        # MLflow UI), not through here; this move cannot be ordered against a racer, nor taken for an old move's.
        # "none" too: the alias deleted by hand after the first move ever, whose version is no racer of this one
        after = f"{leaving}@{uuid.uuid4().hex}"
    move = {"id": uuid.uuid4().hex, "from": leaving, "after": after}
    mlflow_client.set_model_version_tag(name, version, MOVE_TAG, json.dumps(move))
    mlflow_client.set_registered_model_alias(name, alias, version)
    hold(HOLD_ALIAS_SET)
    mlflow_client.set_model_version_tag(name, version, MOVE_SET_TAG, move["id"])
    _chain_racers(mlflow_client, name, alias, after, leaving)
    _mirror_previous(mlflow_client, name, alias)


def _chain_racers(mlflow_client, name: str, alias: str, after: str, leaving: str | None, tries: int = 10) -> None:
    """The moves from one production (``after``: its tenure; ``leaving``: its version) recorded as one sequence: the
    racers done, and production when it is one of them (its alias set is certain, done or not), each recorded as
    replacing the one before, the first ``leaving``. Production is last: its alias set came last. The others keep
    the order their records already chain in from ``leaving`` (each mover that finished found the ones before it
    done), the rest by version number: which of them held production in between MLflow cannot tell (no
    compare-and-set), so this is one sequence that explains the registry, never two versions that each replaced the
    same one (before, of three racers finishing in turn, the third recorded the first as what it replaced, as the
    second did: a rollback skipped the second). When a later move has replaced the group's last already, that move's
    records name it (_tenure_last). Each racer runs it after its move is done, re-reading until the
    records agree, so the last to finish leaves the whole group chained whatever the others saw."""
    for _ in range(tries):
        versions = model_versions(mlflow_client, f"name='{name}'")
        now = _alias_version(mlflow_client, name, alias)  # after the search: every racer done before it is in it
        group = {str(v.version): v for v in versions if _move_done(v, after)}
        last = None
        if now is not None and (_move_of(now) or {}).get("after") == after:
            last = str(now.version)
            group[last] = now
        elif now is not None:  # a later move replaced the group's last: its record says which that was
            last = _tenure_last(versions, after, _move_of(now))
            if last is not None:
                group[last] = next(v for v in versions if str(v.version) == last)
        if not group:
            return
        moves = {v: _move_of(record) for v, record in group.items()}
        order, step = [], leaving
        while True:  # the chain the records already form from leaving
            following = [v for v in group if v != last and v not in order and moves[v].get("from") == step]
            if len(following) != 1:
                break
            order.append(following[0])
            step = following[0]
        order += sorted((v for v in group if v != last and v not in order), key=_version_number)
        order += [last] if last is not None else []
        wrote = False
        for before, v in zip([leaving, *order], order):
            if moves[v].get("from") != before:
                if (_move_of(mlflow_client.get_model_version(name, v)) or {}).get("id") != moves[v]["id"]:
                    wrote = True  # moved again since the search: its new record is not this group's; read again
                    continue
                mlflow_client.set_model_version_tag(name, v, MOVE_TAG, json.dumps({**moves[v], "from": before}))
                wrote = True
        if not wrote:
            return


def _tenure_last(versions, after: str, record: dict | None) -> str | None:
    """The version that held production last in the tenure ``after``, when later moves (``record``: production's)
    replaced it: the moves' ``after`` ids followed back to the one move of that tenure (its alias set is certain: a
    later mover read it as production); None where a record is gone (a version moved again since) or edited.
    Without it, two racers overtaken before the second said it moved went by version number: 2 then 3, where 3
    held production before 2, and 3 and the later move each recorded replacing 2."""
    by_id = {move["id"]: (str(v.version), move) for v in versions if (move := _move_of(v)) is not None}
    seen: set = set()
    while record is not None and record.get("after") not in seen:
        seen.add(record.get("after"))
        found = by_id.get(record.get("after"))
        if found is None:
            return None
        version, record = found
        if record.get("after") == after:
            return version
    return None


def _version_number(version: str) -> tuple[int, str]:
    """A model version's sort key: its number (versions are numbered strings), its text for anything else."""
    return (int(version), "") if version.isdigit() else (0, version)


def _move_of(version) -> dict | None:
    """A version's MOVE_TAG record, or None (never moved to production since these records, or edited by hand)."""
    try:
        move = json.loads((version.tags or {}).get(MOVE_TAG) or "null")
    except ValueError:
        return None
    return move if isinstance(move, dict) and isinstance(move.get("id"), str) else None


def version_number(text) -> str | None:
    """A model version as the registry writes it ("3"), from ``text`` a person or a tag gave ("3", " 3", "03"); None
    when it is no whole number above 0. MLflow reads "03" and " 3" as version 3, so without this one release became
    two directories on a host (releases/03 beside releases/3: a rollback unmarked one and the app could fall back to
    the other) and prune did not see a hand-edited previous_production naming the version it keeps."""
    text = str(text).strip()
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        return None
    return str(int(text))


def recorded_previous(version) -> str | None:
    """The version ``version``'s latest move to production replaced, as its record says (None: none recorded)."""
    found = (_move_of(version) or {}).get("from")
    return None if found is None else str(found)


def move_marked_done(version) -> bool:
    """Whether ``version``'s latest move to production is marked done (MOVE_SET_TAG), so mirrored or being mirrored."""
    move = _move_of(version)
    return move is not None and (version.tags or {}).get(MOVE_SET_TAG) == move["id"]


def _move_done(version, after: str) -> bool:
    """Whether ``version``'s latest move to production replaced the tenure ``after`` and its alias move is done."""
    return move_marked_done(version) and _move_of(version).get("after") == after


def _mirror_previous(mlflow_client, name: str, alias: str, tries: int = 10) -> None:
    """``previous_production`` = what the production version's record says it replaced, re-read until they agree."""
    for _ in range(tries):
        now = _alias_version(mlflow_client, name, alias)
        want = None if now is None else recorded_previous(now)
        if want is None or (mlflow_client.get_registered_model(name).tags or {}).get(PREVIOUS_PRODUCTION_TAG) == want:
            return
        mlflow_client.set_registered_model_tag(name, PREVIOUS_PRODUCTION_TAG, str(want))
