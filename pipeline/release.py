"""Releases on the serving host: registry aliases are the state, the models directory follows them.

The aliases of the registered model (params.yaml's ``promote.model_name``, or ``--name``; visible in the MLflow UI)
say which version plays which part: production's is params.yaml's ``promote.alias`` (``production`` as shipped,
``champion`` or another where a team names it so), the candidates' ``canary`` and ``shadow``; every
command here first moves or reads an alias, then installs the bundles it names from the host's release store (pipeline/
release_store.py, the last N versions on disk; fetched from the registry once), and the
running app hot-reloads them (app/variants.py).

    python -m pipeline.release status
    python -m pipeline.release shadow  [--version V | --alias A]  candidate mirrors every request, never answers
    python -m pipeline.release canary  [--version V | --alias A] [--share 0.1]   answers a sticky share
    python -m pipeline.release decide  [--events logs/predictions.jsonl | --elasticsearch URL] [--actuals sales.csv]
                                       [--apply]
    python -m pipeline.release promote [--version V]   candidate -> production (previous one remembered)
    python -m pipeline.release rollback                production -> the previous production version
    python -m pipeline.release deploy  --url http://127.0.0.1:5005 [--version V] [--shadow-s 30] [--share 0.1]
                                       [--observe-s 60] [--actuals sales.csv] [--elasticsearch URL]
    python -m pipeline.release sync    install what the aliases name (a fresh or restarted host)
    python -m pipeline.release smoke   --url U [--requests 40]   forecasts over the catalog through the API

``deploy`` is `make deploy`: a shadow phase first (``--shadow-s``: alias ``shadow``, judged
by the same rule) -> alias ``canary`` -> hot reload (waits until GET /api/v1/model shows the
canary's digest) -> smoke test (predictions through the API, the canary among those who
answer) -> canary check (``compare`` on the users' traffic logged since the canary went live, the smoke
test's left out) ->
promote, or roll back automatically; Ctrl-C or SIGTERM before the promote rolls back the same way, then ends with
its one line saying so (``withdraw``). The decision rule is ``compare``'s docstring.

The traffic judged is read from the app's JSON-lines event log (``--events``, default
$SHELFCAST_PREDICTION_LOG or logs/predictions.jsonl: a host running `make serve`) or, with
``--elasticsearch URL`` (default $ELASTICSEARCH_URL), from the search indices the docker
compose stack's Fluentd writes (``--index``): `make deploy ELASTICSEARCH_URL=...`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline import registry_fetch, tracking
from pipeline.actuals import read_actuals
from pipeline.atomic import DirectoryBusy, one_writer, scratch_directory, write_text_atomic
from pipeline.bundle import BundleError
from pipeline.stage import (CommandParser, interruption_behind, output_any_terminal_can_take, run_interruptible,
                            second_signal_leaves, settled, stdout_closed)
from pipeline.model_params import model_named, production_alias, registered_model
from pipeline.event_sources import (DEFAULT_INDEX_PATTERN, ElasticsearchEvents, EventSourceError, event_time,
                                    event_units, finite_number, is_closed_day, log_marks, prediction_log,
                                    read_jsonl_events)
from pipeline.release_replay import ProductionReplay, request_key
from pipeline.release_smoke import (SmokeAnswers, draw_nonce, installed_nonces, nonce_private, recorded_nonce,
                                    smoke_nonce, smoke_request_id)
from pipeline.release_store import (CANARY, GOOD_MARK, PRODUCTION, SHADOW, ReleaseStore, bundle_name, check_share,
                                    draw_serving_host, serving_host)

# A test's hold point (tracking.hold): deploy's withdraw waits there, before it ends anything, for the file the
# variable names (tests/delivery/test_release_interrupted.py sends the second signal there).
HOLD_WITHDRAW = "SHELFCAST_HOLD_DEPLOY_WITHDRAW"
PREVIOUS_TAG = tracking.PREVIOUS_PRODUCTION_TAG  # registered-model tag: the version `rollback` returns to
DEFAULT_SHARE = 0.1
NOTHING_TO_DEPLOY = "nothing_to_deploy"  # deploy's outcome without a candidate (or with production's version): exit 0
SUPERSEDED = "superseded"  # deploy promoted its candidate, then another host's move named another production: exit 0
DEFAULT_EVENTS = prediction_log()
# the serving host's release store: $SHELFCAST_MODELS_HOST (docker-compose.yml mounts the same) or ./models
DEFAULT_MODELS = Path(os.environ.get("SHELFCAST_MODELS_HOST", "").strip() or "models")
MAX_EVENTS = 200_000  # the most recent events one decision reads (a release's traffic, not the archive)
# the decision rule's numbers (stated in compare's docstring and README "Releases")
MIN_EVENTS = 30  # fewer candidate predictions than this: no decision, keep observing
MAX_EXTRA_ERROR_RATE = 0.01  # candidate errors may exceed production's by at most 1 point ...
Z_ONE_SIDED_95 = 1.645  # ... with 95 % one-sided confidence (two-proportion z-test)
MAX_LATENCY_RATIO = 1.5  # the latency bar: 1.5x production's p95 ...
MIN_LATENCY_EXCESS_MS = 5.0  # ... and at least this many ms above it (millisecond jitter is no regression)
SLOW_SHARE = 0.05  # a candidate whose p95 is within the bar has at most 5 % of its answers above it ...
LATENCY_P_VALUE = 0.05  # ... rolled back only when more lie above it with 95 % one-sided confidence (binomial)
MAX_SLOW_SHARE_PROMOTED = 0.15  # promoted only when at most this share lies above it, with 95 % confidence
MAX_FORECAST_SHIFT = 0.5  # |median log1p(candidate) - log1p(production)| on the same requests (or series)
MIN_VOLUME_SERIES = 10  # the total-units rule judges no fewer store×items (a canary at a small share has a few)
NWRMSLE_MARGIN = 0.0  # with actuals: candidate NWRMSLE's 95 % bootstrap interval must not lie above production's + this
MIN_LIVE_SERIES = 5  # live accuracy is judged on no fewer store×items a side


class ReleaseError(RuntimeError):
    """A release step cannot be done; the message says which and why."""


# --- registry state ---------------------------------------------------------------------------

def _client(root: Path):
    return tracking.client(root, create=False)


# what a registry with no registered model yet (a fresh clone's) needs first: every release command says it
NOTHING_REGISTERED_HINT = ("; nothing is registered there yet: `dvc repro` then `python -m pipeline.promote` (or "
                           "`make run`) registers and promotes the first version")


def _registered_model(root: Path, name: str):
    """The registered model ``name``; ReleaseError in one line, saying what to run first when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(root).get_registered_model(name)
    except MlflowException as exc:
        reason = tracking.store_error_text(exc)
        hint = NOTHING_REGISTERED_HINT if tracking.is_gone(exc) else ""
        raise ReleaseError(f"registered model {name} at {tracking.shown_uri(root)}: {reason}{hint}") from None


@model_named
def aliases(root: Path, name: str | None = None) -> dict[str, str]:
    """The registered model's aliases as the registry names them: {alias: version}."""
    return {k: str(v) for k, v in _registered_model(root, name).aliases.items()}


def variant_alias(root: Path, variant: str) -> str:
    """The registry alias that names ``variant``'s version: production's is params.yaml's promote.alias, a
    candidate's its own name (canary, shadow)."""
    return production_alias(root) if variant == PRODUCTION else variant


def variant_versions(root: Path, name: str | None = None, named: Mapping[str, str] | None = None) -> dict[str, str]:
    """{variant: version} for the variants whose alias the registry names (``named``: its aliases, read unless
    given). Before, release read the literal alias ``production``: a project whose promote.alias is ``champion``
    had promote move ``champion`` while release found no production at all."""
    named = aliases(root, name) if named is None else named
    alias_of = {PRODUCTION: production_alias(root), CANARY: CANARY, SHADOW: SHADOW}  # params.yaml read once
    return {variant: named[alias] for variant, alias in alias_of.items() if alias in named}


