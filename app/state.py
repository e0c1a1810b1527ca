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

    def close(self) -> None:
        """Flush prediction events (called when a worker exits)."""
        self.sink.close()


def serving_state() -> ServingState:
    return current_app.extensions[EXTENSION_KEY]
