"""The forecasting models: a weekday moving-average baseline, and a linear model and an MLP built with the engine.

The engine models predict log1p(units) from the dense features (standardized
inside the graph, so the frozen graph takes raw features) and one embedding
per categorical id. Training minimizes the squared error of log1p sales
weighted 1.25 for perishable items — the competition metric, squared — and
the graph's ``prediction`` output is ``expm1(max(output, 0))``: units, never
negative. Weights are initialized by numpy from the seed in params, so the
same params and data give the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

import engine as en
from pipeline.bundle import CATEGORICAL_INPUT, DENSE_INPUT, PREDICTION_OUTPUT
from pipeline.features import CATEGORICAL_FIELDS, FeatureMatrix, FeatureRows
from pipeline.metrics import nwrmsle

LOG1P_OUTPUT = "log1p_sales"
MAX_LOG1P = 25.0


def baseline_predict(rows: FeatureRows, weeks: int) -> np.ndarray:
    """Day-of-week moving average: expm1 of the mean log1p sales on the target's weekday over the last ``weeks`` weeks."""
    sales = np.log1p(np.asarray(rows.sales, np.float64))
    w = sales.shape[1]
    if 7 * weeks > w:
        raise ValueError(f"train.baseline_weeks: {weeks} weeks need {7 * weeks} days of history, the window has {w}")
    origin = np.asarray(rows.origin_day, np.int64)
    target = origin + np.asarray(rows.horizon, np.int64)
    last_same = (w - 1) - (((origin + 3) % 7 - (target + 3) % 7) % 7)
    cols = last_same[:, None] - 7 * np.arange(weeks)[None, :]
    return np.expm1(sales[np.arange(sales.shape[0])[:, None], cols].mean(axis=1)).astype(np.float32)


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
    output_bias: float = 0.0

    def __post_init__(self):
        if self.kind == "linear":  # one weight per category value, no hidden layer
            self.embedding_dims = {f: 1 for f in CATEGORICAL_FIELDS}
            self.hidden_units = ()
        elif self.kind != "mlp":
            raise ValueError(f"train.model: must be mlp or linear, got {self.kind!r}")

    def to_json(self) -> dict:
        return {"kind": self.kind, "dense_size": self.dense_size, "vocab_sizes": self.vocab_sizes,
                "embedding_dims": self.embedding_dims, "hidden_units": list(self.hidden_units)}


