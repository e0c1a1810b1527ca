"""Fixtures for the monitoring tests: a real tiny model bundle and request streams built from its statistics.

The bundle comes from tests/app/tiny_bundle.py (the real download -> prepare -> split ->
train code at a tiny scale, ~15 s, once per session). Streams are sampled from the
bundle's own reference histograms and category shares (the served-horizon reference,
pipeline/drift_stats.py), so an unshifted stream is what the bundle expects to serve and
a shifted one differs in a known way.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_BUNDLE_MODULE = REPO / "tests" / "app" / "tiny_bundle.py"
DRIFT_REPLAY_MODULE = REPO / "benchmarks" / "drift_replay.py"


def _tiny_bundle_module():
    spec = importlib.util.spec_from_file_location("monitoring_tests_tiny_bundle", TINY_BUNDLE_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real model bundle (candidate of a tiny training run)."""
    root = tmp_path_factory.mktemp("monitoring-project")
    return _tiny_bundle_module().build_tiny_project(root)


@pytest.fixture(scope="session")
def bundle_parts(tiny_bundle) -> tuple[dict, dict]:
    metadata = json.loads((tiny_bundle / "bundle.json").read_text(encoding="utf-8"))
    stats = json.loads((tiny_bundle / "training_stats.json").read_text(encoding="utf-8"))
    return metadata, stats


def sample_histogram(rng: np.random.Generator, reference: dict, n: int) -> np.ndarray:
    """Values distributed as a training histogram: a bin by its count, then uniform inside it."""
    edges = np.asarray(reference["histogram"]["edges"])
    counts = np.asarray(reference["histogram"]["counts"], np.float64)
    bins = rng.choice(counts.size, size=n, p=counts / counts.sum())
    return edges[bins] + rng.random(n) * (edges[bins + 1] - edges[bins])


def sample_forecasts(rng: np.random.Generator, stats: dict, horizon: int, horizon_feature, n: int) -> np.ndarray:
    """Forecasts as the bundle's reference has them: each at its event's horizon day when the served reference has
    per-day forecasts (pipeline/drift_stats.py), else the inner-validation forecasts."""
    served = stats.get("served") or {}
    if not served.get("prediction_by_horizon") or horizon_feature is None:
        return sample_histogram(rng, stats["prediction_units"], n)
    from pipeline.features import horizon_days

    days = horizon_days(horizon_feature, horizon)
    out = np.empty(n)
    for day in np.unique(days):
        at = days == day
        reference = {"histogram": {"edges": served["prediction_units"]["histogram"]["edges"],
                                   "counts": served["prediction_by_horizon"][str(int(day))]["counts"]}}
        out[at] = sample_histogram(rng, reference, int(at.sum()))
    return out


def sample_categories(rng: np.random.Generator, reference: dict, vocabulary: list[str], n: int) -> np.ndarray:
    """Vocabulary ids distributed as the training category shares (id 0 = unknown)."""
    labels = list(reference["top"])
    shares = np.asarray([reference["top"][label] for label in labels])
    picked = rng.choice(len(labels), size=n, p=shares / shares.sum())
    ids = {label: (0 if label == "<unknown>" else sorted(vocabulary).index(label) + 1) for label in labels}
    return np.asarray([ids[labels[i]] for i in picked], np.int64)


