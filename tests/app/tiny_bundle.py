"""A small real model bundle for the app tests, made by the real pipeline at a tiny scale.

Synthetic Favorita files (download) -> prepare -> split -> train -> promote's verified
copy into models/production/: the same code paths `dvc repro` runs, only with 2 stores,
a few dozen items and a short history, so the whole thing takes seconds. No fake model.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import yaml

TINY_APP_PARAMS = {
    "data": {
        "source": "synthetic",
        "sha256": {},
        "download": {"retries": 1, "timeout_s": 10},
        "synthetic": {"seed": 11, "stores": 2, "items": 40, "start_date": "2017-02-01", "end_date": "2017-08-15",
                      "test_days": 0, "compression": "none"},
    },
    "prepare": {"returns": "zero", "grid": "from_first_sale", "closed_after_days": 16},
    "split": {"validation_days": 16},
    "features": {"history_days": 56, "mean_windows": [3, 7, 14, 28, 56], "dow_weeks": [4, 8], "promo_windows": [14],
                 "horizon": 16, "yearly": False, "train_origins": 3, "origin_stride_days": 7,
                 "in_memory_examples": 6_000_000},
    "train": {"model": "mlp", "seed": 3, "max_steps": 60, "eval_every_steps": 20, "patience": 2, "batch_size": 256,
              "learning_rate": 0.01,
              "hidden_units": [16, 8],
              "embedding_dims": {"store_nbr": 2, "item_nbr": 4, "family": 2, "class": 2, "perishable": 1,
                                 "city": 1, "store_type": 1, "cluster": 1},
              "baseline_weeks": 4},
    "evaluate": {"backtest_windows": 1, "min_improvement": -1.0, "min_series": 1, "confidence": 0.9,
                 "bootstrap_resamples": 100, "max_nwrmsle": None, "slice": {"max_nwrmsle": 10.0, "min_rows": 20},
                 "plot_rows": 100, "seed": 0},
    "promote": {"model_name": "shelfcast-forecaster", "alias": "production", "max_regression": 0.0},
}


def build_tiny_project(root: Path, params: dict | None = None, edit_raw=None) -> Path:
    """Run download, prepare, split and train under ``root``; returns the candidate bundle directory. ``edit_raw``
    (a function of the raw data folder) changes the downloaded CSVs first, as a team's own files differ."""
    from pipeline import download, prepare, split, train
    from pipeline.params import data_params, prepare_params, split_params

    params = TINY_APP_PARAMS if params is None else params
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    data = root / "data"
    download.download(data_params(params), raw_dir=data / "raw", partial_dir=data / ".downloads", progress=False)
    if edit_raw is not None:
        edit_raw(data / "raw")
    prepare.prepare(data / "raw", data / "prepared", prepare_params(params), progress=False)
    split.split(data / "prepared" / "sales.parquet", data / "split", split_params(params), progress=False)
    summary = train.run(root, quiet=True)
    return Path(summary["bundle"])


def retrain(root: Path, seed: int) -> Path:
    """Train again in a built tiny project with another seed: a second, different real bundle."""
    from pipeline import train

    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["seed"] = seed
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return Path(train.run(root, quiet=True)["bundle"])


def tiny_bundles(base: Path) -> tuple[Path, Path]:
    """Two real bundles (seeds 3 and 4) under ``base``, built once and reused by later callers."""
    import shutil

    first, second = base / "bundle-a", base / "bundle-b"
    if not (first.is_dir() and second.is_dir()):
        project = base / "project"
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(build_tiny_project(project), base / "bundle-a.tmp")
        shutil.copytree(retrain(project, seed=4), base / "bundle-b.tmp")
        (base / "bundle-b.tmp").rename(second)
        (base / "bundle-a.tmp").rename(first)
    return first, second


def tampered_bundle(source: Path, target: Path, change) -> Path:
    """A copy of `source` with `change(weights)` applied and every checksum made to match again: what a diverged
    training run, a bad export or a hand edit that rewrote the checksums leaves (it passes verification)."""
    from pipeline.atomic import file_digest
    from pipeline.bundle import copy_bundle

    copy_bundle(source, target)
    with np.load(target / "weights.npz", allow_pickle=False) as data:
        weights = {name: data[name].copy() for name in data.files}
    change(weights)
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    (target / "weights.npz").write_bytes(buffer.getvalue())
    graph = json.loads((target / "graph.json").read_text())
    graph["weights"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (target / "graph.json").write_text(json.dumps(graph))
    manifest = json.loads((target / "checksums.json").read_text())
    for name in ("weights.npz", "graph.json"):
        manifest["files"][name] = file_digest(target / name)
    (target / "checksums.json").write_text(json.dumps(manifest))
    return target


def tensor_of(bundle: Path, op_name: str) -> str:
    """The weights.npz name of the tensor the graph's Const ``op_name`` holds."""
    graph = json.loads((bundle / "graph.json").read_text())
    [op] = [op for op in graph["ops"] if op["name"] == op_name]
    return op["attrs"]["value"]["tensor"]


def absurd_item_row(source: Path, target: Path) -> Path:
    """A copy of ``source`` (at ``target``) in which one item's embedding row is ±1e3, well within the weight limit,
    so that the app refuses it for that item's astronomical forecasts: the first item whose row does that (another's
    may collapse its forecasts to 0 units instead, which the app serves)."""
    import shutil

    from app.predictor import load_model
    from pipeline.bundle import BundleError

    table = tensor_of(source, "embedding_item_nbr/embeddings")
    for row in range(1, 20):  # 0: the id of values unseen in training
        for sign in (1.0, -1.0):
            def change(weights: dict) -> None:
                weights[table][row] = np.where(weights[table][row] >= 0, sign * 1e3, -sign * 1e3)

            shutil.rmtree(target, ignore_errors=True)
            tampered_bundle(source, target, change)
            try:
                load_model(target)
            except BundleError as exc:
                if "implausible units" in str(exc):
                    return target
    raise AssertionError(f"no item row of {source} at ±1e3 made the app refuse the bundle")