def _version(root: Path, version: str, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return _client(root).get_model_version(name, str(version))
    except MlflowException as exc:
        raise ReleaseError(f"{name} version {version}: {tracking.store_error_text(exc)}") from None


@model_named
def aliased_version(root: Path, alias: str, command: str, name: str | None = None) -> str:
    """The version ``alias`` names, for ``command`` (``--alias``); ReleaseError in one line naming the alias when it
    names nothing (the model's aliases listed: MLflow's are case-sensitive, so ``Production`` is not ``production``)
    or, for a shadow or canary, production's own version (a candidate judged against itself, served twice)."""
    named = aliases(root, name)
    if alias not in named:
        other_case = [known for known in named if known.lower() == alias.lower()]
        hint = f"; registry aliases are case-sensitive: {other_case[0]!r}?" if other_case else ""
        raise ReleaseError(f"--alias {alias!r} names no version of {name} (its aliases: "
                           f"{', '.join(f'{a} -> {v}' for a, v in sorted(named.items())) or 'none'}){hint}")
    production = named.get(production_alias(root))
    if command in (SHADOW, CANARY) and named[alias] == production:
        raise ReleaseError(f"--alias {alias!r} names version {production}, production's own: a {command} of it would "
                           f"be judged against itself; name a candidate's version (--alias shadow, --version V)")
    return named[alias]


@model_named
def ensure_release(root: Path, store: ReleaseStore, version: str, name: str | None = None) -> str:
    """Release ``version`` on disk (downloaded once from the registry, verified); returns its digest."""
    mv = _version(root, version, name)
    want = registry_fetch.promoted_digest(mv)
    if store.has_release(version, want):
        return want
    store.root.mkdir(parents=True, exist_ok=True)
    with scratch_directory(store.root, ".download.") as scratch:  # a killed download's is deleted by the next
        registry_fetch.download_version(root, mv, scratch / "bundle")  # checked: it can serve
        return store.add_release(version, scratch / "bundle", servable=True, name=name)


@model_named
def install(root: Path, store: ReleaseStore, variant: str, version: str, name: str | None = None) -> str:
    ensure_release(root, store, version, name)
    return store.install(variant, version, name)


LOG_MARKS_FILE = ".log-marks-{variant}.json"  # in the models directory: where the event log ended at its install


def judged_since(store: ReleaseStore, variant: str) -> float | None:
    """Since when the candidate and the production it is compared with were both installed (epoch seconds): its
    install, or production's where that came later (`release sync` following a production the registry moved, the
    candidate kept). Before, decide judged from the candidate's install alone, so a canary was compared with the
    events of two production versions at once, the earlier one's no longer served."""
    candidate, production = store.installed_at(variant), store.installed_at(PRODUCTION)
    if candidate is None or production is None:
        return candidate
    return max(candidate, production)


@model_named
def install_candidate(root: Path, store: ReleaseStore, variant: str, version: str,
                      name: str | None = None, events_log: Path | None = None) -> str:
    """Install ``version`` as a candidate; with ``events_log`` (the app's JSON-lines log), where that log ends is
    recorded first (``log_marks``, in LOG_MARKS_FILE) once the install changed what the variant serves: ``release
    decide`` then reads only the bytes logged since (read_jsonl_events' start_offsets), as deploy's polls do. Such an
    install draws the candidate's smoke-id nonce too (pipeline/release_smoke.py), as does one that finds none, or one
    group or others could read (written 0644 before nonces were private)."""
    marks = None if events_log is None else log_marks(events_log)  # before the install: nothing logged between
    draw_serving_host(store.root)  # before the candidate can answer: the app names it in each event
    before = store.installed_at(variant)
    digest = install(root, store, variant, version, name)
    if (store.installed_at(variant) != before or recorded_nonce(store, variant) is None
            or not nonce_private(store, variant)):  # one others could read (0644, from before) may have been read
        draw_nonce(store, variant)  # an earlier install's smoke ids (replayed by a client) are a user's now
    if marks is not None and store.installed_at(variant) != before:  # else the candidate went live earlier
        text = {str(path): [size, base64.b64encode(tail).decode("ascii")] for path, (size, tail) in marks.items()}
        write_text_atomic(store.root / LOG_MARKS_FILE.format(variant=variant), json.dumps(text) + "\n")
    return digest


def installed_log_marks(store: ReleaseStore, variant: str) -> dict[Path, tuple[int, bytes]] | None:
    """The marks ``install_candidate`` recorded for ``variant``, or None (none recorded, or unreadable: the log is
    then read whole, its older lines skipped by their timestamps). Marks from an earlier install of the variant
    are earlier offsets: reading from them reads more, never less."""
    path = store.root / LOG_MARKS_FILE.format(variant=variant)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        return {Path(file): (int(size), base64.b64decode(tail, validate=True))
                for file, (size, tail) in recorded.items()}
    except (OSError, ValueError, TypeError, AttributeError):  # binascii.Error is a ValueError
        return None


@model_named
def sync(root: Path, store: ReleaseStore, name: str | None = None,
         events_log: Path | None = None) -> dict[str, str | None]:
    """Make the models directory match the aliases (what a fresh or restarted host runs); nothing is installed
    while the registry names no production version. A candidate whose version cannot be served (registered by hand,
    damaged) is left as this host had it while the other variants are synced; ReleaseError then names it."""
    current = variant_versions(root, name)
    if PRODUCTION not in current:
        raise ReleaseError(no_production(store, name, production_alias(root)))
    done: dict[str, str | None] = {}
    refused: list[str] = []
    for variant in (PRODUCTION, CANARY, SHADOW):
        if variant in current:
            try:
                if variant == PRODUCTION:
                    install(root, store, variant, current[variant], name)
                else:
                    install_candidate(root, store, variant, current[variant], name, events_log)
                    if variant == CANARY:
                        give_canary_a_share(store, current[variant])
            except (ReleaseError, registry_fetch.FetchError, BundleError) as exc:
                if variant == PRODUCTION:
                    raise
                refused.append(f"{variant}: {exc}")
                continue
            done[variant] = current[variant]
        elif variant != PRODUCTION:
            store.remove(variant)
            done[variant] = None
    if refused:
        raise ReleaseError(f"synced {synced_text(done)}; not synced, left as this host had it: {'; '.join(refused)}")
    return done


def synced_text(done: dict[str, str | None]) -> str:
    """What ``sync`` did, as a line says it: ``production version 3, canary none (removed)``, not a Python dict."""
    return ", ".join(f"{variant} " + (f"version {version}" if version else "none (removed)")
                     for variant, version in done.items()) or "nothing"


def give_canary_a_share(store: ReleaseStore, version: str) -> None:
    """A canary ``sync`` installs answers DEFAULT_SHARE of store×items where this host records no share for it
    (no release.json: a fresh or wiped host; or 0, as an ended canary leaves it), said on stderr; a share recorded
    above 0 is kept, and a malformed release.json left for `release status` to name. The share is the host's
    (release.json), not the registry's: before, a host synced after a canary was registered served it to nobody
    (share 0) while `release status` called it in sync, and `release decide` waited for events that never came."""
    try:
        if store.canary_share() > 0.0:
            return
    except ValueError:  # malformed: the app serves 0 meanwhile, which status says; not overwritten unread
        return
    store.set_canary_share(DEFAULT_SHARE)
    print(f"release: canary version {version} answers {DEFAULT_SHARE:.0%} of store×items (this host recorded no "
          f"canary share; `python -m pipeline.release canary --version {version} --share S` sets another)",
          file=sys.stderr)


def no_production(store: ReleaseStore, name: str, alias: str) -> str:
    """What to say when the registry names no production version (``alias``: production's): a new registry promotes
    one first; a host that serves one (the alias deleted by hand) names the version to point the alias at again."""
    served = store.served_version(PRODUCTION)
    if served is None:
        return f"models:/{name}@{alias} does not exist yet: promote a model first"
    other = served_model_name(store)
    if other is not None and other != name:  # promote.model_name renamed: release `served` is the other model's
        return (f"models:/{name}@{alias} does not exist yet and this host serves {other}'s version {served} as "
                f"production: promote.model_name is {name!r}, not the deployed model's name; make {name}'s first "
                "production by hand, once (`make run`, or `dvc repro` then `make promote`, with MLFLOW_TRACKING_URI "
                f"set and SHELFCAST_PROMOTE_ALIAS unset: README, CI/CD), or set promote.model_name back to {other!r}")
    return (f"the registry names no production version of {name} (its alias {alias!r} deleted?) while this host "
            f"serves version {served} as production: `python -m pipeline.release promote --version {served}` names "
            "it again")


def served_model_name(store: ReleaseStore) -> str | None:
    """The registered model's name the bundle served as production carries (bundle.json ``name``); None if unread."""
    return bundle_name(store.variant_dir(PRODUCTION))


@model_named
def host_state(root: Path, store: ReleaseStore, current: dict[str, str],
               name: str | None = None) -> dict[str, dict]:
    """Per variant (production, canary, shadow; ``current``: variant_versions): the version its alias names, its
    serving digest,
    the digest of the bundle this host serves for it, and whether the two agree. A promote or release stopped
    between moving an alias and installing its bundle leaves them apart, which ``sync`` mends. An alias naming a
    version release refuses (registered by hand: no serving digest) is never in sync; ``refused`` says why."""
    state = {}
    for variant in (PRODUCTION, CANARY, SHADOW):
        version, refused = current.get(variant), None
        try:
            registered = None if version is None else registry_fetch.promoted_digest(_version(root, version, name))
        except registry_fetch.FetchError as exc:
            registered, refused = None, str(exc)  # nothing this host could serve for it: sync refuses it too
        served = store.served_digest(variant)
        state[variant] = {"version": version, "registered_digest": registered, "served_digest": served,
                          "in_sync": (served == registered and refused is None) if version is not None
                          else served is None}
        if refused is not None:
            state[variant]["refused"] = refused
    return state


@model_named
def served_candidate(root: Path, store: ReleaseStore, current: dict[str, str], variant: str,
                     name: str | None = None) -> str:
    """The version ``variant``'s alias names, when this host serves its bundle as ``variant``; else ReleaseError.
    ``decide --apply`` acts on it: the traffic judged is the served bundle's, so a verdict applied to an alias moved
    or deleted since (by hand, or CI registering a newer candidate) would promote or end a version nobody judged."""
    version = current.get(variant)
    if version is not None and host_state(root, store, {variant: version}, name)[variant]["in_sync"]:
        return version
    served_digest, served = store.served_digest(variant), store.served_version(variant, name)
    other = bundle_name(store.variant_dir(variant))  # the name before a rename: its numbers are not this model's
    shown = ("nothing" if served_digest is None
             else f"{other}'s bundle {served_digest[:12]}" if other not in (None, name)
             else f"version {served or '?'} (bundle {served_digest[:12]})")
    named = f"has no {variant} alias (deleted, or never set)" if version is None else \
        f"names version {version} as {variant}"
    act = f"`release promote --version {served}` promotes the version judged, " if served else ""
    raise ReleaseError(f"{name} {named} but this host serves {shown} as {variant}: the traffic judged is not the "
                       f"alias's; nothing applied ({act}`make release-sync` makes the host follow the registry)")


def check_new_canary_share(share: float) -> float:
    """``share`` when a new canary can be judged at it: above 0 (a canary at 0 answers nobody, so its smoke test
    fails and decide has no events), at most 1. ValueError naming the field otherwise."""
    if check_share(share) == 0.0:
        raise ValueError("canary_share: 0 sends the canary no request; give a share above 0 (at most 1), or judge "
                         "it on mirrored traffic with `release shadow`")
    return float(share)


@model_named
def set_candidate(root: Path, store: ReleaseStore, variant: str, version: str, share: float | None = None,
                  name: str | None = None, events_log: Path | None = None) -> str:
    """Install ``version`` as shadow or canary, then move the alias (the registry never names what is not served).
    Production's own version is refused: a candidate of it compares production with itself, and serves it twice."""
    if variant == CANARY and share is not None:
        check_new_canary_share(share)  # before the install: a bad share must leave no canary the registry lacks
    if variant_versions(root, name).get(PRODUCTION) == str(version):
        raise ReleaseError(f"version {version} is production already: a {variant} of it would be judged against "
                           f"itself; name another version")
    # a Ctrl-C or SIGTERM from the install to the alias move says what it may leave and what finishes or undoes it,
    # not "rerun it (… none is half-written)": the host may serve what the registry does not name (deploy words its own)
    leaves = (f"release {variant} was making version {version} the {variant}: this host may serve it as {variant} "
              f"while the registry's {variant} alias names another version or none (`python -m pipeline.release "
              f"status` says); `python -m pipeline.release {variant} --version {version}` finishes it, `python -m "
              "pipeline.release sync` makes the host follow the registry")
    with second_signal_leaves(leaves):
        digest = install_candidate(root, store, variant, version, name, events_log)
        if variant == CANARY:
            store.set_canary_share(DEFAULT_SHARE if share is None else share)
        _client(root).set_registered_model_alias(name, variant, str(version))
    return digest


@model_named
def end_candidate(root: Path, store: ReleaseStore, variant: str, name: str | None = None,
                  version: str | None = None) -> None:
    """Stop serving a candidate: alias deleted first (the registry's word), then the files. With ``version``, the
    alias is deleted only while it still names that version, and the files removed only while they are that
    version's (or no release's): a newer candidate the ML pipeline registered under it meanwhile (CI's promote to
    ``shadow`` during a canary's observation) keeps both, for its own release; before, its files went and the host
    stopped serving it until the next `release sync`. When the
    registry cannot be asked (gone, refusing), the files are removed all the same (a rolled-back candidate stops
    serving) and ReleaseError says the alias may still name it."""
    from mlflow.exceptions import MlflowException

    left = None
    try:
        with tracking.mlflow_errors_named(root):
            client = _client(root)
            try:
                if version is None or str(client.get_model_version_by_alias(name, variant).version) == str(version):
                    client.delete_registered_model_alias(name, variant)
            except MlflowException as exc:
                if not tracking.no_such_alias(exc):
                    raise
    except (tracking.TrackingError, MlflowException) as exc:
        left = tracking.store_error_text(exc) if isinstance(exc, MlflowException) else str(exc)
    if version is None or store.claimed_version(variant, name) in (None, str(version)):
        store.remove(variant)
        if variant == CANARY:
            store.set_canary_share(0.0)
    if left is not None:
        raise ReleaseError(f"{variant} removed from this host, but its alias could not be deleted ({left}): the "
                           f"{variant} alias may still name {'it' if version is None else f'version {version}'}, "
                           f"and `make release-sync` would install it again; run `python -m pipeline.release end "
                           f"--variant {variant}` once the registry answers")


@model_named
def promote(root: Path, store: ReleaseStore, version: str | None = None, name: str | None = None) -> str:
    """Make ``version`` (default: the canary's, else the shadow's) production; the old one is remembered."""
    current = variant_versions(root, name)
    version = version or current.get(CANARY) or current.get(SHADOW)
    if not version:
        raise ReleaseError("nothing to promote: no --version and no canary or shadow alias")
    before = current.get(PRODUCTION)
    # interrupted from the install on: the line says what it may leave (set_candidate's comment)
    leaves = (f"release promote was making version {version} production (version {before or 'none'} before): this "
              f"host may serve version {version} as production while the registry names version {before or 'none'}, "
              "or the registry name it with its candidate alias still set (`python -m pipeline.release status` "
              f"says); `python -m pipeline.release promote --version {version}` finishes it, `python -m "
              "pipeline.release sync` makes the host follow the registry")
    with second_signal_leaves(leaves):
        was_good = (store.release_dir(version) / GOOD_MARK).exists()  # it served as production before
        install(root, store, PRODUCTION, version, name)
        alias = production_alias(root)
        try:
            tracking.point_alias(_client(root), name, alias, version, production=alias)
        except Exception:
            # the registry refused the move (a locked store, a server gone between two calls): where it still names
            # the production this host replaced, the host serves that again (from disk), so both agree; before, the
            # host kept serving the new version to every user while the registry, and deploy's "production version
            # N unchanged", named the old one
            if before is not None and before != str(version) and _production_named(root, name) == before:
                install(root, store, PRODUCTION, before, name)
                if not was_good:
                    store.withdraw(version)  # never production: no worker falls back to it
            raise
        for variant in (CANARY, SHADOW):
            if current.get(variant) == str(version):
                end_candidate(root, store, variant, name, version)
    return follow_production(root, store, str(version), name)


@model_named
def follow_production(root: Path, store: ReleaseStore, moved: str, name: str | None = None) -> str:
    """The version production names once this host has moved it to ``moved``, installed here. This host installs
    before it moves the alias; another host's move (its promote or rollback) landing after this one's leaves the
    registry naming another version, which this host then serves instead (before, it served ``moved`` until someone
    ran `release sync`); said on stderr. A move landing after this re-read is not seen: `release status` says so."""
    now = variant_versions(root, name).get(PRODUCTION)
    if now is None or now == moved:
        return moved
    install(root, store, PRODUCTION, now, name)
    print(f"release: another move made version {now} production after this host moved it to {moved} (another "
          f"host's promote or rollback): this host installed version {now}, as the registry names it", file=sys.stderr)
    return now


@model_named
def rollback(root: Path, store: ReleaseStore, name: str | None = None) -> tuple[str, str]:
    """Production back to the previous production version (from disk: seconds); (from, to)."""
    model = _registered_model(root, name)
    alias = production_alias(root)
    current = None if model.aliases.get(alias) is None else str(model.aliases[alias])
    previous = (model.tags or {}).get(PREVIOUS_TAG)
    production = None if current is None else _version(root, current, name)
    # a move not yet marked done (its mover between the alias move and its record's MOVE_SET_TAG, or killed there)
    # has not mirrored PREVIOUS_TAG: its own record says what it replaced (the tag was unset, or an older version's)
    if production is not None and (not previous or not tracking.move_marked_done(production)):
        previous = tracking.recorded_previous(production) or previous
    if not previous:
        raise ReleaseError(f"{name} records no previous production version ({PREVIOUS_TAG}); nothing to roll back to")
    if tracking.version_number(previous) is None:  # edited by hand: no version the registry could give
        raise ReleaseError(f"{name}'s previous production version ({PREVIOUS_TAG}) is {previous!r}, which is no "
                           "version number; nothing to roll back to (`release promote --version N` chooses one)")
    previous = tracking.version_number(previous)  # " 3", "03": version 3, installed as releases/3, not a second copy
    if previous == current:
        raise ReleaseError(f"{name}'s previous production version ({PREVIOUS_TAG}) is version {previous}, production "
                           "itself; nothing to roll back to (`release promote --version N` chooses one)")
    try:
        _version(root, previous, name)
    except ReleaseError as exc:  # deleted since, or the tag edited by hand
        raise ReleaseError(f"{name}'s previous production version ({PREVIOUS_TAG}) is {previous!r}, which the "
                           f"registry cannot give ({exc}); nothing to roll back to (`release promote --version N` "
                           "chooses one)") from None
    # interrupted from the install on: the line says what it may leave (set_candidate's comment); rerunning rollback
    # once the alias moved would return to the version rolled back from, so it names promote --version instead
    leaves = (f"release rollback was returning production from version {current} to version {previous}: this host "
              f"may serve version {previous} as production while the registry names version {current}, or the "
              f"registry name version {previous} with the candidates not yet ended (`python -m pipeline.release "
              f"status` says); `python -m pipeline.release promote --version {previous}` finishes it, `python -m "
              "pipeline.release sync` makes the host follow the registry")
    with second_signal_leaves(leaves):
        install(root, store, PRODUCTION, previous, name)
        # remembers current: a second rollback undoes
        tracking.point_alias(_client(root), name, alias, previous, production=alias)
        if current:
            store.withdraw(current)  # judged bad: a worker that cannot load production must not fall back to it
        for variant in (CANARY, SHADOW):
            end_candidate(root, store, variant, name)
    # said, not done silently: a candidate is judged beside the production it was installed with, so a rollback ends
    # it, and a candidate the ML pipeline registered meanwhile is ended too; each can be started again
    ended = [f"{variant} version {model.aliases[variant]}" for variant in (CANARY, SHADOW) if variant in model.aliases]
    if ended:
        print(f"release: the rollback ended {' and '.join(ended)} (aliases deleted, files removed): a candidate is "
              "judged beside the production it was installed with; `python -m pipeline.release canary|shadow "
              "--version V` starts one again", file=sys.stderr)
    return str(current), follow_production(root, store, previous, name)


# --- the decision on logged traffic -----------------------------------------------------------

@dataclass
class RequestLatencies:
    """Latencies of prediction events, each weighted 1 / its request's batch size: statistics per request."""

    ms: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, latency_ms: float, batch_size: Any) -> None:
        size = batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0 else 1
        self.ms.append(latency_ms)
        self.weights.append(1.0 / size)

    def extend(self, other: "RequestLatencies") -> None:
        self.ms += other.ms
        self.weights += other.weights

    @property
    def requests(self) -> int:
        """The requests these latencies stand for (events of a split request count in proportion)."""
        return int(round(sum(self.weights)))

    def above(self, bar_ms: float) -> int:
        """Requests slower than ``bar_ms``."""
        return int(round(sum(w for ms, w in zip(self.ms, self.weights) if ms > bar_ms)))

    def percentile(self, q: float) -> float | None:
        """The weighted ``q``-th percentile (the smallest latency with at least q % of the requests at or below)."""
        if not self.ms:
            return None
        order = np.argsort(self.ms, kind="stable")
        ms, cumulative = np.asarray(self.ms)[order], np.cumsum(np.asarray(self.weights)[order])
        return float(ms[min(int(np.searchsorted(cumulative, q / 100.0 * cumulative[-1] - 1e-9)), ms.size - 1)])


