"""params.yaml sections of the model stages (``features``, ``train``, ``evaluate``, ``promote``), typed and validated.

Same rules as ``pipeline.params`` (whose helpers this reuses): a bad or unknown
key is an error that names it; nothing falls back silently to a default.
"""

from __future__ import annotations

import functools
import inspect
import re

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from pipeline.features import CATEGORICAL_FIELDS, FeatureInputError, FeatureSpec
from pipeline.params import ParamsError, _Section, load_yaml, names_file, split_params

T = TypeVar("T")


@dataclass(frozen=True)
class FeatureParams:
    spec: FeatureSpec
    train_origins: int
    origin_stride_days: int
    in_memory_examples: int = 6_000_000  # training examples up to this many are held, more streamed (params.yaml)

    def to_json(self) -> dict:
        """Every field (the spec's flattened in): what MLflow, the bundle and a checkpoint's fingerprint record,
        so that no param that changes the model is left out of any of them."""
        return {**self.spec.to_json(), **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}}


@dataclass(frozen=True)
class TrainParams:
    model: str  # mlp | linear
    seed: int
    max_steps: int  # optimizer steps at most (batches), whatever the data size
    eval_every_steps: int  # inner-validation score (and checkpoint) every N steps
    patience: int  # early stopping: evaluations without an improvement
    batch_size: int
    learning_rate: float
    hidden_units: tuple[int, ...]
    embedding_dims: dict[str, int]
    baseline_weeks: int

    def to_json(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value):
    """A param value as JSON writes it back (tuples as lists), so that a recorded value compares equal."""
    return list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class SliceBound:
    max_nwrmsle: float
    min_rows: int


