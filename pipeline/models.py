"""The forecasting models: a weekday moving-average baseline, and a linear model and an MLP built from ``en.layers``.

The engine models predict log1p(units) from the dense features (standardized
inside the graph, so the frozen graph takes raw features) and one
``en.layers.Embedding`` per categorical id, through ``en.layers.Dense``
layers. Training minimizes the squared error of log1p sales weighted 1.25
for perishable items — the competition metric, squared — so the forecast is
median-like: half the days sell more, and a sum of forecasts falls short of
the sum of sales. The graph has three outputs:

* ``log1p_sales``: the raw model output;
* ``prediction``: ``expm1(clip(log1p_sales, 0, 25))``, units, never negative —
  what the metric scores;
* ``expected_units``: ``max(factor * (prediction + 1) - 1, 0)``, the
  bias-corrected mean: ``factor`` is the ratio smearing estimate fitted on
  the inner validation (sum of actual ``units + 1`` over sum of predicted),
  so those forecasts sum to what sold.

Training is a number of optimizer steps (Adam) over batches from an iterator
(``en.data``: seeded shuffle, batching, background prefetch — a streamed
source plugs in the same way), with early stopping on the inner validation's
NWRMSLE every ``eval_every`` steps. With a checkpoint directory, every
evaluation writes an ``en.train.Saver`` checkpoint (weights, Adam's slots
and step) and the loop's position, so a killed run resumes where it
stopped and ends exactly as an uninterrupted run with the same seed would.
The evaluation before it is kept too (its state and checkpoints), so a newest
checkpoint that a disk error or a hand edit damaged costs one evaluation's
steps, not the whole run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import engine as en
from engine import data as en_data
from pipeline.atomic import atomic_file, open_regular_file
from pipeline.blas import use_one_blas_thread
from pipeline.bundle import (
    CATEGORICAL_INPUT,
    DENSE_INPUT,
    EXPECTED_OUTPUT,
    PREDICTION_OUTPUT,
)
from pipeline.features import CATEGORICAL_FIELDS, FeatureMatrix, FeatureRows
from pipeline.metrics import nwrmsle

LOG1P_OUTPUT = "log1p_sales"
MAX_LOG1P = 25.0
STATE_FILE = "state.json"
PREVIOUS_STATE_FILE = "previous-state.json"  # the evaluation before state.json's, whose checkpoints are kept with it:
# a newest checkpoint that cannot be read is skipped for it, not trained again from step 0
STATE_FORMAT = "shelfcast-train-state"
STATE_VERSION = 2  # 2: the identity's parts (CheckpointIdentity); 1 kept only their hash ("fingerprint")
STAGED_DATA = re.compile(r"(.+)\.npz-[0-9a-f]{16}")  # a checkpoint's data staged by engine/saver.py
PARTIAL_WRITE = re.compile(r"\.tmp-[A-Za-z0-9_]+")  # engine/saver.py atomic_write_bytes's copy a kill left


def baseline_predict(rows: FeatureRows, weeks: int) -> np.ndarray:
    """Day-of-week moving average: expm1 of the mean log1p sales on the target's weekday over ``weeks`` weeks."""
    sales = np.log1p(np.asarray(rows.sales, np.float64))
    w = sales.shape[1]
    if 7 * weeks > w:
        raise ValueError(f"train.baseline_weeks: {weeks} weeks need {7 * weeks} days of history, the window has {w}")
    origin = np.asarray(rows.origin_day, np.int64)
    target = origin + np.asarray(rows.horizon, np.int64)
    last_same = (w - 1) - (((origin + 3) % 7 - (target + 3) % 7) % 7)
    cols = last_same[:, None] - 7 * np.arange(weeks)[None, :]
    return np.expm1(sales[rows.window_index()[:, None], cols].mean(axis=1)).astype(np.float32)


@dataclass
class ModelConfig:
    """Architecture and input sizes; stored in bundle.json so the graph's origin is documented."""

    kind: str  # "mlp" | "linear"
    dense_size: int
    vocab_sizes: dict[str, int]
    embedding_dims: dict[str, int]
    hidden_units: tuple[int, ...]
    dense_mean: np.ndarray = field(repr=False, default=None)
    dense_std: np.ndarray = field(repr=False, default=None)
    dense_constant: np.ndarray = field(repr=False, default=None)  # [F] bool: the feature never varied in training
    output_bias: float = 0.0  # the training mean of log1p sales: the output layer learns the deviation from it

    def __post_init__(self):
        if self.kind == "linear":  # one weight per category value, no hidden layer
            self.embedding_dims = {f: 1 for f in CATEGORICAL_FIELDS}
            self.hidden_units = ()
        elif self.kind != "mlp":
            raise ValueError(f"train.model: must be mlp or linear, got {self.kind!r}")

    def to_json(self) -> dict:
        return {"kind": self.kind, "dense_size": self.dense_size, "vocab_sizes": self.vocab_sizes,
                "embedding_dims": self.embedding_dims, "hidden_units": list(self.hidden_units)}


