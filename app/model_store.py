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
from pathlib import Path

from app.predictor import LoadedModel, Predictor
from pipeline.release_store import ReleaseStore

log = logging.getLogger(__name__)


class ProductionWithFallback:
    """``primary`` (models/production) while it has a model, else the newest good release of ``store``."""

    def __init__(self, primary: Predictor, store: ReleaseStore):
        self.primary = primary
        self.store = store
        self._fallback: Predictor | None = None

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
        return self.primary.model is None and self._fallback is not None and self._fallback.model is not None

    @property
    def fallback_path(self) -> Path | None:
        """The release served in production's place, None while production serves (or nothing does)."""
        return self._fallback.path if self.serving_fallback else None

    @property
    def model(self) -> LoadedModel | None:
        model = self.primary.model
        if model is not None:
            if self._fallback is not None and self._fallback.forget():
                log.info("%s serves again; the release %s it stood in for is let go", self.primary.path,
                         self._fallback.path.name)
                self._fallback = None  # its model collected (Predictor.forget), not kept for the worker's life
            return model
        if self._fallback is None:
            self._pick_fallback()
        return self._fallback.model if self._fallback is not None else None

    def check_now(self) -> bool:
        changed = self.primary.check_now()
        if self.primary.model is None:
            self._pick_fallback()
        return changed

    def _pick_fallback(self) -> None:
        for release in self.store.good_releases():
            candidate = Predictor(release, self.primary.reload_interval_s,
                                  series_cache_entries=self.primary.series_cache_entries, removal_ends_it=True)
            candidate.check_now()
            if candidate.model is not None:
                self._fallback = candidate
                log.warning("%s cannot be served (%s); serving the last good release %s (version %s)",
                            self.primary.path, self.primary.last_error or "absent", release.name,
                            candidate.model.version)
                return