@dataclass
class VariantTraffic:
    predictions: int = 0
    errors: int = 0  # canary attempts that production had to answer (events with canary_failed)
    # every prediction carries its request's latency (app/service.py): each weighs 1 / its request's batch size,
    # so a request counts once (a batch of 200 is one slow request, not 200) whatever ids clients give it, and a
    # request split with a canary counts in proportion to its part here
    latency: RequestLatencies = field(default_factory=RequestLatencies)
    by_request: dict[tuple, float] = field(default_factory=dict)  # (request id, instance, inputs) -> units
    request_series: dict[tuple, tuple] = field(default_factory=dict)  # (request id, instance, ...) -> (store, item)
    digests: set = field(default_factory=set)  # the model_digest of every event (the bundles that answered)
    by_series: dict[tuple, list[float]] = field(default_factory=dict)  # (store, item, date) -> units
    by_inputs: dict[tuple, list[float]] = field(default_factory=dict)  # (store, item, date, onpromotion) -> units
    # (store, item, date) answered 0 as a closed store-day (pipeline/closed_days.py): the rule's answer, not the
    # model's, so never paired in the forecast comparison or scored in live accuracy (both answer 0 there)
    closed: set = field(default_factory=set)
    closed_answers: int = 0  # predictions answered so (counted in `predictions` too)
    # answers of fewer than 0 units (counted in `predictions`): no sales forecast (a bundle's graph clips at 0, and
    # RMSLE and log1p have none below -1), so never paired or scored; a candidate's are a reason to roll it back
    negative_answers: int = 0
    most_negative: float = 0.0
    smoke_predictions: int = 0  # the smoke test's answers (release_smoke.SmokeAnswers): left out of all above
    other_hosts: int = 0  # events another serving host answered (their serving_host): left out of all above