CONSTANT_FEATURE_STD = 1e-6  # a training feature with no larger std is constant: the model gives it no weight


def normalization(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training features (std 1 for constant features), and which are constant."""
    mean = dense.mean(axis=0, dtype=np.float64)
    std = dense.std(axis=0, dtype=np.float64)
    constant = std <= CONSTANT_FEATURE_STD
    return mean.astype(np.float32), np.where(constant, 1.0, std).astype(np.float32), constant


def kernel_without_constant_features(constant: np.ndarray | None):
    """The first layer's kernel initializer: Glorot, with the rows of features constant in training set to 0.

    Such a feature feeds every training row the same (scaled: zero) input, so its weights get no gradient and
    keep their initial values: random, they moved the forecast of a request where the feature differs (default
    data: no training row falls on a local holiday; a forecast for one moved 0.92-1.08x). Zero, it has no effect,
    as it had none in training. None: no feature is constant (the plain Glorot draws, as before)."""
    if constant is None or not np.any(constant):
        return en.layers.glorot_uniform
    rows = np.flatnonzero(constant)

    def initializer(shape, dtype, seed):
        keep = np.ones((shape[0], 1), np.float32)
        keep[rows] = 0.0  # the dense features come first in the layer's input
        return en.layers.glorot_uniform(shape, dtype, seed) * en.constant(keep)
    return initializer


class Forecaster:
    """The model's layers: one Embedding per categorical field, Dense hidden layers, a Dense output.

    Variables are created (seeded initializers) on the first call, in the default graph.
    """

    def __init__(self, config: ModelConfig, seed: int):
        self.config = config
        self.embeddings = {f: en.layers.Embedding(config.vocab_sizes[f], config.embedding_dims[f], seed=seed + i,
                                                  name=f"embedding_{f}")
                           for i, f in enumerate(CATEGORICAL_FIELDS)}
        base = seed + len(CATEGORICAL_FIELDS)
        first = kernel_without_constant_features(config.dense_constant)  # the layer the scaled features enter
        self.hidden = [en.layers.Dense(units, activation="relu", seed=base + i, name=f"dense_{i}",
                                       kernel_initializer=first if i == 0 else en.layers.glorot_uniform)
                       for i, units in enumerate(config.hidden_units)]
        last = len(config.hidden_units)
        self.output = en.layers.Dense(1, seed=base + last, name=f"dense_{last}",
                                      kernel_initializer=en.layers.glorot_uniform if self.hidden else first)

    def __call__(self, dense, categorical: Mapping[str, object]):
        """log1p(units) of a batch: ``dense`` [N, F] raw features, ``categorical`` one [N] id tensor per field."""
        config = self.config
        scaled = (dense - en.constant(config.dense_mean)) / en.constant(config.dense_std)
        embedded = [self.embeddings[f](categorical[f]) for f in CATEGORICAL_FIELDS]
        if config.kind == "linear":
            out = self.output(scaled) + en.add_n(embedded)
        else:
            hidden = en.concat([scaled] + embedded, axis=1)
            for layer in self.hidden:
                hidden = layer(hidden)
            out = self.output(hidden)
        return en.reshape(out + en.constant(np.float32(config.output_bias)), (-1,), name=LOG1P_OUTPUT)

    @property
    def variables(self) -> list:
        layers = list(self.embeddings.values()) + self.hidden + [self.output]
        return [v for layer in layers for v in layer.variables]


@dataclass
class ModelTensors:
    dense: object
    categorical: dict[str, object]
    log1p: object
    prediction: object
    expected: object
    variables: dict[str, object]  # by variable name (the keys of TrainingResult.weights)


def build(config: ModelConfig, seed: int, expected_factor: float = 1.0) -> ModelTensors:
    """The model on the default graph, its inputs and outputs (named as the bundle's graph names them)."""
    dense = en.placeholder(en.float32, shape=(None, config.dense_size), name=DENSE_INPUT)
    cats = {f: en.placeholder(en.int32, shape=(None,), name=f"{CATEGORICAL_INPUT}_{f}") for f in CATEGORICAL_FIELDS}
    model = Forecaster(config, seed)
    log1p = model(dense, cats)
    # clipped at 0 (no negative sales) and at e^25 units, so float32 never overflows to inf
    prediction = en.expm1(en.minimum(en.maximum(log1p, 0.0), MAX_LOG1P), name=PREDICTION_OUTPUT)
    expected = en.maximum(en.constant(np.float32(expected_factor)) * (prediction + 1.0) - 1.0, 0.0,
                          name=EXPECTED_OUTPUT)
    return ModelTensors(dense=dense, categorical=cats, log1p=log1p, prediction=prediction, expected=expected,
                        variables={v.op.name: v for v in model.variables})


def feed_for(tensors: ModelTensors, matrix: FeatureMatrix, index=None) -> dict:
    dense = matrix.dense if index is None else matrix.dense[index]
    cats = matrix.categorical if index is None else matrix.categorical[index]
    feed = {tensors.dense: dense}
    for j, name in enumerate(CATEGORICAL_FIELDS):
        feed[tensors.categorical[name]] = np.ascontiguousarray(cats[:, j])
    return feed


# --- batches ----------------------------------------------------------------------------------------

BatchSource = Callable[[int], Iterable[Mapping[str, np.ndarray]]]
"""epoch -> batches of that epoch, each {"dense" [B, F], "categorical" [B, C], "log1p" [B], "weight" [B]};
the same epoch must give the same batches (a resumed run replays the stream from its position)."""


def in_memory_batches(matrix: FeatureMatrix, units: np.ndarray, weights: np.ndarray, batch_size: int,
                      seed: int) -> BatchSource:
    """Seeded shuffled batches of in-memory examples (en.data.batches), built ahead on a thread (en.data.prefetch)."""
    arrays = {"dense": matrix.dense, "categorical": matrix.categorical,
              "log1p": np.log1p(np.asarray(units, np.float32)), "weight": np.asarray(weights, np.float32)}

    def epoch_batches(epoch: int):
        return en_data.prefetch(en_data.batches(arrays, batch_size, shuffle=True, seed=seed * 100_003 + epoch))

    return epoch_batches


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    weights: dict[str, np.ndarray]  # the best evaluation's weights, by variable name
    best_step: int
    steps_run: int
    curves: list[dict[str, float]]  # per evaluation: step, train_loss (since the last), inner_validation_nwrmsle
    resumed_at_step: int = 0  # > 0: this run continued a checkpoint written at that step
    expected_factor: float = 1.0  # expected units = factor * (prediction + 1) - 1 (set by pipeline.train.fit)


@dataclass(frozen=True)
class CheckpointIdentity:
    """What a train's checkpoints are made from, part by part: the one definition of their identity. A rerun resumes
    a checkpoint only when every part is the same (it then ends as an uninterrupted run would), and when one is not,
    says which (``differences``). ``fingerprint``, the parts' hash, is the resume key a train's MLflow run is tagged
    with (pipeline/train.py CHECKPOINT_TAG)."""

    data: Mapping[str, str]  # md5 of each input file, by its path (pipeline/versions.py data_version)
    params: Mapping[str, Any]  # every features and train param, by section ({"features": {...}, "train": {...}})
    code: str  # sha256 of the model code (versions.code_version)
    libraries: Mapping[str, str]  # Python, numpy, numba and the BLAS kernels (versions.runtime_version)
    batch_order: str  # held, streamed, or streamed from a cluster's shards (train.PreparedTraining.batch_order)
    batches_per_epoch: int  # what a state's position (epoch, batch) is counted in: it must come to the state's step

    def to_json(self) -> dict:
        """The parts as state.json records them (through JSON: tuples are lists, as a read state's are)."""
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, sort_keys=True,
                                     default=str))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """The parts in which ``recorded`` (a checkpoint's identity, as JSON) differs from this one, each as a
        message names it: ``params (train.learning_rate 0.01 -> 0.02)``, ``libraries (numpy 2.1.0 -> 2.2.1)``,
        ``code``. A value is shown only when short (a version, a param), never a digest."""
        ours = self.to_json()
        named = []
        for part in [*(f.name for f in dataclasses.fields(self)), *sorted(set(recorded) - set(ours))]:
            label = part.replace("_", " ")
            old, new = recorded.get(part, _ABSENT), ours.get(part, _ABSENT)
            if old == new:
                continue
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                named.append(f"{label} ({', '.join(mapping_changes(old, new))})")
            else:
                change = _change("", old, new)
                named.append(f"{label} ({change})" if change else label)
        return named


