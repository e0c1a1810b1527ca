"""Release variants in the app: a canary answers a sticky share of store×items, a shadow mirrors every request.

Which bundles are the canary and the shadow is decided in the registry (aliases ``canary``
and ``shadow`` of the registered model; pipeline/release.py moves them and installs the
bundles under models/canary and models/shadow); this module only serves what is installed,
hot-reloading like production. The canary's share comes from models/release.json.

- canary: a store×item goes to the canary when ``crc32("store:item") mod 10000`` is below
  ``share × 10000`` — the same series always gets the same variant, so a forecast does not
  flip between models from one request to the next;
- shadow: every request is also forecast by the shadow after the response was sent; its
  predictions are logged as events with ``model_variant: shadow`` and the same request id,
  never returned. A shadow or canary failure never fails a request: production answers (its
  events then carry ``canary_failed: true``, which the release decision counts as canary errors).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from app.config import DEFAULT_SERIES_CACHE_ENTRIES
from app.events import PredictionEventSink
from app.predictor import LoadedModel, Predictor, directory_head
from app.service import predict_and_log
from app.validation import InputError, Instance, check_forecastable
from pipeline.release_store import CANARY, PRODUCTION, SHADOW, read_canary_share, serving_host

log = logging.getLogger(__name__)
BUCKETS = 10_000
# shadow work runs after the response, outside request_buffer's one-request-at-a-time lock: one at a time too
_SHADOW_ONE_AT_A_TIME = threading.Lock()


def canary_bucket(store_nbr: int, item_nbr: int) -> int:
    """The series' fixed bucket 0..9999 (stable across processes and restarts, unlike hash())."""
    return zlib.crc32(f"{int(store_nbr)}:{int(item_nbr)}".encode()) % BUCKETS


def goes_to_canary(store_nbr: int, item_nbr: int, share: float) -> bool:
    return canary_bucket(store_nbr, item_nbr) < round(share * BUCKETS)


class Candidates(NamedTuple):
    """The release candidates installed beside production when a request looked (None: not installed)."""

    canary: LoadedModel | None = None
    shadow: LoadedModel | None = None


def installed_candidates(variants: Variants | None) -> Candidates:
    """``variants.candidates()``, or none at all for an app without release variants."""
    return variants.candidates() if variants is not None else Candidates()


class Variants:
    """The canary and shadow predictors beside production's, and the canary share."""

    def __init__(self, models_dir: Path, reload_interval_s: float, clock=time.monotonic,
                 series_cache_entries: int = DEFAULT_SERIES_CACHE_ENTRIES,
                 count_refusal: Callable[[str], Callable[[], None]] | None = None):
        """``count_refusal(variant)``: the callback each candidate's Predictor counts its refusals with (/metrics)."""
        self.models_dir = Path(models_dir)
        self.canary, self.shadow = (
            Predictor(self.models_dir / variant, reload_interval_s, series_cache_entries=series_cache_entries,
                      count_refusal=None if count_refusal is None else count_refusal(variant), removal_ends_it=True)
            for variant in (CANARY, SHADOW))
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        self._share = 0.0
        self._share_error = ""
        self._share_checked = float("-inf")
        self._host: str | None = None
        self._host_checked = float("-inf")

    def check_now(self) -> None:
        """Load the installed candidates now (at start-up), so a series' variant does not change once they load."""
        self.canary.check_now()
        self.shadow.check_now()
        self.canary_share()
        self.serving_host()

    def _installed(self, predictor: Predictor) -> LoadedModel | None:
        """The candidate's model while the directory it was loaded from is the one installed (the Predictor
        keeps its last model otherwise): a removed candidate stops serving at once, and a newly installed one is
        never answered by the previous candidate still in memory; production answers until it has loaded.
        One stat per call: every request asks for both candidates."""
        head = directory_head(predictor.path)
        if head is None:
            predictor.forget()  # ended (or never installed): a dropped candidate's memory is given back
            return None  # nothing installed: not even a background check
        model = predictor.model
        return model if model is not None and model.loaded_from(head) else None

    def canary_model(self) -> LoadedModel | None:
        return self._installed(self.canary)

    def shadow_model(self) -> LoadedModel | None:
        return self._installed(self.shadow)

    def candidates(self) -> Candidates:
        """(canary, shadow) as installed now, two stats: a request asks once, and its answer and its
        /metrics bookkeeping both use what it got."""
        return Candidates(self.canary_model(), self.shadow_model())

    def canary_share(self) -> float:
        now = self._clock()
        if now - self._share_checked >= self.reload_interval_s:
            self._share_checked = now
            try:
                self._share, self._share_error = read_canary_share(self.models_dir), ""
            except ValueError as exc:
                if str(exc) != self._share_error:  # once, not at every check while it stays broken
                    log.error("%s; canary share 0 until it is fixed", exc)
                self._share, self._share_error = 0.0, str(exc)
        return self._share

    def serving_host(self) -> str | None:
        """The store's id (release_store.SERVING_HOST_FILE), read again every ``reload_interval_s``: every event
        names it, so a decision reading several hosts' events judges its own host's."""
        now = self._clock()
        if now - self._host_checked >= self.reload_interval_s:
            self._host_checked, self._host = now, serving_host(self.models_dir)
        return self._host

    def describe(self) -> dict:
        """What /api/v1/model reports about the candidates (the deploy's smoke test reads it)."""
        out: dict = {"canary_share": self.canary_share()}
        for name, model in zip((CANARY, SHADOW), self.candidates()):
            out[name] = None if model is None else {"name": model.name, "version": model.version,
                                                     "digest": model.bundle.digest}
        return out


