"""What one app instance holds: its settings, the predictor and the prediction-event sink."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.config import AppSettings
from app.events import PredictionEventSink
from app.predictor import Predictor

EXTENSION_KEY = "shelfcast"


@dataclass
class ServingState:
    settings: AppSettings
    predictor: Predictor
    sink: PredictionEventSink

    def close(self) -> None:
        """Flush prediction events (called when a worker exits)."""
        self.sink.close()


def serving_state() -> ServingState:
    return current_app.extensions[EXTENSION_KEY]
