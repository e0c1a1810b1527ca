"""Production with a safety net: when models/production cannot be loaded, serve the newest good release.

The release store (pipeline/release_store.py) keeps the last N versions that served as
production on this host. A worker that starts while models/production is missing or refused
(a broken install, a half-finished deploy) would otherwise answer 503 to everyone; with this
it serves the newest good release until production loads again, and says so in /readyz
(``fallback``, and why production was refused) and the log. Once production serves, the release's
model is let go (before, it stayed in memory for the worker's life, beside production's). It has the
Predictor's interface (``model``, ``check_now``, ``path``, ``last_error``, ``last_error_at``), so routes use
it unchanged (``absent_since`` too).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from app.predictor import LoadedModel, Predictor
from pipeline.release_store import ReleaseStore

log = logging.getLogger(__name__)


class ProductionWithFallback:
    """``primary`` (models/production) while it has a model, else the newest good release of ``store``."""

    def __init__(self, primary: Predictor, store: ReleaseStore, clock: Callable[[], float] = time.monotonic):
        self.primary = primary
        self.store = store
        self._clock = clock
        self._fallback: Predictor | None = None
        # Releases tried and refused, by folder: their Predictor remembers the refused state, so one is loaded (and
        # its refusal logged) again only once it changed; and a request looks for a fallback at most once per reload
        # interval. Before, while production had no model, every request verified (hashed) each good release and
        # loaded it again: two ERROR lines and a full load a request for a release this code refuses.
        self._refused_releases: dict[Path, Predictor] = {}
        self._next_pick = float("-inf")
        # a health probe asks for the model beside the request whose turn it is (app/request_buffer.py): the
        # fallback is picked and let go by one thread at a time, and read once wherever it is used
        self._fallback_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.primary.path

    @property
    def reload_interval_s(self) -> float:
        return self.primary.reload_interval_s

    @property
    def last_error(self) -> str | None:
        return self.primary.last_error

    @property
    def last_error_at(self) -> str | None:
        return self.primary.last_error_at

    @property
    def absent_since(self) -> str | None:
        return self.primary.absent_since

    @property
    def serving_fallback(self) -> bool:
        fallback = self._fallback
        return self.primary.model is None and fallback is not None and fallback.model is not None

    @property
    def fallback_path(self) -> Path | None:
        """The release served in production's place, None while production serves (or nothing does)."""
        fallback = self._fallback
        return fallback.path if fallback is not None and self.serving_fallback else None

    @property
    def model(self) -> LoadedModel | None:
        model = self.primary.model
        if model is not None:
            if self._fallback is not None:
                with self._fallback_lock:
                    fallback = self._fallback
                    if fallback is not None and fallback.forget():
                        log.info("%s serves again; the release %s it stood in for is let go", self.primary.path,
                                 fallback.path.name)
                        self._fallback = None  # its model collected (Predictor.forget), not kept for the worker's life
            return model
        with self._fallback_lock:
            if self._fallback is None and self._clock() >= self._next_pick:
                self._pick_fallback()
            fallback = self._fallback
        return fallback.model if fallback is not None else None

    def check_now(self) -> bool:
        changed = self.primary.check_now()
        if self.primary.model is None:
            with self._fallback_lock:
                self._pick_fallback()
        return changed

    def _pick_fallback(self) -> None:
        self._next_pick = self._clock() + self.primary.reload_interval_s
        releases = self.store.good_releases()
        for gone in set(self._refused_releases) - set(releases):
            del self._refused_releases[gone]
        for release in releases:
            candidate = self._refused_releases.pop(release, None) or Predictor(
                release, self.primary.reload_interval_s, series_cache_entries=self.primary.series_cache_entries,
                removal_ends_it=True)
            candidate.check_now()  # a release refused before and unchanged since: not loaded again
            if candidate.model is None:
                self._refused_releases[release] = candidate
                continue
            self._fallback = candidate
            log.warning("%s cannot be served (%s); serving the last good release %s (version %s)",
                        self.primary.path, self.primary.last_error or "absent", release.name, candidate.model.version)
            return