def normalization(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training features (std 1 for constant features)."""
    mean = dense.mean(axis=0, dtype=np.float64)
    std = dense.std(axis=0, dtype=np.float64)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def init_weights(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Seeded initial values: Glorot-uniform kernels, small normal embeddings, zero biases."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name in CATEGORICAL_FIELDS:
        dim = config.embedding_dims[name]
        scale = 0.0 if config.kind == "linear" else 0.05
        weights[f"embedding/{name}"] = (rng.normal(0, 1, (config.vocab_sizes[name], dim)) * scale).astype(np.float32)
    width = config.dense_size + sum(config.embedding_dims.values())
    if config.kind == "linear":
        width = config.dense_size
    for i, units in enumerate(config.hidden_units + (1,)):
        limit = np.sqrt(6.0 / (width + units))
        weights[f"dense_{i}/kernel"] = rng.uniform(-limit, limit, (width, units)).astype(np.float32)
        weights[f"dense_{i}/bias"] = np.zeros(units, np.float32)
        width = units
    last = len(config.hidden_units)
    weights[f"dense_{last}/bias"] = np.full(1, config.output_bias, np.float32)
    return weights


@dataclass
class ModelTensors:
    dense: object
    categorical: dict[str, object]
    log1p: object
    prediction: object


def forward(config: ModelConfig, params: Mapping[str, object]) -> ModelTensors:
    """Build the model on the default graph; ``params`` holds a Variable or constant per weight name."""
    dense = en.placeholder(en.float32, shape=(None, config.dense_size), name=DENSE_INPUT)
    cats = {f: en.placeholder(en.int32, shape=(None,), name=f"{CATEGORICAL_INPUT}_{f}") for f in CATEGORICAL_FIELDS}
    scaled = (dense - en.constant(config.dense_mean)) / en.constant(config.dense_std)
    embedded = [en.gather(params[f"embedding/{f}"], cats[f]) for f in CATEGORICAL_FIELDS]
    last = len(config.hidden_units)
    if config.kind == "linear":
        out = en.matmul(scaled, params["dense_0/kernel"]) + params["dense_0/bias"] + en.add_n(embedded)
    else:
        hidden = en.concat([scaled] + embedded, axis=1)
        for i in range(last):
            hidden = en.relu(en.matmul(hidden, params[f"dense_{i}/kernel"]) + params[f"dense_{i}/bias"])
        out = en.matmul(hidden, params[f"dense_{last}/kernel"]) + params[f"dense_{last}/bias"]
    log1p = en.reshape(out, (-1,), name=LOG1P_OUTPUT)
    # clipped at 0 (no negative sales) and at e^25 units, so float32 never overflows to inf
    prediction = en.expm1(en.minimum(en.maximum(log1p, 0.0), MAX_LOG1P), name=PREDICTION_OUTPUT)
    return ModelTensors(dense=dense, categorical=cats, log1p=log1p, prediction=prediction)


def feed_for(tensors: ModelTensors, matrix: FeatureMatrix, index=None) -> dict:
    dense = matrix.dense if index is None else matrix.dense[index]
    cats = matrix.categorical if index is None else matrix.categorical[index]
    feed = {tensors.dense: dense}
    for j, name in enumerate(CATEGORICAL_FIELDS):
        feed[tensors.categorical[name]] = np.ascontiguousarray(cats[:, j])
    return feed


@dataclass
class TrainingResult:
    weights: dict[str, np.ndarray]
    best_epoch: int
    epochs_run: int
    curves: list[dict[str, float]]  # per epoch: train_loss, validation_nwrmsle


def train(config: ModelConfig, train_x: FeatureMatrix, train_y: np.ndarray, train_w: np.ndarray,
          val_x: FeatureMatrix, val_y: np.ndarray, val_w: np.ndarray, *, seed: int, epochs: int, patience: int,
          batch_size: int, learning_rate: float,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainingResult:
    """Adam on weighted squared log1p error; early stopping on the inner validation's NWRMSLE.

    ``train_y``/``val_y`` are units sold; the best epoch's weights are returned.
    """
    graph = en.Graph()
    with graph.as_default():
        en.set_random_seed(seed) if hasattr(en, "set_random_seed") else None
        variables = {name: en.Variable(value, name=name.replace("/", "_")) for name, value in init_weights(config, seed).items()}
        tensors = forward(config, variables)
        target = en.placeholder(en.float32, shape=(None,), name="target_log1p")
        weight = en.placeholder(en.float32, shape=(None,), name="weight")
        loss = en.reduce_sum(weight * en.square(tensors.log1p - target)) / en.reduce_sum(weight)
        train_op = en.train.AdamOptimizer(learning_rate).minimize(loss)
        init = en.global_variables_initializer()
    names = list(variables)
    fetch_vars = [variables[n] for n in names]
    log_y = np.log1p(np.asarray(train_y, np.float32))
    train_w = np.asarray(train_w, np.float32)
    rng = np.random.default_rng(seed)
    curves: list[dict[str, float]] = []
    best = (np.inf, -1, None)
    with en.Session(graph=graph) as sess:
        sess.run(init)
        for epoch in range(epochs):
            order = rng.permutation(train_y.shape[0])
            total, weight_sum = 0.0, 0.0
            for start in range(0, order.size, batch_size):
                index = np.sort(order[start:start + batch_size])
                feed = feed_for(tensors, train_x, index)
                feed[target], feed[weight] = log_y[index], train_w[index]
                _, batch_loss = sess.run([train_op, loss], feed_dict=feed)
                total += float(batch_loss) * float(train_w[index].sum())
                weight_sum += float(train_w[index].sum())
            predicted = predict_in_session(sess, tensors, val_x)
            score = nwrmsle(val_y, predicted, val_w)
            curve = {"train_loss": total / weight_sum, "validation_nwrmsle": score}
            curves.append(curve)
            if on_epoch is not None:
                on_epoch(epoch, curve)
            if score < best[0]:
                best = (score, epoch, dict(zip(names, sess.run(fetch_vars))))
            elif epoch - best[1] >= patience:
                break
    return TrainingResult(weights={k: np.array(v) for k, v in best[2].items()}, best_epoch=best[1],
                          epochs_run=len(curves), curves=curves)


def predict_in_session(sess, tensors: ModelTensors, matrix: FeatureMatrix, chunk: int = 65536) -> np.ndarray:
    parts = [sess.run(tensors.prediction, feed_dict=feed_for(tensors, matrix, slice(s, s + chunk)))
             for s in range(0, matrix.dense.shape[0], chunk)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def export_model(config: ModelConfig, weights: Mapping[str, np.ndarray], directory: Path) -> dict:
    """Write the frozen inference graph (graph.json + weights.npz) into ``directory``; returns its I/O names."""
    from engine import saver

    graph = en.Graph()
    with graph.as_default():
        variables = {name: en.Variable(value, name=name.replace("/", "_")) for name, value in weights.items()}
        tensors = forward(config, variables)
        init = en.global_variables_initializer()
    inputs = {DENSE_INPUT: tensors.dense, **{f"{CATEGORICAL_INPUT}_{f}": t for f, t in tensors.categorical.items()}}
    outputs = {PREDICTION_OUTPUT: tensors.prediction, LOG1P_OUTPUT: tensors.log1p}
    with en.Session(graph=graph) as sess:
        sess.run(init)
        saver.export_inference_graph(sess, directory, inputs=inputs, outputs=outputs)
    return {"inputs": sorted(inputs), "outputs": sorted(outputs)}
