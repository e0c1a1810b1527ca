"""What one app instance holds: its settings, the predictor, the prediction-event sink and the release variants."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.config import AppSettings
from app.events import PredictionEventSink
from app.predictor import Predictor
from app.variants import Variants

EXTENSION_KEY = "shelfcast"


@dataclass
class ServingState:
    settings: AppSettings
    predictor: Predictor  # production (app/model_store.py: with the last good release as fallback)
    sink: PredictionEventSink
    variants: Variants | None = None  # canary and shadow (app/variants.py)

    def note_served(self, candidates=None) -> None:
        """Mark the models this process serves now for /metrics' shelfcast_model_info: after each response, and by
        /metrics itself before it answers (a reload since the last request shows in that very scrape).
        ``candidates``: what a forecast looked up (app.variants.Candidates), else looked up now."""
        from app.metrics import observe_models
        from app.variants import installed_candidates

        observe_models(self.predictor.model, installed_candidates(self.variants) if candidates is None else candidates)

    def close(self) -> None:
        """Flush prediction events (called when a worker exits)."""
        self.sink.close()


def serving_state() -> ServingState:
    return current_app.extensions[EXTENSION_KEY]