def _event_time(event: dict) -> float:
    """The event's time in epoch seconds (event_sources.event_time: one without an offset is UTC); +inf when
    unreadable (kept)."""
    moment = event_time(event)
    return math.inf if moment is None else moment.timestamp()


def read_traffic(events: Iterable[dict], since: float | None = None,
                 smoke_nonces: frozenset[str] = frozenset(), host: str | None = None) -> dict[str, VariantTraffic]:
    """Per-variant traffic of ``events``; those answering a smoke test signed under one of ``smoke_nonces`` (the
    installed candidates', release_smoke.installed_nonces) are left out of all but a canary's errors. With ``host``
    (this host's release_store.serving_host), an event naming another serving host is left out of everything: its
    smoke ids are signed with a nonce this host does not hold, and its candidate is that host's install."""
    traffic: dict[str, VariantTraffic] = {}
    smoke = SmokeAnswers(smoke_nonces)
    for event in events:
        if since is not None and _event_time(event) < since:
            continue
        variant = event.get("model_variant", PRODUCTION)
        if variant not in (PRODUCTION, CANARY, SHADOW):
            variant = PRODUCTION  # events from before release variants: production's
        units = event_units(event)
        inputs = event.get("inputs") if isinstance(event.get("inputs"), dict) else {}
        t = traffic.setdefault(variant, VariantTraffic())
        answered_by = event.get("serving_host")
        if host is not None and isinstance(answered_by, str) and answered_by != host:
            t.other_hosts += 1
            continue
        if event.get("canary_failed") is True:  # whoever asked: the smoke test passes on production's fallback
            traffic.setdefault(CANARY, VariantTraffic()).errors += 1
        if smoke.left_out(event, variant):  # no user's request: its answers are no evidence for the candidate
            t.smoke_predictions += units is not None
            continue
        if units is None:
            continue
        t.predictions += 1
        latency = finite_number(event.get("latency_ms"))
        if latency is not None:
            t.latency.add(latency, event.get("batch_size"))
        if units < 0:  # before: log1p's NaN promoted such a shadow, and live accuracy's math.log1p crashed decide
            t.negative_answers += 1
            t.most_negative = min(t.most_negative, units)
            continue
        # the inputs too: clients may send one X-Request-ID with every request, and a key of id and place alone
        # paired a shadow's forecast with production's for another request
        request = _key(event.get("request_id"), event.get("instance_index"), inputs.get("store_nbr"),
                       inputs.get("item_nbr"), inputs.get("date"), inputs.get("onpromotion"))
        if request is not None:
            t.by_request[request] = units
            t.request_series[request] = _key(inputs.get("store_nbr"), inputs.get("item_nbr")) or request
        if isinstance(event.get("model_digest"), str):
            t.digests.add(event["model_digest"])
        series = _key(inputs.get("store_nbr"), inputs.get("item_nbr"), inputs.get("date"))
        if series is not None:
            t.by_series.setdefault(series, []).append(units)
            if is_closed_day(event):
                t.closed.add(series)
        if is_closed_day(event):
            t.closed_answers += 1
        replayable = request_key(inputs)
        if replayable is not None:
            t.by_inputs.setdefault(replayable, []).append(units)
    return traffic


def _key(*parts) -> tuple | None:
    """Parts that can key a pairing (text and numbers), or None: an event shaped otherwise is counted, not paired."""
    return parts if all(isinstance(p, (str, int, float, type(None))) for p in parts) else None


@dataclass(frozen=True)
class LoggedEvents:
    """Where a decision reads the served traffic: the app's JSON-lines log (a file, or a directory of
    them), or the Elasticsearch/OpenSearch indices of the docker compose stack, whose app sends its
    events through Fluentd (no log file on the host). The same rule judges either."""

    path: Path | None = None
    search: ElasticsearchEvents | None = None
    marks: Mapping[Path, tuple[int, bytes]] | None = None  # the log as it was when a release began (`marked`)

    @classmethod
    def choose(cls, path: Path, elasticsearch: str | None, index: str = DEFAULT_INDEX_PATTERN) -> "LoggedEvents":
        """The search indices when a URL is given (``--elasticsearch`` / $ELASTICSEARCH_URL), else ``path``."""
        if elasticsearch:
            return cls(search=ElasticsearchEvents.from_environment(elasticsearch, index))
        return cls(path=path)

    def __str__(self) -> str:
        return f"{self.search.url}/{self.search.index}" if self.search is not None else str(self.path)

    def marked(self) -> "LoggedEvents":
        """These events, read from now on only: what a release's polls of the log read (each second, and a log read
        whole costs ~3 s of CPU a GB); the search indices are queried by time already."""
        return self if self.path is None else replace(self, marks=log_marks(self.path))

    def traffic(self, since: float | None = None, smoke_nonces: frozenset[str] = frozenset(),
                host: str | None = None) -> dict[str, VariantTraffic]:
        """Per-variant traffic of the events logged at or after ``since`` (epoch seconds; None: all), the smoke
        test's under ``smoke_nonces`` and other serving hosts' than ``host`` left out (read_traffic)."""
        import datetime as dt

        moment = None if since is None else dt.datetime.fromtimestamp(since, dt.timezone.utc)
        if self.search is not None:
            stamp = None if moment is None else moment.isoformat(timespec="milliseconds")
            traffic = read_traffic(self.search.prediction_events(MAX_EVENTS, since=stamp, host=host).events, since,
                                   smoke_nonces, host)
            for variant, count in ({} if host is None else self.search.other_hosts_events(stamp, host)).items():
                if variant not in (PRODUCTION, CANARY, SHADOW):
                    variant = PRODUCTION  # as read_traffic counts an event of no known variant
                traffic.setdefault(variant, VariantTraffic()).other_hosts += count
            return traffic
        # a marked log (deploy's polls) from its marks on; lines older than `since` are not parsed
        events = read_jsonl_events(self.path, MAX_EVENTS, since=moment, start_offsets=self.marks).events
        return read_traffic(events, since, smoke_nonces, host)


@dataclass
class Verdict:
    candidate: str  # canary or shadow
    decision: str  # promote, rollback, wait
    reasons: list[str]
    figures: dict


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-space terms; a k at or below the mean gives ~1 quickly)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):  # past the mean the terms only shrink: stop once they no longer count
        term = math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        total += term
        if i > n * p and term < 1e-15 * total:
            break
    return min(total, 1.0)


