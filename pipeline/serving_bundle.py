"""The production bundle: the evaluated model, with its history moved forward to the latest known day.

The candidate's history snapshot ends at the validation origin, so that ``evaluate``
scores it on the validation window. Features are relative to a forecast origin, so the
same frozen graph and weights forecast the days after *all* known data once the
snapshot ends on the last known day: that is what production must serve (the days
nobody knows yet), as a forecasting team does when it rolls the origin forward.
Nothing is retrained: graph, weights, vocabularies and training statistics are the
evaluated candidate's, byte for byte; only history.npz, calendar.npz, the dates in
bundle.json and drift's served-horizon reference (training_stats.json ``served``,
recomputed for the new origin) change, ``source_bundle_digest`` names the candidate
it came from, and promote's provenance (the training run's time, commit and id, which
the git-tracked candidate leaves out) is added.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.bundle import GRAPH_FILES, BundleError, load_bundle, write_bundle
from pipeline.drift_stats import roll_served_reference
from pipeline.history import future_calendar, load_history, snapshot_at

SALES_DATA = ("data/split/train.parquet", "data/split/validation.parquet")
HOLIDAYS_DATA = "data/prepared/holidays.parquet"


def _day(day_number) -> str:
    return str(np.datetime64(int(day_number), "D"))


def roll_forward(root: Path, candidate_dir: Path, target_dir: Path, candidate_digest: str,
                 provenance: Mapping[str, str] | None = None) -> str:
    """Write ``target_dir`` from the candidate with its origin at the last day of the data; returns its digest.

    ``provenance`` (e.g. ``created``, ``git_commit``, ``mlflow_run_id``) goes into its bundle.json.
    """
    candidate = load_bundle(candidate_dir)
    spec = candidate.spec
    # only the window the snapshot ships (zeros before the data when it is shorter than history_days)
    history = load_history([root / path for path in SALES_DATA], days=spec.history_days)
    calendar = future_calendar(root / HOLIDAYS_DATA, history.stores["store_nbr"], history.last_day + 1, spec.horizon)
    snapshot = snapshot_at(history, history.days - 1, spec.history_days, calendar)

    metadata = dict(candidate.metadata)
    metadata.update({
        "evaluated_forecast_origin": candidate.metadata["forecast_origin"],
        "evaluated_horizon_dates": candidate.metadata["horizon_dates"],
        "horizon_dates": [_day(snapshot.calendar_days[0]), _day(snapshot.calendar_days[-1])],
        "source_bundle_digest": candidate_digest,
        **(provenance or {}),
    })

    def copy_graph(directory: Path) -> None:
        for name in GRAPH_FILES:
            shutil.copy2(candidate_dir / name, directory / name)

    stats = dict(candidate.training_stats)
    if "served" in stats:  # drift compares production's requests with its own origin and horizon days
        stats["served"] = roll_served_reference(stats["served"], spec, candidate.vocab, snapshot,
                                                candidate.predict_features)
    return write_bundle(target_dir, write_graph=copy_graph, metadata=metadata, snapshot=snapshot,
                        training_stats=stats)


def source_digest(bundle_dir: Path) -> str | None:
    """The candidate a production bundle was rolled forward from (None when it is not one, or unreadable)."""
    try:
        return load_bundle(bundle_dir).metadata.get("source_bundle_digest")
    except (BundleError, OSError, KeyError, TypeError):  # a missing or untrustworthy bundle is simply replaced
        return None