IDENTITY_PARTS = tuple(f.name.replace("_", " ") for f in dataclasses.fields(CheckpointIdentity))  # as messages say
IDENTITY_CHANGES_SHOWN = 3  # changed keys a part names, then "N more": the message stays one line
_SHOWN_LENGTH = 24  # a value up to this long is shown (a version, a param); a digest (32+ hex digits) is not
_ABSENT = object()


def mapping_changes(old: Mapping, new: Mapping) -> list[str]:
    """The keys in which two nested mappings differ, as a message names them: ``train.learning_rate 0.01 -> 0.02`` (a
    long value by its key alone), up to IDENTITY_CHANGES_SHOWN, then ``N more``. A checkpoint's params and libraries
    (CheckpointIdentity.differences), and promote's candidate against params.yaml (evaluate.candidate_made_from)."""
    old, new = _flat(old), _flat(new)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))
    changes = [_change(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys]
    if len(changes) > IDENTITY_CHANGES_SHOWN:
        changes[IDENTITY_CHANGES_SHOWN:] = [f"{len(changes) - IDENTITY_CHANGES_SHOWN} more"]
    return changes


def _flat(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested keys as one ``section.key`` level (params' ``train.learning_rate``)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _change(key: str, old: Any, new: Any) -> str:
    """``key old -> new`` when both values are short, else ``key`` (or "" for no key)."""
    shown = [_shown(value) for value in (old, new)]
    if any(text is None or len(text) > _SHOWN_LENGTH for text in shown):
        return key
    return f"{key} {shown[0]} -> {shown[1]}".strip()


def _shown(value: Any) -> str | None:
    if value is _ABSENT:
        return "none"
    if value == "":
        return "unset"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return None


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class CheckpointOfOtherInputs(Exception):
    """A checkpoint this train does not resume: made from other inputs, or by an older train (the message's tail
    says which, after ``the checkpoint in <dir>``)."""


class TrainingState:
    """The loop's position and early-stopping record, next to its checkpoints (what a resumed run reads)."""

    _text = ""  # the JSON this state was read from or last written as: the next evaluation keeps it as the previous

    def __init__(self, identity: CheckpointIdentity | None):
        self.identity = identity.to_json() if identity is not None else {}  # None: no checkpoints to tell apart
        self.step = 0
        self.epoch = 0
        self.batch = 0  # batches of ``epoch`` already consumed
        self.best_score = float("inf")
        self.best_step = 0
        self.evals_since_best = 0
        self.curves: list[dict[str, float]] = []
        self.last_checkpoint = ""
        self.best_checkpoint = ""
        self.checkpoint_digests: dict = {}  # checkpoint name -> its manifest's sha256 (which names its data's)

    def to_json(self) -> dict:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return {"format": STATE_FORMAT, "version": STATE_VERSION, **fields, "checksum": _state_checksum(fields)}

    def note_checkpoint(self, directory: Path, name: str) -> str:
        """Record checkpoint ``name`` (just saved) by its manifest's digest, and keep only the two the state names.

        The manifest, not only the data it names: it also says which array is which variable, and a manifest edited
        so (two names swapped) named the same data and was resumed, to another model or to NaN scores. Its digest
        covers the data's too (the manifest records it, and restore checks the data against it)."""
        self.checkpoint_digests[name] = _manifest_digest(directory / f"{name}.json")
        self.checkpoint_digests = {k: v for k, v in self.checkpoint_digests.items()
                                   if k in (name, self.last_checkpoint, self.best_checkpoint)}
        return name

    def check_checkpoint(self, directory: Path, name: str) -> None:
        """ValueError unless checkpoint ``name``'s manifest is the one this state recorded for it (not a checkpoint
        of another run written or copied under the same name, nor a manifest edited since)."""
        path = directory / f"{name}.json"
        try:
            digest = _manifest_digest(path)
        except OSError as exc:
            raise ValueError(f"{path}: unreadable checkpoint manifest ({exc})") from None
        if digest != self.checkpoint_digests.get(name):
            raise ValueError(f"{path}: not the checkpoint {directory / STATE_FILE} recorded (another run's, or "
                             "edited since)")

    @classmethod
    def read(cls, directory: Path, identity: CheckpointIdentity, name: str = STATE_FILE) -> TrainingState | None:
        """The saved state (``name``: state.json, or the one before it), or None when there is none;
        CheckpointOfOtherInputs when it belongs to other inputs (saying which parts of ``identity`` differ) or was
        written by an older train (which recorded one hash).

        ValueError naming the file and field when it is unreadable or a field is missing, of the wrong type or out
        of range (a position outside the run it records, a score that is not a finite number).
        """
        path = directory / name
        try:
            text = _read_regular(path).decode("utf-8")  # a named pipe there: refused, not waited on
            doc = json.loads(text)
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: unreadable training state ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a training state (no format {STATE_FORMAT!r})")
        recorded = doc.get("identity")
        if doc.get("version") == 1 and not isinstance(recorded, dict):  # one fingerprint, its parts not kept; a
            # train before 2026-12-04 wrote no checksum either, and its state read as "edited by hand, or damaged"
            raise CheckpointOfOtherInputs(f"predates checkpoints that record their {_joined(IDENTITY_PARTS)} "
                                          "apart (an older train wrote it)")
        fields = {k: v for k, v in doc.items() if k not in ("format", "version", "checksum")}
        if doc.get("checksum") != _state_checksum(fields):
            raise ValueError(f"{path}: its checksum does not match its fields (edited by hand, or damaged)")
        if not isinstance(recorded, dict):
            raise ValueError(f"{path}: field 'identity' is missing or not an object")
        if recorded != identity.to_json():
            raise CheckpointOfOtherInputs(f"is of other {_joined(identity.differences(recorded))}")
        state = cls(identity)
        for key, default in state.__dict__.items():
            value = doc.get(key)
            kind = float if isinstance(default, float) else type(default)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
            setattr(state, key, value)
        last_step = state.curves[-1].get("step") if state.curves and isinstance(state.curves[-1], dict) else None
        if state.step < 1 or state.step != last_step:  # a state is written at an evaluation: that evaluation's step
            raise ValueError(f"{path}: field 'step' is {state.step}, not the last evaluation's step ({last_step})")
        for key, most in (("epoch", state.step), ("batch", state.step), ("best_step", state.step),
                          ("evals_since_best", len(state.curves))):
            if not 0 <= getattr(state, key) <= most:
                raise ValueError(f"{path}: field {key!r} is {getattr(state, key)}, outside 0 .. {most}")
        per_epoch = identity.batches_per_epoch
        if state.batch > per_epoch or state.epoch * per_epoch + state.batch != state.step:
            raise ValueError(f"{path}: fields 'epoch' and 'batch' ({state.epoch}, {state.batch}) are not step "
                             f"{state.step}'s place at {per_epoch} batches an epoch")
        unimproved = state.best_step == 0 and state.best_score == math.inf  # every evaluation so far diverged
        if not ((math.isfinite(state.best_score) and state.best_score >= 0) or unimproved):
            raise ValueError(f"{path}: field 'best_score' is {state.best_score}, not a score (a finite NWRMSLE)")
        state._text = text
        return state

    @property
    def checkpoints(self) -> set[str]:
        return {self.last_checkpoint, self.best_checkpoint}

    def write(self, directory: Path) -> set[str]:
        """state.json, then the state it replaces as previous-state.json; returns the checkpoints the two name (the
        ones to keep). In that order, a kill in between leaves the state before the replaced one there, whose
        checkpoints are still on disk: only the clean-up after this write deletes them."""
        previous, text = self._text, json.dumps(self.to_json(), indent=1) + "\n"
        _write_text(directory / STATE_FILE, text)
        self._text = text
        if not previous:
            return self.checkpoints
        _write_text(directory / PREVIOUS_STATE_FILE, previous)
        doc = json.loads(previous)
        return self.checkpoints | {doc["last_checkpoint"], doc["best_checkpoint"]}


def _write_text(path: Path, text: str) -> None:
    if path.is_dir() and not path.is_symlink():  # a folder where the file should be (a hand edit): os.replace fails
        shutil.rmtree(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, a regular file, else an OSError naming it at once: a named pipe under a state's or a
    checkpoint's name hung every rerun of train in its read, waiting for a writer."""
    with open_regular_file(path) as handle:
        return handle.read()


def _manifest_digest(path: Path) -> str:
    return hashlib.sha256(_read_regular(path)).hexdigest()


def _state_checksum(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class TrainingDiverged(ValueError):
    """Adam's steps overflowed the weights (a learning rate far too high): names the param to lower."""


def train(config: ModelConfig, batches: BatchSource, val_x: FeatureMatrix, val_y: np.ndarray, val_w: np.ndarray, *,
          seed: int, max_steps: int, eval_every: int, patience: int, learning_rate: float,
          checkpoint_dir: Path | None = None, identity: CheckpointIdentity | None = None,
          on_eval: Callable[[int, dict[str, float]], None] | None = None,
          log: Callable[[str], None] | None = None,
          on_resume: Callable[[int], None] | None = None) -> TrainingResult:
    """Adam on weighted squared log1p error for up to ``max_steps`` steps; early stopping on the inner validation.

    Every ``eval_every`` steps (and at the last) the inner validation's NWRMSLE is computed; training stops
    after ``patience`` evaluations without improvement, and the best evaluation's weights are returned.
    With ``checkpoint_dir``, each evaluation is a checkpoint a rerun with the same ``identity`` resumes from;
    ``log`` gets a line when it resumes, or when it starts over from a damaged checkpoint or one of other inputs
    (naming the parts of ``identity`` that differ); ``on_resume`` gets the
    checkpoint's step as soon as it is resumed, before training goes on (a run interrupted again is linked too).
    """
    if max_steps < 1 or eval_every < 1 or patience < 1:
        raise ValueError("train: max_steps, eval_every and patience must be at least 1")
    if checkpoint_dir is not None and identity is None:
        raise ValueError("train: a checkpoint_dir needs the identity of what its checkpoints are made from")
    graph = en.Graph()
    with graph.as_default():
        en.set_random_seed(seed)
        tensors = build(config, seed)
        target = en.placeholder(en.float32, shape=(None,), name="target_log1p")
        weight = en.placeholder(en.float32, shape=(None,), name="weight")
        loss = en.reduce_sum(weight * en.square(tensors.log1p - target)) / en.reduce_sum(weight)
        train_op = en.train.AdamOptimizer(learning_rate).minimize(loss)
        init = en.global_variables_initializer()
        saver_all = en.train.Saver()  # weights, Adam's slots and step: everything the next step depends on
        saver_model = en.train.Saver(list(tensors.variables.values()))
    names = list(tensors.variables)
    fetch_vars = [tensors.variables[n] for n in names]
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    say = log if log is not None else (lambda line: None)
    feed_order = [tensors.dense, target, weight] + [tensors.categorical[name] for name in CATEGORICAL_FIELDS]
    # One BLAS thread for the loop: a batch's GEMMs (~1k rows) gain nothing from a second one, and its
    # spinning threads starve the interpreter and the prefetch thread (2 cores: 68 -> 10 ms a step).
    use_one_blas_thread()
    with en.Session(graph=graph) as sess:
        step_fn = sess.make_callable([train_op, loss], feed_order)
        resumed = _resume(sess, directory, identity, saver_model, saver_all, fetch_vars, say) if directory else None
        if resumed is None:  # initialized only here: its random streams then draw what an uninterrupted run draws
            if directory is not None:  # another run's files must not stay beside this run's (a kill between this
                clear_checkpoints(directory)  # run's first checkpoint and its state left them under that state)
            # every random stream at its seed's start: a checkpoint restored before another failed to had moved
            # them to where its session's stood (past the initializers' draws), and init drew other weights
            sess.set_random_state({})
            sess.run(init)
            state, best_values = TrainingState(identity), sess.run(fetch_vars)
        else:
            state, best_values = resumed
            if on_resume is not None:
                on_resume(state.step)
        best_weights = dict(zip(names, best_values))
        resumed_at = state.step if resumed is not None else 0
        stopped = state.step >= max_steps or state.evals_since_best >= patience
        total, weight_sum = 0.0, 0.0
        while not stopped:
            source = batches(state.epoch)
            consumed = available = 0
            try:
                for batch in source:
                    available += 1
                    if available <= state.batch:  # consumed before the checkpoint this run resumed from
                        continue
                    cats = batch["categorical"]
                    _, batch_loss = step_fn(batch["dense"], batch["log1p"], batch["weight"],
                                            *(np.ascontiguousarray(cats[:, j]) for j in range(cats.shape[1])))
                    batch_weight = float(np.sum(batch["weight"]))
                    total += float(batch_loss) * batch_weight
                    weight_sum += batch_weight
                    state.step += 1
                    state.batch += 1
                    consumed += 1
                    if state.step % eval_every and state.step < max_steps:
                        continue
                    predicted = predict_in_session(sess, tensors, val_x)
                    if not np.isfinite(predicted).all():  # NaN weights never improve: the error names the cause
                        raise TrainingDiverged(
                            f"train.learning_rate: training diverged by step {state.step} (the weights overflowed: "
                            f"the inner-validation forecasts are not finite); lower it (now {learning_rate:g})")
                    score = nwrmsle(val_y, predicted, val_w)
                    curve = {"step": state.step, "train_loss": total / max(weight_sum, 1e-12),
                             "inner_validation_nwrmsle": score}
                    total, weight_sum = 0.0, 0.0
                    state.curves.append(curve)
                    if score < state.best_score:
                        state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
                        best_weights = dict(zip(names, sess.run(fetch_vars)))
                        if directory is not None:
                            state.best_checkpoint = state.note_checkpoint(directory, Path(saver_model.save(
                                sess, str(directory / "best"), global_step=state.step)).name)
                    else:
                        state.evals_since_best += 1
                    if directory is not None:
                        state.last_checkpoint = state.note_checkpoint(directory, Path(saver_all.save(
                            sess, str(directory / "last"), global_step=state.step)).name)
                        _remove_stale(directory, state.write(directory))
                    if on_eval is not None:
                        on_eval(state.step, curve)
                    if state.evals_since_best >= patience or state.step >= max_steps:
                        stopped = True
                        break
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            if not stopped:
                if consumed == 0 and state.batch == 0:
                    raise ValueError("train: the batch source gave no batches (no training examples?)")
                if identity is not None and available != identity.batches_per_epoch:  # the caller's count is wrong:
                    # a resumed position counted in it would skip or repeat batches
                    raise ValueError(f"train: epoch {state.epoch} gave {available} batches, not the "
                                     f"{identity.batches_per_epoch} of the checkpoint identity's batches_per_epoch")
                state.epoch += 1
                state.batch = 0
    return TrainingResult(weights={k: np.array(v) for k, v in best_weights.items()}, best_step=int(state.best_step),
                          steps_run=int(state.step), curves=list(state.curves), resumed_at_step=resumed_at)


def _discard_checkpoint(directory: Path) -> None:
    clear_checkpoints(directory)


def clear_checkpoints(directory: Path) -> None:
    """Delete what the checkpoint folder holds, whatever it is (a folder where a file should be, a file where the
    folder should be), keeping the folder itself: it may be a link or a mount point on another disk.

    The states go first: a kill part way leaves checkpoints no state names (the next train starts over without a
    word, as when they are all gone), not a state naming checkpoints already deleted ('cannot be resumed')."""
    if directory.is_symlink() and not directory.exists():
        directory.unlink()  # a link to nothing
    elif directory.exists() and not directory.is_dir():
        directory.unlink()
    elif directory.is_dir():
        states = (directory / STATE_FILE, directory / PREVIOUS_STATE_FILE)
        for path in sorted(directory.iterdir(), key=lambda path: path not in states):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _resume(sess, directory: Path, identity: CheckpointIdentity, saver_model, saver_all, fetch_vars: list,
            say: Callable[[str], None]) -> tuple[TrainingState, list] | None:
    """Load the saved state and both its checkpoints into ``sess``: (state, the best evaluation's weights), or None
    to start over: no checkpoint, one of other inputs (logged, naming the parts that differ), or a damaged one
    (logged, and its files deleted) with no intact one before it.

    Checkpoints are written atomically, so damage means a disk error or a hand edit. The newest (state.json and
    the checkpoints it names) is skipped for the evaluation before it (previous-state.json's), saying why; either
    ends as an uninterrupted run would, only later.
    """
    state = None
    try:
        state = TrainingState.read(directory, identity)
        if state is None:
            return None
        best_values = _restored(sess, directory, state, saver_model, saver_all, fetch_vars)
    except CheckpointOfOtherInputs as exc:
        say(f"train: the checkpoint in {directory} {exc}; starting over")  # train() deletes its files
        return None
    except (ValueError, OSError, en.errors.OpError) as exc:
        newest = exc
    else:
        say(f"train: resuming from the checkpoint at step {state.step} in {directory}")
        return state, best_values
    try:  # the newest cannot be resumed: the evaluation before it, whose state and checkpoints were kept
        older = TrainingState.read(directory, identity, PREVIOUS_STATE_FILE)
        if older is None or (state is not None and older.step >= state.step):
            older = None  # none (a run's first evaluation), or the same one (state.json became it at a skip)
        else:
            best_values = _restored(sess, directory, older, saver_model, saver_all, fetch_vars)
    except (CheckpointOfOtherInputs, ValueError, OSError, en.errors.OpError) as exc:
        say(f"train: the checkpoint in {directory} cannot be resumed ({newest}), nor the one before it ({exc}); "
            "starting over")
        _discard_checkpoint(directory)
        return None
    if older is None:
        say(f"train: the checkpoint in {directory} cannot be resumed ({newest}); starting over")
        _discard_checkpoint(directory)
        return None
    newest_step = f"at step {state.step} " if state is not None else ""
    say(f"train: the newest checkpoint {newest_step}in {directory} cannot be resumed ({newest}); skipped for the "
        f"one before it, at step {older.step}")
    _write_text(directory / STATE_FILE, older._text)  # the newest's files go: its next checkpoint is written anew
    _remove_stale(directory, older.checkpoints)
    say(f"train: resuming from the checkpoint at step {older.step} in {directory}")
    return older, best_values


def _restored(sess, directory: Path, state: TrainingState, saver_model, saver_all, fetch_vars: list) -> list:
    """Restore ``state``'s checkpoints into ``sess`` (both checked to be the ones it recorded); the best's weights."""
    for name in (state.best_checkpoint, state.last_checkpoint):
        state.check_checkpoint(directory, name)
    saver_model.restore(sess, str(directory / state.best_checkpoint))
    best_values = sess.run(fetch_vars)
    saver_all.restore(sess, str(directory / state.last_checkpoint))
    return best_values


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Delete checkpoints neither state refers to any more (the state files were written first), the staged data
    (``<name>.npz-<digest>``, engine/saver.py) of saves a kill or a full disk cut short, and the temporary copy
    (``.tmp-<random>``) a kill mid-write left: one train at a time writes here (pipeline/train.py one_train). A
    checkpoint's name that is a folder (a hand edit) goes too: the next save of that name could not replace it."""
    for path in directory.iterdir():
        if PARTIAL_WRITE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            continue
        staged = STAGED_DATA.fullmatch(path.name)
        prefix = staged.group(1) if staged else path.name.rsplit(".", 1)[0]
        if ((staged or path.suffix in (".npz", ".json")) and path.name not in (STATE_FILE, PREVIOUS_STATE_FILE)
                and prefix not in keep):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def expected_units_factor(units: np.ndarray, predicted: np.ndarray) -> float:
    """Ratio smearing: the factor on ``prediction + 1`` that makes the forecasts sum to the actual units."""
    predicted_total = float(np.sum(np.asarray(predicted, np.float64) + 1.0))
    if predicted_total <= 0:
        return 1.0
    return float(np.sum(np.asarray(units, np.float64) + 1.0)) / predicted_total


def predict_in_session(sess, tensors: ModelTensors, matrix: FeatureMatrix, chunk: int = 65536,
                       output: str = PREDICTION_OUTPUT) -> np.ndarray:
    """Forecasts of ``matrix`` with one BLAS thread (pipeline/blas.py): backtest scores made on a Dask
    worker equal this process's (with two threads they differed in the 8th digit)."""
    fetch = tensors.expected if output == EXPECTED_OUTPUT else tensors.prediction
    use_one_blas_thread()
    parts = [sess.run(fetch, feed_dict=feed_for(tensors, matrix, slice(s, s + chunk)))
             for s in range(0, matrix.dense.shape[0], chunk)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _loaded(config: ModelConfig, weights: Mapping[str, np.ndarray], expected_factor: float):
    """(graph, tensors, session) with the model built and ``weights`` loaded into its variables."""
    graph = en.Graph()
    with graph.as_default():
        tensors = build(config, seed=0, expected_factor=expected_factor)
        init = en.global_variables_initializer()
    missing = sorted(set(tensors.variables) - set(weights))
    if missing:
        raise ValueError(f"weights: no value for variable(s) {', '.join(missing)}")
    sess = en.Session(graph=graph)
    sess.run(init)
    for name, variable in tensors.variables.items():
        variable.load(weights[name], sess)
    return graph, tensors, sess


def predict_weights(config: ModelConfig, weights: Mapping[str, np.ndarray], matrix: FeatureMatrix,
                    expected_factor: float | None = None) -> np.ndarray:
    """Forecasts of trained weights: median-like units, or with ``expected_factor`` the expected units."""
    _, tensors, sess = _loaded(config, weights, 1.0 if expected_factor is None else expected_factor)
    with sess:
        output = PREDICTION_OUTPUT if expected_factor is None else EXPECTED_OUTPUT
        return predict_in_session(sess, tensors, matrix, output=output)


def forecast_weights(config: ModelConfig, weights: Mapping[str, np.ndarray], matrix: FeatureMatrix,
                     expected_factor: float, chunk: int = 65536) -> dict[str, np.ndarray]:
    """Both forecasts of trained weights in one pass, as a bundle's ``forecast_features`` gives them: median-like
    units (``prediction``, the same bits as :func:`predict_weights`) and ``expected_units``."""
    _, tensors, sess = _loaded(config, weights, expected_factor)
    with sess:
        use_one_blas_thread()
        fetch = [tensors.prediction, tensors.expected]
        parts = [sess.run(fetch, feed_dict=feed_for(tensors, matrix, slice(s, s + chunk)))
                 for s in range(0, matrix.dense.shape[0], chunk)]
    return {name: (np.concatenate([p[k] for p in parts]).astype(np.float32) if parts else np.zeros(0, np.float32))
            for k, name in enumerate((PREDICTION_OUTPUT, EXPECTED_OUTPUT))}


def export_model(config: ModelConfig, weights: Mapping[str, np.ndarray], directory: Path,
                 expected_factor: float = 1.0) -> dict:
    """Write the frozen inference graph (graph.json + weights.npz) into ``directory``; returns its I/O names."""
    _, tensors, sess = _loaded(config, weights, expected_factor)
    inputs = {DENSE_INPUT: tensors.dense, **{f"{CATEGORICAL_INPUT}_{f}": t for f, t in tensors.categorical.items()}}
    outputs = {PREDICTION_OUTPUT: tensors.prediction, LOG1P_OUTPUT: tensors.log1p, EXPECTED_OUTPUT: tensors.expected}
    with sess:
        en.train.export_inference_graph(sess, str(directory), inputs=inputs, outputs=outputs)
    return {"inputs": sorted(inputs), "outputs": sorted(outputs)}