def compare(traffic: dict[str, VariantTraffic], candidate: str, actuals: dict[tuple, float] | None = None,
            seed: int = 0, replayed: dict[tuple, float] | None = None) -> Verdict:
    """The decision rule. Roll back if any of these holds, promote if none does and there is enough traffic:

    - errors: the candidate's error rate exceeds production's by more than 1 point with 95 %
      one-sided confidence (two-proportion z-test) — or any error at all with < MIN_EVENTS;
    - latency: the candidate's p95 request latency is above the bar max(1.5x production's p95, production's p95
      + 5 ms) with 95 % one-sided confidence: more than 5 % of its requests lie above the bar (exact
      binomial test), so two or three slow answers out of sixty on a busy host are no regression; one figure per
      request, as its predictions share the request's time (a slow batch of 200 is one slow request, not 200);
      between the two (neither more than 5 % above the bar with 95 % confidence, nor at most 15 %): wait, as a
      tail regression (one request in ten at 10x) shows 3 of 30 slow, no evidence yet either way;
    - forecast distribution: over pairs of forecasts for the same requests, the median of log1p(candidate)
      - log1p(production) is beyond ±0.5 (a factor of ~1.65), or log1p of the candidate's total units -
      log1p of production's is beyond ±0.5 with 95 % confidence (bootstrap over the pairs' store×items, at least
      MIN_VOLUME_SERIES of them; the total catches a model far off on the series that sell, where most series
      sell next to nothing). The pairs: shadow,
      the requests both answered; canary, each of its answers with ``replayed`` (production's forecasts for
      its requests, pipeline/release_replay.py) when that gives MIN_EVENTS, else the store×item×dates both
      answered; with fewer than MIN_EVENTS of those, the difference of the
      two variants' median log1p forecasts over their own series;
    - live accuracy (only with actuals): the 95 % bootstrap interval of candidate RMSLE minus
      production RMSLE lies entirely above 0 (paired over the same series: a shadow's, or a canary's
      with ``replayed``; without it, over each variant's own series, resampled apart; store×items drawn, each
      with all its days, at least MIN_LIVE_SERIES of them a side).
    - forecasts: any candidate answer below 0 units (no sales forecast: a bundle clips at 0); such answers, either
      variant's, are never paired or scored.
    The latency rule needs MIN_EVENTS (30) candidate requests, the distribution rule as many predictions (a p95
    of ten is their maximum); fewer than that and no rule broken: wait (no decision). A closed store-day's answer
    (0 units with store_closed, pipeline/closed_days.py) is the closed-day rule's, not a model's: it counts for the
    errors and latency, never in a forecast pair or live accuracy (production's replay leaves those requests out
    too), and a candidate needs MIN_EVENTS predictions of its model's own. The smoke test's answers
    (pipeline/release_smoke.py: its ids with an installed candidate's nonce) are left out of every rule and count:
    a canary is judged on users' requests it answered; its failures on the smoke test's requests (production
    answered them) are still its errors.
    """
    base, cand = traffic.get(PRODUCTION, VariantTraffic()), traffic.get(candidate, VariantTraffic())
    figures: dict = {"production_predictions": base.predictions, f"{candidate}_predictions": cand.predictions,
                     f"{candidate}_errors": cand.errors}
    smoke = sum(t.smoke_predictions for t in traffic.values())
    if smoke:
        figures["smoke_predictions_left_out"] = smoke
    others = sum(t.other_hosts for t in traffic.values())
    if others:
        figures["other_hosts_events_left_out"] = others
    reasons: list[str] = []
    if cand.negative_answers:  # no sales forecast: the candidate's model is broken whatever else its answers show
        figures[f"{candidate}_negative_answers"] = cand.negative_answers
        reasons.append(f"forecasts: {cand.negative_answers} of {cand.predictions} {candidate} answers are below 0 "
                       f"units (lowest {cand.most_negative:g}): no sales forecast")
    if base.negative_answers:  # left out of every pairing; production is what it is compared with, not judged
        figures["production_negative_answers_left_out"] = base.negative_answers
    attempts = cand.predictions + cand.errors
    if attempts and cand.errors:
        rate = cand.errors / attempts
        base_rate = base.errors / max(base.predictions + base.errors, 1)
        pooled = (cand.errors + base.errors) / max(attempts + base.predictions + base.errors, 1)
        se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / attempts + 1 / max(base.predictions, 1)))
        z = (rate - base_rate - MAX_EXTRA_ERROR_RATE) / se
        figures.update(error_rate=round(rate, 4), production_error_rate=round(base_rate, 4), error_z=round(z, 2))
        if z > Z_ONE_SIDED_95 or attempts < MIN_EVENTS:
            reasons.append(f"errors: {cand.errors} of {attempts} {candidate} answers failed "
                           f"({rate:.1%} vs production {base_rate:.1%})")
    requests = cand.latency.requests
    latency_unsettled = None  # why promotion must wait for more requests, when their latency is not yet clear
    if cand.latency.ms and base.latency.ms:
        p95c, p95b = cand.latency.percentile(95), base.latency.percentile(95)
        bar = max(MAX_LATENCY_RATIO * p95b, p95b + MIN_LATENCY_EXCESS_MS)
        above = cand.latency.above(bar)
        p_value = binomial_tail(above, max(requests, above), SLOW_SHARE)
        figures.update(latency_p95_ms=round(p95c, 2), production_latency_p95_ms=round(p95b, 2),
                       latency_bar_ms=round(bar, 2), above_latency_bar=above, latency_p_value=round(p_value, 4),
                       latency_requests=requests)
        if p_value < LATENCY_P_VALUE and requests >= MIN_EVENTS:
            reasons.append(f"latency: {above} of {requests} {candidate} requests slower than "
                           f"{bar:.1f} ms (max of {MAX_LATENCY_RATIO}x production's p95 {p95b:.1f} ms and "
                           f"+{MIN_LATENCY_EXCESS_MS:g} ms): its p95 {p95c:.1f} ms is above that "
                           f"with 95 % confidence (p = {p_value:.3g})")
        within = 1.0 - binomial_tail(above + 1, max(requests, above), MAX_SLOW_SHARE_PROMOTED)  # P(this few | 15 %)
        figures.update(latency_within_p_value=round(within, 4))
        if within >= LATENCY_P_VALUE:
            latency_unsettled = (f"{above} of {requests} {candidate} requests slower than {bar:.1f} ms: not yet "
                                 f"shown to be at most {MAX_SLOW_SHARE_PROMOTED:.0%} of them (p = {within:.3g}); "
                                 "more requests are needed to promote")
    pairs, pairing = _forecast_pairs(cand, base, candidate, replayed)
    if pairs and (candidate == SHADOW or len(pairs) >= MIN_EVENTS):
        c, b = (np.asarray(side, np.float64) for side in list(zip(*pairs))[:2])
        shift = float(np.median(np.log1p(c) - np.log1p(b)))
        volume, (low, high), series = _volume_log_ratio(c, b, [p[2] for p in pairs], seed)
        figures.update(forecast_log_shift=round(shift, 4), forecast_volume_log_ratio=round(volume, 4),
                       forecast_volume_interval=[round(low, 4), round(high, 4)], forecast_volume_series=series,
                       compared_pairs=len(pairs), forecast_pairing=pairing)
        if abs(shift) > MAX_FORECAST_SHIFT and len(pairs) >= MIN_EVENTS:
            reasons.append(f"forecast distribution: median log1p shift {shift:+.3f} beyond ±{MAX_FORECAST_SHIFT} "
                           f"on {pairing}")
        if ((low > MAX_FORECAST_SHIFT or high < -MAX_FORECAST_SHIFT) and len(pairs) >= MIN_EVENTS
                and series >= MIN_VOLUME_SERIES):
            reasons.append(f"forecast distribution: {c.sum():.1f} units in all against production's {b.sum():.1f} "
                           f"on {pairing} (log1p ratio {volume:+.3f}, 95 % interval {low:+.3f}..{high:+.3f} over "
                           f"{series} store×items, beyond ±{MAX_FORECAST_SHIFT})")
    elif candidate != SHADOW and cand.by_series:
        # no production forecasts for the canary's series (its bundle not on this host, or too few of them): compare
        # the two variants' forecast levels, over different series, instead
        cand_all = [u for k, v in cand.by_series.items() if k not in cand.closed for u in v]
        base_all = [u for k, v in base.by_series.items() if k not in base.closed for u in v]
        if base_all and cand_all:
            shift = float(np.median(np.log1p(cand_all)) - np.median(np.log1p(base_all)))
            figures.update(forecast_log_shift=round(shift, 4), forecast_pairing="levels of different series")
            if abs(shift) > MAX_FORECAST_SHIFT and len(cand_all) >= MIN_EVENTS:
                reasons.append(f"forecast distribution: median log1p level {shift:+.3f} from production's")
    if actuals:
        compared_with, pairing = base, "the same series" if candidate == SHADOW else "each variant's own series"
        if candidate != SHADOW and replayed:  # production's forecasts for the canary's own series: paired
            compared_with, pairing = VariantTraffic(), "the canary's series, forecast by production's bundle too"
            for (store, item, date, _), units in replayed.items():
                compared_with.by_series.setdefault((store, item, date), []).append(units)
        live = _live_accuracy(cand, compared_with, actuals, paired=pairing != "each variant's own series", seed=seed)
        if live is not None:
            figures.update(live, live_pairing=pairing)
            low, high = live["live_rmsle_diff_interval"]
            if low > NWRMSLE_MARGIN:
                reasons.append(f"live accuracy: RMSLE worse than production's by {low:.4f}..{high:.4f} (95 %)")
    if reasons:
        return Verdict(candidate, "rollback", reasons, figures)
    if cand.predictions < MIN_EVENTS:
        smoke_said = (f" (besides {cand.smoke_predictions} answers to the smoke test, which are not judged)"
                      if cand.smoke_predictions else "")
        return Verdict(candidate, "wait", [f"only {cand.predictions} {candidate} predictions logged{smoke_said}; "
                                           f"{MIN_EVENTS} are needed for a decision"], figures)
    if cand.predictions - cand.closed_answers < MIN_EVENTS:  # its model's forecasts were hardly compared at all
        return Verdict(candidate, "wait", [f"only {cand.predictions - cand.closed_answers} of the {cand.predictions} "
                                           f"{candidate} predictions are its model's forecasts ({cand.closed_answers} "
                                           "answered 0 as a day the store is closed); "
                                           f"{MIN_EVENTS} are needed for a decision"], figures)
    if cand.latency.ms and requests < MIN_EVENTS:  # its latency is not judged yet (a few large batches)
        return Verdict(candidate, "wait", [f"only {requests} {candidate} requests logged ({cand.predictions} "
                                           f"predictions); {MIN_EVENTS} are needed to judge its latency"], figures)
    if base.predictions < MIN_EVENTS:  # nothing to judge latency and forecasts against: no rule could fire
        return Verdict(candidate, "wait", [f"only {base.predictions} production predictions to compare with; "
                                           f"{MIN_EVENTS} are needed for a decision"], figures)
    if latency_unsettled:  # a tail regression at 30 requests: 3 slow of 30 is no proof either way
        return Verdict(candidate, "wait", [latency_unsettled], figures)
    return Verdict(candidate, "promote", ["no rule broken"], figures)


def _forecast_pairs(cand: VariantTraffic, base: VariantTraffic, candidate: str, replayed: dict[tuple, float] | None
                    ) -> tuple[list[tuple[float, float, tuple]], str]:
    """(candidate, production, store×item) forecasts for the same requests, and what they are (for the figures and
    reasons); in key order, so the same events give the same verdict in whatever order a source returns them."""
    closed = cand.closed | base.closed  # a closed store-day's 0 is no model's forecast (VariantTraffic.closed)
    if candidate == SHADOW:
        keys = sorted((k for k in cand.by_request.keys() & base.by_request.keys() if k[2:5] not in closed), key=str)
        return ([(cand.by_request[k], base.by_request[k], cand.request_series.get(k, k)) for k in keys],
                "the same requests")
    if replayed:  # every canary answer, as the shadow's: a series asked for twice counts twice
        keys = sorted((k for k in cand.by_inputs.keys() & replayed.keys() if k[:3] not in closed), key=str)
        pairs = [(units, replayed[k], k[:2]) for k in keys for units in sorted(cand.by_inputs[k])]
        if len(pairs) >= MIN_EVENTS:
            return pairs, f"the canary's {len(pairs)} answers, forecast by production's bundle too"
    keys = sorted((cand.by_series.keys() & base.by_series.keys()) - closed, key=str)
    return ([(float(np.mean(cand.by_series[k])), float(np.mean(base.by_series[k])), k[:2]) for k in keys],
            "the store×item×dates both answered")


def _volume_log_ratio(cand: np.ndarray, base: np.ndarray, series: list, seed: int,
                      resamples: int = 1000) -> tuple[float, tuple[float, float], int]:
    """log1p(candidate's total units) - log1p(production's) over paired forecasts, its 95 % bootstrap interval and
    the number of store×items. The bootstrap resamples store×items, not answers: the answers for one series
    share that series' ratio, and a canary at a 5 % share answered 1,000 requests for 2 series, whose interval
    around their own ratio was then narrow enough to roll back a healthy model (a probe's finding). Memory: one
    total per series, not per answer."""
    index = {key: n for n, key in enumerate(dict.fromkeys(series))}
    where = np.fromiter((index[key] for key in series), np.int64, len(series))
    cand_sums, base_sums = np.bincount(where, cand, len(index)), np.bincount(where, base, len(index))
    picks = np.random.default_rng(seed).integers(0, len(index), size=(resamples, len(index)))
    ratios = np.log1p(cand_sums[picks].sum(axis=1)) - np.log1p(base_sums[picks].sum(axis=1))
    low, high = (float(x) for x in np.percentile(ratios, [2.5, 97.5]))
    return math.log1p(float(cand.sum())) - math.log1p(float(base.sum())), (low, high), len(index)