def _forecastable(instances: Sequence[Instance], model: LoadedModel) -> bool:
    try:
        check_forecastable(list(instances), model)
    except InputError:
        return False
    return True


def predict_with_variants(production: LoadedModel, variants: Variants | None, candidates: Candidates,
                          instances: Sequence[Instance], sink: PredictionEventSink, request_id: str, started: float,
                          source: str) -> tuple[list[dict], dict[str, LoadedModel], Callable[[], None] | None]:
    """(predictions in request order, {variant: model} of those that answered, the shadow's work or None);
    ``candidates`` is ``variants.candidates()`` as the request saw them.

    The shadow's work is returned, not done: the route runs it once the response has been sent
    (``response.call_on_close``), so a shadow never adds to a user's latency."""
    canary = candidates.canary
    host = variants.serving_host() if variants is not None else None
    share = variants.canary_share() if canary is not None and variants is not None else 0.0
    to_canary = [i for i, inst in enumerate(instances)
                 if share > 0 and goes_to_canary(inst.store_nbr, inst.item_nbr, share)]
    if to_canary and not _forecastable([instances[i] for i in to_canary], canary):
        to_canary = []  # the canary cannot forecast these (another catalog or horizon): production answers
    if not to_canary:
        answered = predict_and_log(production, instances, sink, request_id, started, source, serving_host=host)
        used = {PRODUCTION: production}
    else:
        chosen = set(to_canary)
        rest = [i for i in range(len(instances)) if i not in chosen]
        answered = [None] * len(instances)
        used = {}
        split_at = time.perf_counter()
        for variant, model, positions in ((PRODUCTION, production, rest), (CANARY, canary, to_canary)):
            if not positions:
                continue
            group = [instances[i] for i in positions]
            # each group's latency: the request's time before the split, then its own (the canary runs second:
            # timed from the request's start, it would carry production's forecast and events too)
            group_started = time.perf_counter() - (split_at - started)
            try:
                got = predict_and_log(model, group, sink, request_id, group_started, source, variant=variant,
                                      positions=positions, batch_size=len(instances), serving_host=host)
            except Exception:
                if variant != CANARY:
                    raise
                # production answers; its events say the canary failed (the release decision counts them)
                log.exception("canary model %s failed on request %s; production answered", model.version, request_id)
                variant, model = PRODUCTION, production
                got = predict_and_log(production, group, sink, request_id, group_started, source, variant=variant,
                                      positions=positions, batch_size=len(instances), canary_failed=True,
                                      serving_host=host)
            used[variant] = model
            for position, prediction in zip(positions, got):
                answered[position] = prediction
    shadow = candidates.shadow
    if shadow is None:
        return answered, used, None

    def mirror() -> None:
        try:
            with _SHADOW_ONE_AT_A_TIME:
                if not _forecastable(instances, shadow):
                    return
                predict_and_log(shadow, instances, sink, request_id, time.perf_counter(), source, variant=SHADOW,
                                serving_host=host)
        except Exception:  # noqa: BLE001 the shadow must never cost a user anything
            log.exception("shadow model %s failed on request %s", shadow.version, request_id)

    return answered, used, mirror
