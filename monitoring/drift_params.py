"""The `drift:` section of params.yaml: the thresholds that make `python -m monitoring.drift` alarm."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.params import ParamsError, ParamsLoader, params_text


class DriftParamsError(ValueError):
    """A missing or invalid drift setting; the message names it."""


@dataclass(frozen=True)
class DriftParams:
    psi_alert: float = 0.25  # PSI above this on a feature is a shift worth acting on ...
    p_value_alert: float = 0.001  # ... when its KS (a flag: z) / chi-square p-value is also below this
    unseen_share_alert: float = 0.05  # share of requests with a category never seen in training
    prediction_psi_alert: float = 0.1  # PSI of the served forecasts against the model's own, day by day (quantile bins)
    max_live_nwrmsle: float = 0.9  # live NWRMSLE when actual sales are supplied
    max_live_ratio_to_baseline: float = 1.0  # live NWRMSLE / the weekday baseline's on the same rows (95 % low end)
    min_events: int = 100  # fewer distinct requests (store, item, date): report, never alarm
    max_events: int = 200_000  # most recent events read (bounded memory)

    def __post_init__(self) -> None:
        for name in ("psi_alert", "prediction_psi_alert", "max_live_nwrmsle", "max_live_ratio_to_baseline"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise DriftParamsError(f"drift.{name}: expected a number > 0, got {value!r}")
        for name in ("p_value_alert", "unseen_share_alert"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
                raise DriftParamsError(f"drift.{name}: expected a number between 0 and 1, got {value!r}")
        for name in ("min_events", "max_events"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise DriftParamsError(f"drift.{name}: expected an integer >= 1, got {value!r}")
        if self.min_events > self.max_events:  # at most max_events are read: fewer than min_events, never a verdict
            raise DriftParamsError(f"drift.min_events: {self.min_events} is more than drift.max_events "
                                   f"({self.max_events}), the most events a report reads: it could never judge "
                                   "(set min_events <= max_events)")

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "DriftParams":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise DriftParamsError(f"drift.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        return cls(**section)


def load_drift_params(path: Path | str = "params.yaml") -> DriftParams:
    """The drift thresholds of `path`; the embedded defaults when the file or section is absent."""
    path = Path(path)
    if not path.is_file():
        return DriftParams()
    try:
        raw = yaml.load(params_text(path), Loader=ParamsLoader) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise DriftParamsError(f"{path}: not valid YAML ({exc})") from None
    except ParamsError as exc:
        raise DriftParamsError(str(exc)) from None
    if not isinstance(raw, Mapping):
        raise DriftParamsError(f"{path}: expected a mapping at the top level")
    section = raw.get("drift")
    if section is not None and not isinstance(section, Mapping):
        raise DriftParamsError(f"{path}: drift: expected a mapping, got {type(section).__name__}")
    return DriftParams.from_mapping(section)