def judge(traffic: dict[str, VariantTraffic], candidate: str, actuals: dict[tuple, float] | None = None,
          replay: ProductionReplay | None = None) -> Verdict:
    """``compare``, a canary's requests paired with production's forecasts for them (``replay``: production's
    bundle on this host)."""
    replayed, error = None, None
    if replay is not None and candidate == CANARY and CANARY in traffic:
        replayed, error = replay.forecasts(traffic[CANARY].by_inputs), replay.error
        answered = traffic.get(PRODUCTION, VariantTraffic()).digests
        if replay.digest is not None and answered and replay.digest not in answered:  # a stale or other bundle
            replayed = None
            error = (f"the production bundle on this host ({replay.digest[:12]}) is not the one that answered "
                     f"production's traffic ({', '.join(sorted(d[:12] for d in answered))}): `release sync` "
                     "installs what the registry names")
    verdict = compare(traffic, candidate, actuals, replayed=replayed)
    if error:
        verdict.figures["production_replay_error"] = error
    if replayed is not None:  # a closed store-day one side answers 0 by the rule and the other forecasts (left out)
        canary = traffic[CANARY]
        otherwise = sum(len(units) for key, units in canary.by_inputs.items()
                        if (key in replay.closed) != (key[:3] in canary.closed))
        if otherwise:
            verdict.figures["closed_days_answered_otherwise"] = otherwise
    return verdict


def _log_errors(traffic: VariantTraffic, actuals: dict[tuple, float]) -> dict[tuple, float]:
    return {key: (math.log1p(float(np.mean(units))) - math.log1p(actuals[key])) ** 2
            for key, units in traffic.by_series.items() if key not in traffic.closed and key in actuals}


def _live_accuracy(cand: VariantTraffic, base: VariantTraffic, actuals: dict[tuple, float], paired: bool,
                   seed: int, resamples: int = 1000) -> dict | None:
    """RMSLE of each variant against the actual sales, and a 95 % bootstrap interval of the difference.

    ``paired``: the store×item×days both have (a shadow's, or a canary's with production's replayed forecasts),
    resampled together. Else each variant's own (a canary's sticky split: no series is answered by both), resampled
    independently. The bootstrap draws store×items, each with all its days, as _volume_log_ratio does: a model
    misses one series by much the same factor every day, so its days are no independent evidence (drawn a day at a
    time, a canary of the same model on 3 store×items for 30 days against production's 60 was rolled back 8 times
    in 20 on which series it happened to be given). None with fewer than MIN_LIVE_SERIES store×items a side.
    """
    errors_c, errors_b = _log_errors(cand, actuals), _log_errors(base, actuals)
    if paired:
        keys = errors_c.keys() & errors_b.keys()
        errors_c, errors_b = {k: errors_c[k] for k in keys}, {k: errors_b[k] for k in keys}
    (sums_c, days_c), (sums_b, days_b) = _by_series(errors_c), _by_series(errors_b)
    if len(sums_c) < MIN_LIVE_SERIES or len(sums_b) < MIN_LIVE_SERIES:
        return None
    rng = np.random.default_rng(seed)
    pick_c = rng.integers(0, sums_c.size, size=(resamples, sums_c.size))
    pick_b = pick_c if paired else rng.integers(0, sums_b.size, size=(resamples, sums_b.size))  # paired: same order
    diffs = (np.sqrt(sums_c[pick_c].sum(axis=1) / days_c[pick_c].sum(axis=1))
             - np.sqrt(sums_b[pick_b].sum(axis=1) / days_b[pick_b].sum(axis=1)))
    low, high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    return {"live_rmsle": round(float(np.sqrt(sums_c.sum() / days_c.sum())), 4),
            "production_live_rmsle": round(float(np.sqrt(sums_b.sum() / days_b.sum())), 4),
            "live_rmsle_diff_interval": [round(low, 4), round(high, 4)],
            "live_series": [len(errors_c), len(errors_b)], "live_store_items": [int(sums_c.size), int(sums_b.size)]}


def _by_series(errors: dict[tuple, float]) -> tuple[np.ndarray, np.ndarray]:
    """Squared log errors summed per store×item, and its days, in key order (the same events, the same verdict)."""
    sums: dict[tuple, float] = {}
    days: dict[tuple, int] = {}
    for key in sorted(errors, key=str):
        series = key[:2]
        sums[series] = sums.get(series, 0.0) + errors[key]
        days[series] = days.get(series, 0) + 1
    return np.fromiter(sums.values(), np.float64, len(sums)), np.fromiter(days.values(), np.float64, len(days))


# --- deploy: alias move -> hot reload -> smoke -> canary check -> promote or roll back ------------

def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def app_info(url: str) -> dict:
    """GET ``url``/api/v1/model, the running app's model and variants; ReleaseError naming the address when nothing
    answers there (deploy asks before it installs anything, smoke before its forecasts)."""
    try:
        return _get_json(f"{url}/api/v1/model")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ReleaseError(f"{url}/api/v1/model: {reason}: is the app running there (--url, $SHELFCAST_URL)?") \
            from None