@dataclass(frozen=True)
class EvaluateParams:
    backtest_windows: int  # rolling windows scored, the latest (the candidate's own) included
    min_improvement: float  # the improvement interval's lower bound must exceed this
    min_series: int  # ... and rest on at least this many store x item series (fewer: no confident verdict)
    confidence: float  # share of bootstrap resamples inside the improvement interval
    bootstrap_resamples: int
    max_nwrmsle: float | None  # optional absolute bound on the backtest NWRMSLE (None: no bound)
    slice_bound: SliceBound
    plot_rows: int
    seed: int

    def to_json(self) -> dict:
        """Every field under its params.yaml key (``slice_bound`` as ``slice``, nested): what an evaluation's MLflow
        run records, so that every param of the threshold test is a column there, as in ``dvc params diff``."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "slice_bound"}
        return {**values, "slice": asdict(self.slice_bound)}


@dataclass(frozen=True)
class PromoteParams:
    model_name: str
    alias: str
    max_regression: float  # champion/challenger: refused when the improvement's upper bound is below -this


def _int_list(section: _Section, name: str, minimum: int = 1) -> tuple[int, ...]:
    value = section._get(name)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ParamsError(f"{section.key}.{name}: expected a list of integers, got {value!r}")
    if any(v < minimum for v in value):
        raise ParamsError(f"{section.key}.{name}: every value must be >= {minimum}, got {value!r}")
    return tuple(value)


@names_file
def feature_params(raw: Mapping[str, Any]) -> FeatureParams:
    s = _Section.of(raw, "features", ("history_days", "mean_windows", "dow_weeks", "promo_windows",
                                                    "horizon", "yearly", "train_origins", "origin_stride_days",
                                                    "in_memory_examples"))
    yearly = s._get("yearly")
    if not isinstance(yearly, bool):
        raise ParamsError(f"features.yearly: expected true or false, got {yearly!r}")
    try:
        spec = FeatureSpec(history_days=s.integer("history_days", 7, 3650), mean_windows=_int_list(s, "mean_windows"),
                           dow_weeks=_int_list(s, "dow_weeks"), promo_windows=_int_list(s, "promo_windows"),
                           horizon=s.integer("horizon", 1, 16), yearly=yearly)
    except FeatureInputError as exc:
        raise ParamsError(str(exc)) from None
    return FeatureParams(spec=spec, train_origins=s.integer("train_origins", 1, 1000),
                         origin_stride_days=s.integer("origin_stride_days", 1, 365),
                         # streamed, a quarter of it is the inner validation that stops training and fits the
                         # expected-units factor: 1 gave 16 rows, silently
                         in_memory_examples=s.integer("in_memory_examples", 1000, 1 << 40))


@names_file
def validation_within_horizon(raw: Mapping[str, Any]) -> None:
    """ParamsError unless ``split.validation_days`` <= ``features.horizon``: the models forecast at most
    ``horizon`` days after their origin, so a longer validation window could never be scored. The train stage
    asks before it trains, not evaluate after (DVC reruns train whenever either changes: the split's output or
    its own param)."""
    days, horizon = split_params(raw).validation_days, feature_params(raw).spec.horizon
    if days > horizon:
        raise ParamsError(f"split.validation_days: {days} days are longer than features.horizon ({horizon}), "
                          f"the days after its origin a model forecasts; set split.validation_days <= {horizon}")


@names_file
def train_params(raw: Mapping[str, Any]) -> TrainParams:
    s = _Section.of(raw, "train", ("model", "seed", "max_steps", "eval_every_steps", "patience",
                                             "batch_size", "learning_rate", "hidden_units", "embedding_dims",
                                             "baseline_weeks"))
    dims = s.sub("embedding_dims", CATEGORICAL_FIELDS)
    return TrainParams(
        model=s.choice("model", ("mlp", "linear")), seed=s.integer("seed", 0, 2**31 - 1),
        max_steps=s.integer("max_steps", 1, 10_000_000), eval_every_steps=s.integer("eval_every_steps", 1, 10_000_000),
        patience=s.integer("patience", 1, 1000),
        batch_size=s.integer("batch_size", 1, 1 << 20), learning_rate=s.number("learning_rate", 1e-9),
        hidden_units=_int_list(s, "hidden_units"),
        embedding_dims={f: dims.integer(f, 1, 512) for f in CATEGORICAL_FIELDS},
        baseline_weeks=s.integer("baseline_weeks", 1, 52),
    )


@names_file
def evaluate_params(raw: Mapping[str, Any]) -> EvaluateParams:
    s = _Section.of(raw, "evaluate", ("backtest_windows", "min_improvement", "min_series", "confidence",
                                                   "bootstrap_resamples", "max_nwrmsle", "slice", "plot_rows",
                                                   "seed"))
    sl = s.sub("slice", ("max_nwrmsle", "min_rows"))
    confidence = s.number("confidence", 0.5)
    if confidence >= 1.0:
        raise ParamsError(f"evaluate.confidence: must be below 1 (e.g. 0.95), got {confidence}")
    min_improvement = s.number("min_improvement", -1.0)
    if min_improvement >= 1.0:  # 1 - NWRMSLE/baseline's is below 1 for any model that is not perfect
        raise ParamsError(f"evaluate.min_improvement: must be below 1, a share (0.05: 5 % better than the baseline), "
                          f"got {min_improvement}: no model could pass")
    return EvaluateParams(
        backtest_windows=s.integer("backtest_windows", 1, 104),
        min_improvement=min_improvement, min_series=s.integer("min_series", 1, 1_000_000),
        confidence=confidence,
        bootstrap_resamples=s.integer("bootstrap_resamples", 100, 1_000_000),
        max_nwrmsle=None if s._get("max_nwrmsle") is None else s.number("max_nwrmsle", 0.0),
        slice_bound=SliceBound(max_nwrmsle=sl.number("max_nwrmsle", 0.0), min_rows=sl.integer("min_rows", 1)),
        plot_rows=s.integer("plot_rows", 10, 1_000_000), seed=s.integer("seed", 0, 2**31 - 1),
    )


PROMOTE_KEYS = ("model_name", "alias", "max_regression")


@names_file
def model_name_param(raw: Mapping[str, Any]) -> str:
    """``promote.model_name`` alone, checked as promote_params checks it: the name train gives the bundle, and every
    command its registered model, need not wait on the rest of the section."""
    name = _Section.of(raw, "promote", PROMOTE_KEYS).text("model_name")
    if "'" in name or '"' in name:  # the registry is searched with name='...'
        raise ParamsError(f"promote.model_name: may not contain quotes, got {name!r}")
    if unusable := [ch for ch in ("/", ":") if ch in name]:  # MLflow's registry refuses them in a model's name
        raise ParamsError(f"promote.model_name: may not contain {' or '.join(map(repr, unusable))} (the MLflow "
                          f"registry refuses them in a model's name), got {name!r}; e.g. "
                          f"{re.sub(r'[/:]+', '-', name)!r}")
    return name


@names_file
def promote_params(raw: Mapping[str, Any]) -> PromoteParams:
    s = _Section.of(raw, "promote", PROMOTE_KEYS)
    name = model_name_param(raw)
    max_regression = s.number("max_regression", 0.0)
    return PromoteParams(model_name=name, alias=production_alias_param(raw), max_regression=max_regression)


CANDIDATE_ALIASES = ("canary", "shadow")  # the release candidates' own aliases (pipeline/release_store.py's variants)
SHIPPED_ALIAS = "production"  # params.yaml's promote.alias as shipped: only for a folder without params.yaml


@names_file
def production_alias_param(raw: Mapping[str, Any]) -> str:
    """``promote.alias`` alone: the registry alias of the version this project serves as production (promote moves
    and installs it; release, rollback, prune, the champion gate and fetch-model read it). A candidate's alias
    (``canary``, ``shadow``) is refused: release moves those itself, and production would be judged against itself."""
    alias = registry_alias(_Section.of(raw, "promote", PROMOTE_KEYS).text("alias"), "promote.alias")
    if alias in CANDIDATE_ALIASES:
        raise ParamsError(f"promote.alias: {alias!r} is a release candidate's alias (canary, shadow); name the "
                          "production alias, e.g. production or champion (a candidate is promoted under "
                          "SHELFCAST_PROMOTE_ALIAS)")
    return alias


def registered_model(root: Path | str, given: str | None = None) -> str:
    """The MLflow registered model's name: ``given`` (a command's ``--name``) when given, else ``promote.model_name``
    of the project's params.yaml (``root``), the one definition train (the bundle's name), promote, release and
    fetch-model read."""
    if given:
        return given
    path = Path(root) / "params.yaml"
    if not path.is_file():
        raise ParamsError(f"{path}: not found: the registered model's name is its promote.model_name (run in the "
                          "project's root folder, pass --root PROJECT, or name the model with --name)")
    return model_name_param(load_yaml(path))


def model_named(command: Callable[..., T]) -> Callable[..., T]:
    """``command`` whose ``name`` argument, when not given (None, empty), is ``registered_model`` of its first
    argument, the project root: the functions of release, fetch-model and the registry take a ``--name`` override,
    and this is the one place it falls back to params.yaml, before the body runs."""
    signature = inspect.signature(command)
    root_parameter = next(iter(signature.parameters))
    if "name" not in signature.parameters:
        raise TypeError(f"model_named: {command.__qualname__} has no parameter 'name'")

    @functools.wraps(command)
    def with_model_name(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["name"] = registered_model(bound.arguments[root_parameter], bound.arguments.get("name"))
        return command(*bound.args, **bound.kwargs)

    return with_model_name


def production_alias(root: Path | str) -> str:
    """The registry alias of production: ``promote.alias`` of the project's params.yaml (``root``), the one
    definition promote, release, prune, the champion gate and fetch-model read. A folder without params.yaml (a
    command given the model's name with --name) has the alias params.yaml ships with, ``production``."""
    path = Path(root) / "params.yaml"
    return production_alias_param(load_yaml(path)) if path.is_file() else SHIPPED_ALIAS


def registry_alias(alias: str, where: str) -> str:
    """``alias`` if the model registry takes it (MLflow's rules: letters, digits, _ and -, at most 255, neither
    ``latest`` nor a version's ``v<N>``), checked before promote installs or registers anything."""
    if not re.fullmatch(r"[\w-]{1,255}", alias, re.ASCII) or alias.lower() == "latest" \
            or re.fullmatch(r"[vV]\d+", alias):
        raise ParamsError(f"{where}: {alias!r} is not a registry alias (letters, digits, _ and -, at most 255; "
                          "not 'latest' or v<number>, which the registry reserves)")
    return alias