def make_stream(metadata: dict, stats: dict, n: int, seed: int,
                shift: Callable[[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray], Any] | None = None,
                digest: str = "0" * 64, horizon_day: int | None = None) -> list[dict[str, Any]]:
    """`n` prediction events shaped as the app emits them, drawn from the bundle's reference statistics.

    `digest` is the bundle digest the events name as the model that answered them (`model_digest`);
    `horizon_day`: every request for that day of the window (its forecasts drawn as that day's).

    `shift(dense, categorical, predictions)` may change the arrays in place first.
    """
    rng = np.random.default_rng(seed)
    reference = stats.get("served") or stats  # what the bundle serves (older bundles: the training rows)
    dense = {name: sample_histogram(rng, ref, n) for name, ref in reference["dense"].items() if ref.get("count")}
    categorical = {name: sample_categories(rng, ref, metadata["vocabularies"][name], n)
                   for name, ref in reference["categorical"].items()}
    if horizon_day is not None:
        dense["horizon"][:] = horizon_day / metadata["horizon"]  # the feature's scale (pipeline/features.py)
    predictions = sample_forecasts(rng, stats, metadata["horizon"], dense.get("horizon"), n)
    if shift is not None:
        shift(dense, categorical, predictions)
    start = dt.datetime(2017, 8, 1, tzinfo=dt.timezone.utc)
    # each request's date is its horizon day's, as the app's events have it (drift counts distinct requests by it)
    first_day = dt.date.fromisoformat(metadata["horizon_dates"][0])
    days = np.clip(np.rint(dense["horizon"] * metadata["horizon"]).astype(int), 1, metadata["horizon"]) \
        if "horizon" in dense else np.ones(n, int)
    stores, items = metadata["vocabularies"]["store_nbr"], metadata["vocabularies"]["item_nbr"]
    events = []
    for i in range(n):
        store = categorical["store_nbr"][i]
        item = categorical["item_nbr"][i]
        events.append({
            "event_id": uuid.UUID(int=int(rng.integers(1 << 62)) * 4 + i % 4).hex,
            "request_id": f"req-{seed}-{i}",
            "timestamp": (start + dt.timedelta(seconds=i)).isoformat(),
            "model_name": metadata["name"], "model_version": metadata["version"],
            "inputs": {"store_nbr": int(stores[store - 1]) if store else 999,
                       "item_nbr": int(items[item - 1]) if item else 999999,
                       "date": (first_day + dt.timedelta(days=int(days[i]) - 1)).isoformat(),
                       "onpromotion": bool(dense["target_onpromotion"][i] > 0.5)},
            "features": {"dense": {name: float(values[i]) for name, values in dense.items()},
                         "categorical": {name: int(values[i]) for name, values in categorical.items()}},
            "output": {"unit_sales": float(max(predictions[i], 0.0))},
            "source": "api", "instance_index": 0, "batch_size": 1, "model_digest": digest,
            "latency_ms": float(1.0 + rng.random()),
        })
    return events


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")
    return path


@pytest.fixture
def production_bundle(tiny_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle at <tmp>/models/production, as `promote` installs it."""
    target = tmp_path / "models" / "production"
    shutil.copytree(tiny_bundle, target)
    return target


@pytest.fixture(scope="session")
def bundle_digest(tiny_bundle) -> str:
    """The tiny bundle's digest (its copies in production_bundle have the same): what its events name."""
    from pipeline.bundle import verify_bundle

    return verify_bundle(tiny_bundle)


@pytest.fixture(scope="session")
def stream(bundle_parts, bundle_digest) -> Callable[..., list[dict[str, Any]]]:
    """stream(n, seed, shift=None, horizon_day=None): events the tiny bundle answered, drawn from its reference
    statistics."""
    metadata, stats = bundle_parts
    return lambda n, seed, shift=None, horizon_day=None: make_stream(metadata, stats, n, seed, shift, bundle_digest,
                                                                     horizon_day)


@pytest.fixture(scope="session")
def jsonl() -> Callable[[Path, list[dict[str, Any]]], Path]:
    return write_jsonl


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _drift_replay_module():
    """benchmarks/drift_replay.py: the replay the README's live-accuracy figures come from, shared with the tests."""
    spec = importlib.util.spec_from_file_location("monitoring_tests_drift_replay", DRIFT_REPLAY_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DRIFT_REPLAY = _drift_replay_module()
served_validation_requests, replay_requests = DRIFT_REPLAY.served_validation_requests, DRIFT_REPLAY.replay_requests


@pytest.fixture(scope="session")
def validation_requests_for() -> Callable[..., list[dict[str, Any]]]:
    return served_validation_requests


@pytest.fixture(scope="session")
def replay() -> Callable[..., Path]:
    return replay_requests