def _post_json(url: str, body: dict, timeout: float = 30.0, request_id: str | None = None) -> tuple[int, dict, str]:
    headers = {"Content-Type": "application/json", **({"X-Request-ID": request_id} if request_id else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers.get("X-Model-Variant", "")
    except urllib.error.HTTPError as exc:
        return exc.code, {}, ""


def wait_for_variant(url: str, variant: str, digest: str | None, timeout_s: float) -> float:
    """Seconds until GET /api/v1/model shows ``digest`` as ``variant`` (None: no such variant served), the hot
    reload; ReleaseError on timeout."""
    started = time.perf_counter()
    while True:
        try:
            info = _get_json(f"{url}/api/v1/model")
            shown = info if variant == PRODUCTION else ((info.get("variants") or {}).get(variant) or {})
            served = shown.get("digest")
            if served == digest:
                return time.perf_counter() - started
        except (OSError, ValueError):
            pass
        if time.perf_counter() - started > timeout_s:
            what = f"{variant} {digest[:12]} not served" if digest else f"{variant} still served"
            raise ReleaseError(f"{url}: {what} after {timeout_s:.0f} s (hot reload)")
        time.sleep(0.2)


def smoke_test(url: str, requests: int = 40, nonce: str | None = None) -> dict:
    """Predictions through the API over many store×items; every one must answer 200 with finite units. Each carries
    an X-Request-ID signed with the installed candidate's ``nonce`` (release_smoke.smoke_nonce), so the decision rule
    leaves its events out: before, a canary at a share of 0.5 could be promoted on the smoke test's own answers, no
    user's request among them. Without a nonce (no candidate installed here) its answers count as users'."""
    nonce = nonce or os.urandom(8).hex()  # no installed candidate's: a user's, as any other id
    run = os.urandom(4).hex()
    info = app_info(url)
    stores = [s["store_nbr"] for s in info["stores"]]
    items = _get_json(f"{url}/api/v1/items?limit=50")["items"]
    first = info["horizon"]["first_date"]
    answered: dict[str, int] = {}
    for n in range(requests):
        body = {"instances": [{"store_nbr": stores[n % len(stores)], "item_nbr": items[n % len(items)]["item_nbr"],
                               "date": first, "onpromotion": False}]}
        status, payload, variants = _post_json(f"{url}/api/v1/predict", body,
                                               request_id=smoke_request_id(nonce, run, n))
        units = (payload.get("predictions") or [{}])[0].get("unit_sales") if status == 200 else None
        if status != 200 or not isinstance(units, (int, float)) or not math.isfinite(units):
            raise ReleaseError(f"smoke test: POST /api/v1/predict answered {status} ({payload or 'no body'})")
        for v in variants.split(","):
            answered[v] = answered.get(v, 0) + 1
    return answered


@dataclass(frozen=True)
class Observation:
    """How a candidate's observation ended. The rule decides as soon as the users' traffic logged since the install
    (never the smoke test's: pipeline/release_smoke.py) is enough, so a phase may end seconds into a 40 s limit;
    deploy's report (``record``) and printout (``line``) say how long it ran and why it ended."""

    verdict: Verdict
    seconds: float  # how long the rule was polled
    limit_s: float  # at most this long (--shadow-s, --observe-s)

    @property
    def decided(self) -> bool:
        return self.verdict.decision != "wait"

    def record(self) -> dict:
        """``seconds``, ``limit_s``, ``ended`` (decided, or time ran out) and the candidate's ``predictions`` and
        ``requests`` judged (requests: None while its latency could not be compared)."""
        figures = self.verdict.figures
        return {"seconds": round(self.seconds, 2), "limit_s": self.limit_s,
                "ended": "decided" if self.decided else "time ran out",
                "predictions": figures.get(f"{self.verdict.candidate}_predictions", 0),
                "requests": figures.get("latency_requests")}

    def line(self) -> str:
        seen, candidate = self.record(), self.verdict.candidate
        traffic = f"{seen['predictions']} {candidate} predictions" + (
            "" if seen["requests"] is None else f" ({seen['requests']} requests)")
        traffic += " logged since its install"
        smoke = self.verdict.figures.get("smoke_predictions_left_out")
        if smoke:
            traffic += f", {smoke} answers to the smoke test left out"
        if self.decided:
            return (f"{candidate} observed {self.seconds:.1f} s of at most {self.limit_s:g} s: the rule decided "
                    f"{self.verdict.decision} on {traffic}")
        return (f"{candidate} observed {self.seconds:.1f} s: its {self.limit_s:g} s ran out without a decision on "
                f"{traffic} ({'; '.join(self.verdict.reasons)})")


def observe(events: LoggedEvents, since: float, variant: str, seconds: float, actuals: dict | None,
            replay: ProductionReplay | None = None, smoke_nonces: frozenset[str] = frozenset(),
            host: str | None = None) -> Observation:
    """``judge`` on the traffic logged since ``since`` until it decides, or ``seconds`` are up (the smoke test's
    under ``smoke_nonces``, and other serving hosts' than ``host``, left out)."""
    started = time.perf_counter()
    deadline = time.time() + seconds
    while True:
        verdict = judge(events.traffic(since, smoke_nonces, host), variant, actuals, replay)
        if verdict.decision != "wait" or time.time() >= deadline:
            return Observation(verdict, time.perf_counter() - started, seconds)
        time.sleep(1.0)


@model_named
def deploy(root: Path, store: ReleaseStore, url: str, events: LoggedEvents, version: str | None = None,
           share: float = DEFAULT_SHARE, observe_s: float = 30.0, reload_timeout_s: float = 60.0,
           actuals: dict | None = None, say=print, name: str | None = None,
           shadow_s: float = 0.0, smoke_requests: int = 40) -> dict:
    """The whole release of one candidate; returns what happened (and rolls back on any failure). Ctrl-C or SIGTERM
    rolls back the same way (:func:`withdraw`), then raises on with the interruption worded as what it did; so does
    one a library turned into its own error (interruption_behind). Any other exception once the candidate may be
    installed (a bug, an error no step expects) is withdrawn too, then raised unchanged, a note saying what deploy
    did: before, only the errors named here were, and anything else left the canary serving users. A failure once
    promote has moved production to the candidate (or while the registry cannot say) withdraws nothing and is no
    rollback: it is raised saying so (ReleaseError, or the error with a note), where before it reported "rolled
    back", production "unchanged", while production served the candidate.

    With ``shadow_s`` > 0 a shadow phase comes first: the candidate mirrors every request that
    long (or until the rule decides); a rollback verdict there ends the release before any user
    gets an answer from it. No verdict (too little traffic) lets it go on to the canary, which
    must earn a "promote" within ``observe_s``."""
    check_new_canary_share(share)  # before the shadow phase: not a ValueError once a candidate is installed
    current = variant_versions(root, name)
    version = version or current.get(CANARY) or current.get(SHADOW)
    if not version:  # an app-only change, or a candidate already decided: the release job has nothing to do
        say("deploy: nothing to deploy: no --version and no canary or shadow alias")
        return {"version": None, "production_before": current.get(PRODUCTION), "outcome": NOTHING_TO_DEPLOY}
    if current.get(PRODUCTION) == str(version):  # e.g. the ML pipeline rebuilt production's model bit for bit
        for variant in (CANARY, SHADOW):
            if current.get(variant) == str(version):
                end_candidate(root, store, variant, name)  # serving production twice would only cost CPU
        say(f"deploy: version {version} is already production; nothing to deploy (its candidate aliases removed)")
        return {"version": str(version), "production_before": current.get(PRODUCTION), "outcome": NOTHING_TO_DEPLOY}
    app_info(url)  # an app that does not answer is no release to judge: said now, nothing installed
    from mlflow.exceptions import MlflowException

    report: dict = {"version": str(version), "production_before": current.get(PRODUCTION)}
    events = events.marked()  # each poll reads what was logged since (marked before the clock: nothing between)
    started = time.time()
    ending = [CANARY] + ([SHADOW] if shadow_s > 0 or current.get(SHADOW) == str(version) else [])
    promoting = False
    try:
        if shadow_s > 0:
            digest = set_candidate(root, store, SHADOW, version, None, name, events.path)
            report["shadow_reload_s"] = round(wait_for_variant(url, SHADOW, digest, reload_timeout_s), 2)
            say(f"deploy: alias shadow -> version {version}; served as shadow after {report['shadow_reload_s']} s")
            observed = observe(events, started, SHADOW, shadow_s, actuals, smoke_nonces=installed_nonces(store),
                               host=serving_host(store.root))
            verdict = observed.verdict
            report["shadow_verdict"], report["shadow_observed"] = asdict(verdict), observed.record()
            say(f"deploy: {observed.line()}")
            if verdict.decision == "rollback":
                raise ReleaseError(f"shadow check: rollback: {'; '.join(verdict.reasons)}")
            say(f"deploy: shadow check {verdict.decision} ({verdict.figures})")
            events = events.marked()
            started = time.time()
        digest = set_candidate(root, store, CANARY, version, share, name, events.path)
        say(f"deploy: alias canary -> version {version} ({digest[:12]}), share {share:.0%}")
        report["reload_s"] = round(wait_for_variant(url, CANARY, digest, reload_timeout_s), 2)
        say(f"deploy: the app serves the canary after {report['reload_s']} s (hot reload)")
        report["smoke"] = smoke_test(url, smoke_requests, recorded_nonce(store, CANARY))
        if CANARY not in report["smoke"]:
            raise ReleaseError(f"smoke test: no request was answered by the canary ({report['smoke']})")
        say(f"deploy: smoke test passed, answered by {report['smoke']}")
        observed = observe(events, started, CANARY, observe_s, actuals, ProductionReplay(store.variant_dir(PRODUCTION)),
                           installed_nonces(store), serving_host(store.root))
        verdict = observed.verdict
        report["verdict"], report["canary_observed"] = asdict(verdict), observed.record()
        say(f"deploy: {observed.line()}")
        if verdict.decision != "promote":
            raise ReleaseError(f"canary check: {verdict.decision}: {'; '.join(verdict.reasons)}" if observed.decided
                               else f"canary check: {observed.line()}")
        promoting = True
        production = promote(root, store, version, name)
        if production != str(version):  # another host moved production after this one: it serves that now
            report.update(outcome=SUPERSEDED, production=production,
                          reason=f"version {version} was promoted, then another move made version {production} "
                                 "production; this host installed that")
            say(f"deploy: {report['reason']}")
            return report
        report["production_reload_s"] = round(wait_for_variant(url, PRODUCTION, digest, reload_timeout_s), 2)
        say(f"deploy: version {version} is production ({'; '.join(verdict.reasons)}; {verdict.figures})")
        report["outcome"] = "promoted"
    except BaseException as exc:  # any failure once a candidate may be installed takes it back out (see below)
        interruption = interruption_behind(exc)
        if interruption is not None and promoting:  # production is moving to it: not deploy's to undo
            settled(interruption, f"deploy was promoting version {version}: `python -m pipeline.release status` says "
                                  "what production names and this host serves; `python -m pipeline.release sync` "
                                  "installs it")
            raise
        foreseen = isinstance(exc, (ReleaseError, BundleError, registry_fetch.FetchError, EventSourceError,
                                    OSError, tracking.TrackingError, MlflowException))  # MLflow: the registry refused
        reason = ("interrupted" if interruption is not None else
                  tracking.store_error_text(exc) if isinstance(exc, MlflowException) else
                  str(exc) if foreseen else f"{type(exc).__name__}: {exc}")
        now = _production_named(root, name) if promoting else None
        if promoting and now in (str(version), None):  # production moved to it (or may have): no candidate's rollback
            moved = _failed_promoting(version, report["production_before"], now)
            if not foreseen:
                exc.add_note(f"deploy: {moved}")
                raise
            raise ReleaseError(f"{reason}; {moved}") from exc
        withdraw(root, store, url, version, ending, name, reload_timeout_s, report, say, reason)
        if interruption is not None:
            settled(interruption, withdrawn_line(report, version))
            raise
        if not foreseen:  # a bug, or an error no step names: withdrawn all the same, then raised as it was
            exc.add_note(f"deploy: {withdrawn_line(report, version)}")
            raise
        say(f"deploy: rolled back: {exc}" + (f" (candidate out of service after {report['rollback_s']} s)"
                                             if report["rollback_s"] is not None else ""))
    return report


def _production_named(root: Path, name: str) -> str | None:
    """The version production's alias names now, or None where the registry cannot say (or names none)."""
    from mlflow.exceptions import MlflowException

    try:
        return variant_versions(root, name).get(PRODUCTION)
    except (tracking.TrackingError, MlflowException, OSError):
        return None


def _failed_promoting(version: str, before: str | None, now: str | None) -> str:
    """What deploy says of a failure once promote may have moved production to ``version``: not withdrawn, nor a
    rollback (production is not where it was), and where to look."""
    where = (f"version {version} is production (production version {before} before)" if now == str(version) else
             f"deploy was promoting version {version} and the registry could not say whether production names it")
    return (f"{where}: nothing was withdrawn; `python -m pipeline.release status` says what production names and "
            "this host serves; `python -m pipeline.release sync` installs it")


def withdraw(root: Path, store: ReleaseStore, url: str, version: str, ending: list[str], name: str,
             reload_timeout_s: float, report: dict, say, reason: str) -> None:
    """deploy's rollback, after a failure or an interruption alike: each of ``ending`` (canary, shadow) ended — its
    files removed, its alias deleted where it still names ``version`` — then a wait, at most ``reload_timeout_s``,
    until the app no longer answers with the canary (hot reload). Production is not touched. A Ctrl-C or SIGTERM
    meanwhile ends the command saying what may be left and the `release end` that finishes it."""
    leaves = (f"deploy was withdrawing version {version}: it may still be installed or served as "
              f"{' and '.join(ending)}; production is untouched; "
              + " then ".join(f"`python -m pipeline.release end --variant {variant}`" for variant in ending)
              + " finishes it")
    with second_signal_leaves(leaves):
        tracking.hold(HOLD_WITHDRAW)
        failed = time.perf_counter()
        left = []  # a rolled-back candidate is not left mirroring either
        for variant in ending:
            try:
                end_candidate(root, store, variant, name, version)
            except ReleaseError as alias_left:  # its files are gone; the registry could not be told
                left.append(str(alias_left))
        report["outcome"] = "rolled back"
        report["reason"] = reason
        if left:
            report["aliases_left"] = left
            for line in left:
                say(f"deploy: rollback: {line}")
        try:  # until the app no longer answers with it (hot reload)
            wait_for_variant(url, CANARY, None, reload_timeout_s)
            report["rollback_s"] = round(time.perf_counter() - failed, 2)
        except ReleaseError:
            report["rollback_s"] = None


def withdrawn_line(report: dict, version: str) -> str:
    """What an interrupted deploy says it did (after :func:`withdraw`): instead of "rerun it", which left the canary
    serving users."""
    served = (f"out of service after {report['rollback_s']} s" if report["rollback_s"] is not None else
              "the app still answered with it when the wait ended (`python -m pipeline.release status` shows it)")
    line = f"deploy withdrew version {version} (files removed, {served}); production version " \
           f"{report['production_before']} unchanged"
    if report.get("aliases_left"):
        line += "; " + "; ".join(report["aliases_left"])
    return line


def deploy_exit_status(report: dict) -> int:
    """`release deploy`'s exit status: 0 when the release did its part — the candidate promoted; or promoted, then
    another host's move (its promote or rollback) named another production, which this host installed
    (``superseded``: it serves what the registry names, as `release promote` and `rollback` overtaken the same way
    exit 0); or nothing to deploy — and 2 when the candidate was rolled back (judged worse, or any step failed).
    Before, ``superseded`` exited 2, as a rollback: the release job failed for a candidate that had passed every
    check, on a host already in sync with the registry, and nothing there to mend."""
    return 0 if report["outcome"] in ("promoted", SUPERSEDED, NOTHING_TO_DEPLOY) else 2


# --- the command line ---------------------------------------------------------------------------

def _share_argument(text: str) -> float:
    try:
        return check_new_canary_share(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("canary_share: ", "")) from None


def main(argv=None) -> int:
    """Not a stage (no run_stage): Ctrl-C and SIGTERM end it as they end one, its cleanup run (deploy's candidate
    withdrawn, the models directory's lock let go), then the one line and 130 / 143."""
    return run_interruptible("release", lambda: _release(argv))


def _release(argv) -> int:
    output_any_terminal_can_take()
    parser = CommandParser(prog="python -m pipeline.release", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("status", "shadow", "canary", "decide", "promote", "rollback", "deploy",
                                            "sync", "end", "smoke"))
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                        help="the host's models directory, the release store the app serves from (default: "
                             "$SHELFCAST_MODELS_HOST, the store docker-compose.yml mounts, else models)")
    parser.add_argument("--name", help="registered model name (default: promote.model_name of --root's params.yaml)")
    parser.add_argument("--version", help="model version (default: what the candidate aliases name)")
    parser.add_argument("--alias", help="take the version another alias names (e.g. --alias shadow)")
    parser.add_argument("--variant", choices=(CANARY, SHADOW), help="for decide/end: which candidate")
    parser.add_argument("--share", type=_share_argument, default=DEFAULT_SHARE,
                        help="canary share of store×items (above 0, at most 1)")
    parser.add_argument("--events", type=Path, default=DEFAULT_EVENTS,
                        help="prediction events: a JSON-lines log or a directory of them (default: %(default)s)")
    parser.add_argument("--elasticsearch", metavar="URL", default=os.environ.get("ELASTICSEARCH_URL") or None,
                        help="read the events from Elasticsearch/OpenSearch instead, as the compose stack logs them "
                             "(default: $ELASTICSEARCH_URL if set)")
    parser.add_argument("--index", default=DEFAULT_INDEX_PATTERN, help="with --elasticsearch: index pattern "
                        "(default: %(default)s)")
    parser.add_argument("--actuals", type=Path, help="CSV store_nbr,item_nbr,date,unit_sales for live accuracy")
    parser.add_argument("--apply", action="store_true", help="decide: promote or end the candidate as decided")
    parser.add_argument("--url", default="http://127.0.0.1:5005", help="deploy: the running Shelfcast")
    parser.add_argument("--observe-s", type=float, default=30.0, help="deploy: longest canary observation")
    parser.add_argument("--shadow-s", type=float, default=0.0, help="deploy: a shadow phase of this length first")
    parser.add_argument("--keep", type=int, default=5, help="releases kept on disk")
    parser.add_argument("--requests", type=int, default=40, help="smoke/deploy: one-row forecasts the smoke test sends")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    # a relative log (the default, $SHELFCAST_PREDICTION_LOG's) is the project's, as --models is: under --root
    events = LoggedEvents.choose(args.events if args.events.is_absolute() else root / args.events, args.elasticsearch,
                                 args.index)
    store = ReleaseStore(args.models if args.models.is_absolute() else root / args.models, keep=args.keep)
    started = time.perf_counter()
    writes = args.command not in ("status", "smoke") and (args.command != "decide" or args.apply)
    try:
        if args.command != "smoke":  # the registry first: run in the wrong folder, it makes nothing there, no models/
            _client(root)
            args.name = registered_model(root, args.name)  # params.yaml's promote.model_name: ParamsError names it
        with tracking.mlflow_errors_named(root), (one_writer(store.root, f"release {args.command}") if writes
                                                  else contextlib.nullcontext()):
            version = args.version
            if version is not None:  # "03" or " 3" is version 3 to MLflow: one name on disk too (releases/3)
                version = tracking.version_number(args.version)
                if version is None:
                    raise ReleaseError(f"--version {args.version!r}: a model version is a whole number (1, 2, ...)")
            if args.alias:
                if args.command not in (SHADOW, CANARY, "promote", "deploy"):
                    raise ReleaseError(f"--alias is for shadow, canary, promote and deploy, not {args.command}")
                if version:
                    raise ReleaseError(f"--alias {args.alias!r} and --version {version}: give one of them")
                version = aliased_version(root, args.alias, args.command, args.name)
            if args.command == "status":
                named = aliases(root, args.name)
                current = variant_versions(root, args.name, named)
                host = host_state(root, store, current, args.name)
                try:
                    share, share_error = store.canary_share(), None
                except ValueError as exc:  # the app serves a share of 0 meanwhile (app/variants.py): so says status
                    share, share_error = 0.0, str(exc)
                print(json.dumps({"aliases": named, "production_alias": production_alias(root), "canary_share": share,
                                  **({"canary_share_error": share_error} if share_error else {}),
                                  "releases_on_disk": [p.name for p in store.releases()], "host": host,
                                  "in_sync": all(v["in_sync"] for v in host.values())}))
                if share_error:
                    again = f"--version {current[CANARY]}" if CANARY in current else "--version V"
                    print(f"release: {share_error}; the app serves a canary share of 0 until it is fixed: "
                          f"`python -m pipeline.release canary {again} --share S` writes it", file=sys.stderr)
                for variant, state in host.items():
                    if "refused" in state:
                        mend = ("(`release promote --version V`) or return to the one before (`release rollback`)"
                                if variant == PRODUCTION else
                                f"(`release {variant} --version V`) or end it (`release end --variant {variant}`)")
                        print(f"release: the {variant_alias(root, variant)} alias names a version no host can "
                              f"serve: {state['refused']}; point it at a promoted version {mend}", file=sys.stderr)
                apart = [v for v, state in host.items() if not state["in_sync"] and "refused" not in state]
                if PRODUCTION not in current:  # sync cannot mend anything before one is named
                    print(f"release: {no_production(store, args.name, production_alias(root))}", file=sys.stderr)
                elif apart:
                    print(f"release: this host does not serve what the registry names for {', '.join(apart)} (a "
                          "promote or release stopped half-way?): `make release-sync` installs it", file=sys.stderr)
            elif args.command == "sync":
                print(f"release: synced {synced_text(sync(root, store, args.name, events.path))}")
            elif args.command in (SHADOW, CANARY):
                if not version:
                    raise ReleaseError(f"{args.command}: give --version or --alias")
                digest = set_candidate(root, store, args.command, version, args.share, args.name, events.path)
                print(f"release: version {version} ({digest[:12]}) is now {args.command}"
                      + (f" ({args.share:.0%} of store×items)" if args.command == CANARY else ""))
            elif args.command == "end":
                end_candidate(root, store, args.variant or CANARY, args.name)
                print(f"release: {args.variant or CANARY} ended")
            elif args.command == "promote":
                print(f"release: version {promote(root, store, version, args.name)} is now production")
            elif args.command == "rollback":
                was, now = rollback(root, store, args.name)
                print(f"release: production rolled back from version {was} to {now} "
                      f"in {time.perf_counter() - started:.2f} s")
            elif args.command == "decide":
                current = variant_versions(root, args.name)
                variant = args.variant or (CANARY if CANARY in current else SHADOW)
                if store.installed_at(variant) is None:  # else every event of any earlier candidate is judged
                    raise ReleaseError(f"no {variant} is installed on this host ({store.variant_dir(variant)}): "
                                       f"nothing to judge (`release {variant} --version V` starts one)")
                judged = served_candidate(root, store, current, variant, args.name) if args.apply else None
                actuals = read_actuals(args.actuals) if args.actuals else None
                since = judged_since(store, variant)  # an earlier candidate's events, or production's, are not these
                marks = installed_log_marks(store, variant) if events.path is not None else None
                if marks is not None:  # the log's bytes from where it ended at the install on: not the whole log
                    events = replace(events, marks=marks)
                traffic = events.traffic(since, installed_nonces(store), serving_host(store.root))
                verdict = judge(traffic, variant, actuals, ProductionReplay(store.variant_dir(PRODUCTION)))
                if marks is not None:
                    verdict.figures["log_read_from"] = {str(path): size for path, (size, _) in marks.items()}
                verdict.figures["judged_since"] = (None if since is None else
                                                   datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
                                                   .isoformat(timespec="seconds"))
                print(json.dumps(asdict(verdict)))
                if args.apply and verdict.decision == "promote":
                    print(f"release: version {promote(root, store, judged, args.name)} is now production")
                elif args.apply and verdict.decision == "rollback":
                    end_candidate(root, store, variant, args.name, judged)
                    print(f"release: {variant} ended (rolled back)")
                return 0 if verdict.decision != "rollback" else 2
            elif args.command == "smoke":
                nonce = smoke_nonce(store)
                if nonce is None:  # before any request: its answers would be judged as users', unsaid
                    why = (f"no candidate in {store.root} records a smoke-id nonce (installed before they were; "
                           "`release sync` records one)" if any(store.installed_at(v) is not None
                                                                for v in (CANARY, SHADOW)) else
                           f"no canary or shadow is installed in {store.root}, whose nonce would sign its ids (run it "
                           "on the serving host, with its --models)")
                    print(f"release: {why}: these answers will count as users' requests", file=sys.stderr)
                answered = smoke_test(args.url.rstrip('/'), args.requests, nonce)
                print(f"release: smoke test passed; answered by {answered}")
            elif args.command == "deploy":
                actuals = read_actuals(args.actuals) if args.actuals else None
                report = deploy(root, store, args.url.rstrip("/"), events, version, args.share, args.observe_s,
                                actuals=actuals, name=args.name, shadow_s=args.shadow_s, smoke_requests=args.requests)
                print(json.dumps(report))
                return deploy_exit_status(report)
    except (ReleaseError, BundleError, registry_fetch.FetchError, tracking.TrackingError, EventSourceError, ValueError,
            OSError, DirectoryBusy) as exc:  # an ActualsError is a ValueError
        if stdout_closed(exc):
            raise  # `release status | head -1`: run_interruptible's stop, not an error
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
