"""Shelfcast's engine against PyTorch (CPU) on BENCHMARKS.md's workloads W1–W4 and E1.

    .venv/bin/python benchmarks/engine_vs_torch.py            # full run, human table
    .venv/bin/python benchmarks/engine_vs_torch.py --json     # one JSON object per workload per line
    .venv/bin/python benchmarks/engine_vs_torch.py --quick --only W1,W2
    .venv/bin/python benchmarks/engine_vs_torch.py --profile  # where the engine's W1 step spends its time

Why subprocesses: thread-pool sizes (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS) are read once, when numba / numpy / torch load, so each side
runs in its own fresh process (this script re-invoked with --side) whose
environment pins every pool to --threads. W4 (fresh process to first
training step) is then just one more such process, timed from its start.

Both sides train the same model from the same initial weights (numpy, seed 0)
on the same batches, so their losses are comparable; the run prints both and
exits with status 2 when the first step's losses differ (then the two sides
did not compute the same thing and the ratios mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

import common

WORKLOAD_IDS = ("W1", "W2", "W3", "W4", "E1")
SIDES = ("engine", "torch")
TORCH_VERSION_HINT = ".venv/bin/pip install torch==2.13.0  (the `bench` extra: a CPU build)"
EXIT_LOSS_MISMATCH = 2
EXIT_SIDE_UNAVAILABLE = 3

# ---------------------------------------------------------------------------
# The reference model (BENCHMARKS.md): shared by both sides, numpy only
# ---------------------------------------------------------------------------

EMBEDDINGS = (  # (input name, vocabulary size, embedding width)
    ("store", 54, 8),
    ("item", 4_100, 32),
    ("family", 33, 4),
)
DENSE_FEATURES = 20
CONCAT_WIDTH = sum(width for _, _, width in EMBEDDINGS) + DENSE_FEATURES  # 64
LAYER_WIDTHS = (256, 128, 1)  # Dense 256 ReLU -> Dense 128 ReLU -> Dense 1
LEARNING_RATE = 1e-3
TRAIN_BATCH = 1_024
BULK_BATCH = 10_000
MATMUL_N = 1_024
TRAIN_BATCH_POOL = 8  # distinct training batches, cycled in the same order on both sides
LATENCY_ROW_POOL = 64  # distinct single rows, cycled, for W2


def layer_shapes() -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each Dense layer."""
    widths = (CONCAT_WIDTH, *LAYER_WIDTHS)
    return list(zip(widths[:-1], widths[1:]))


def forward_matmul_flops_per_row() -> int:
    """2·Σ fan_in·fan_out: the multiply-adds of the three Dense layers for one row (98,560)."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in layer_shapes())


def training_flops_per_row() -> int:
    """Useful FLOPs of one training row: forward matmuls + backward (dX and dW, each as big) = 3x."""
    return 3 * forward_matmul_flops_per_row()


def initial_weights(seed: int) -> dict[str, np.ndarray]:
    """The model's starting point, float32, generated once so both sides start identical.

    Embeddings ~ U(-0.05, 0.05) (Keras' default); kernels Glorot-uniform in
    (fan_in, fan_out) layout (x @ W); biases small and non-zero, so a side that
    forgot to load them would be caught by the forward-pass check.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    weights: dict[str, np.ndarray] = {}
    for name, vocabulary, width in EMBEDDINGS:
        weights[f"{name}_embedding"] = rng.uniform(-0.05, 0.05, (vocabulary, width)).astype(np.float32)
    for index, (fan_in, fan_out) in enumerate(layer_shapes(), start=1):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights[f"dense{index}_kernel"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        weights[f"dense{index}_bias"] = rng.uniform(-0.05, 0.05, (fan_out,)).astype(np.float32)
    return weights


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of model inputs (ids int64, features float32) and its regression target."""

    store: np.ndarray
    item: np.ndarray
    family: np.ndarray
    dense: np.ndarray
    target: np.ndarray

    def inputs(self) -> tuple[np.ndarray, ...]:
        return self.store, self.item, self.family, self.dense

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (*self.inputs(), self.target)

    def row(self, index: int) -> "Batch":
        pick = slice(index, index + 1)
        return Batch(*(array[pick] for array in self.arrays()))


def random_batch(rng: np.random.Generator, rows: int) -> Batch:
    """Random inputs with a learnable target (a per-item effect plus a linear term), so loss falls."""
    store = rng.integers(0, EMBEDDINGS[0][1], rows, dtype=np.int64)
    item = rng.integers(0, EMBEDDINGS[1][1], rows, dtype=np.int64)
    family = rng.integers(0, EMBEDDINGS[2][1], rows, dtype=np.int64)
    dense = rng.standard_normal((rows, DENSE_FEATURES), dtype=np.float32)
    item_effect = np.sin(item.astype(np.float32) * 0.37)
    target = 0.3 * dense[:, :5].sum(axis=1) + item_effect + 0.1 * rng.standard_normal(rows, dtype=np.float32)
    return Batch(store, item, family, dense, target.astype(np.float32).reshape(rows, 1))


@dataclasses.dataclass(frozen=True)
class Workload:
    """Every input both sides see: training batches, W2's single rows, W3's big batch."""

    training: list[Batch]
    latency_rows: list[Batch]
    bulk: Batch


def workload_data(seed: int) -> Workload:
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    training = [random_batch(rng, TRAIN_BATCH) for _ in range(TRAIN_BATCH_POOL)]
    rows = random_batch(rng, LATENCY_ROW_POOL)
    return Workload(training, [rows.row(i) for i in range(LATENCY_ROW_POOL)], random_batch(rng, BULK_BATCH))


def reference_forward(weights: dict[str, np.ndarray], batch: Batch) -> np.ndarray:
    """The model's prediction in plain numpy: the yardstick both sides are checked against."""
    parts = [weights[f"{name}_embedding"][ids] for (name, _, _), ids in zip(EMBEDDINGS, batch.inputs())]
    hidden = np.concatenate([*parts, batch.dense], axis=1)
    last = len(LAYER_WIDTHS)
    for index in range(1, last + 1):
        hidden = hidden @ weights[f"dense{index}_kernel"] + weights[f"dense{index}_bias"]
        if index < last:
            hidden = np.maximum(hidden, 0.0)
    return hidden


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much of each workload to run (BENCHMARKS.md's counts, or a few for --quick)."""

    warmup_steps: int = 20
    timed_steps: int = 200
    latency_warmup: int = 200
    latency_calls: int = 2_000
    bulk_warmup: int = 3
    bulk_calls: int = 30
    matmul_warmup: int = 3
    matmul_calls: int = 30

    @classmethod
    def for_run(cls, quick: bool) -> "Settings":
        if not quick:
            return cls()
        return cls(warmup_steps=2, timed_steps=5, latency_warmup=10, latency_calls=50,
                   bulk_warmup=1, bulk_calls=2, matmul_warmup=1, matmul_calls=3)


def numpy_matmul_flops(settings: Settings) -> float:
    """FLOP/s of a float32 1024³ numpy matmul (BLAS, this process's threads): E1's yardstick."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    out = np.empty((MATMUL_N, MATMUL_N), dtype=np.float32)
    times = common.time_calls(lambda _: np.matmul(a, b, out=out), settings.matmul_calls, settings.matmul_warmup)
    return 2.0 * MATMUL_N**3 / common.median(times)


def step_matmul_flops(settings: Settings) -> float:
    """Useful FLOP/s of the nine matmuls of one W1 step alone (numpy, their shapes and layouts: x @ W,
    g @ W.T, x.T @ g per Dense layer): the E1 a step would reach if nothing but its matmuls took time."""
    rng = np.random.default_rng(1)
    products = []
    for fan_in, fan_out in layer_shapes():
        x = rng.standard_normal((TRAIN_BATCH, fan_in), dtype=np.float32)
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        g = rng.standard_normal((TRAIN_BATCH, fan_out), dtype=np.float32)
        products += [(x, w), (g, w.T), (x.T, g)]

    def step(_):
        for a, b in products:
            np.matmul(a, b)

    times = common.time_calls(step, settings.matmul_calls, settings.matmul_warmup)
    return TRAIN_BATCH * training_flops_per_row() / common.median(times)


# ---------------------------------------------------------------------------
# A side: what each measured process does
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class SideModel:
    """A built model on one side, reduced to the three callables the workloads time."""

    train_step: Callable[[Batch], float]  # one optimizer step; returns the batch's loss before the update
    predict: Callable[[tuple[np.ndarray, ...]], Any]  # prepared inputs -> predictions
    prepare: Callable[[Batch], tuple]  # numpy batch -> the side's native inputs (done outside timing)
    to_numpy: Callable[[Any], np.ndarray]
    notes: dict[str, Any]
    profile: Callable[[Batch, int], str] | None = None  # per-op table of a training step over N runs (engine)


def measure_side(model: SideModel, data: Workload, settings: Settings, workloads: Sequence[str]) -> dict:
    """Run the selected workloads on one side's model; figures only, no ratios."""
    figures: dict[str, Any] = {}
    if "W1" in workloads:
        batches = data.training
        losses: list[float] = []

        def train(k: int) -> None:
            losses.append(model.train_step(batches[k % len(batches)]))

        seconds = common.time_loop(train, settings.timed_steps, settings.warmup_steps)
        figures["W1"] = {
            "samples_per_s": settings.timed_steps * TRAIN_BATCH / seconds,
            "seconds": seconds, "steps": settings.timed_steps, "batch": TRAIN_BATCH,
            "losses": losses,
        }
        figures["matmul_flops"] = numpy_matmul_flops(settings)
        figures["step_matmul_flops"] = step_matmul_flops(settings)
    if "W2" in workloads:
        rows = [model.prepare(row) for row in data.latency_rows]
        times = common.time_calls(lambda k: model.predict(rows[k % len(rows)]),
                                  settings.latency_calls, settings.latency_warmup)
        figures["W2"] = {"median_s": common.median(times), "p90_s": common.percentile(times, 90),
                         "calls": settings.latency_calls}
    if "W3" in workloads:
        bulk = model.prepare(data.bulk)
        seconds = common.time_loop(lambda _: model.predict(bulk), settings.bulk_calls, settings.bulk_warmup)
        figures["W3"] = {"rows_per_s": settings.bulk_calls * BULK_BATCH / seconds,
                         "seconds": seconds, "calls": settings.bulk_calls, "batch": BULK_BATCH}
    return figures


# ----- the engine side ------------------------------------------------------


def import_engine():
    """The engine's public API, or a clear error saying it is not importable (yet)."""
    try:
        import engine as en

        missing = [name for name in ("Session", "placeholder", "Variable", "train") if not hasattr(en, name)]
    except Exception as error:  # noqa: BLE001  (an engine mid-construction can fail in many ways: report, don't crash)
        raise SideUnavailable(f"the engine's public API is not importable: {type(error).__name__}: {error}")
    if missing:
        raise SideUnavailable(f"the engine's public API lacks {', '.join('en.' + m for m in missing)}")
    return en


class SideUnavailable(RuntimeError):
    """A side cannot run here (engine not built yet, PyTorch not installed); ``side``: which, when known."""

    def __init__(self, message: str, side: str | None = None):
        super().__init__(message)
        self.side = side


def _engine_layers_usable(en) -> bool:
    layers = getattr(en, "layers", None)
    return layers is not None and hasattr(layers, "Dense") and hasattr(layers, "Embedding")


def _engine_forward_with_layers(en, ids, dense):
    """Forward pass from en.layers; returns (prediction, [(variable, weight name)]) to load weights into."""
    to_load = []
    parts = []
    for (name, vocabulary, width), id_tensor in zip(EMBEDDINGS, ids):
        layer = en.layers.Embedding(vocabulary, width, name=f"{name}_embedding")
        parts.append(layer(id_tensor))
        to_load.append((layer.embeddings, f"{name}_embedding"))
    hidden = en.concat([*parts, dense], 1)
    for index, width in enumerate(LAYER_WIDTHS, start=1):
        activation = en.relu if index < len(LAYER_WIDTHS) else None
        layer = en.layers.Dense(width, activation=activation, name=f"dense{index}")
        hidden = layer(hidden)
        to_load += [(layer.kernel, f"dense{index}_kernel"), (layer.bias, f"dense{index}_bias")]
    return hidden, to_load


def _engine_forward_with_variables(en, weights, ids, dense):
    """Forward pass from en.Variable / en.gather / en.matmul, initialised with our weights."""
    parts = []
    for (name, _, _), id_tensor in zip(EMBEDDINGS, ids):
        table = en.Variable(weights[f"{name}_embedding"], name=f"{name}_embedding")
        parts.append(en.gather(table, id_tensor))
    hidden = en.concat([*parts, dense], 1)
    for index in range(1, len(LAYER_WIDTHS) + 1):
        kernel = en.Variable(weights[f"dense{index}_kernel"], name=f"dense{index}_kernel")
        bias = en.Variable(weights[f"dense{index}_bias"], name=f"dense{index}_bias")
        hidden = en.matmul(hidden, kernel) + bias
        if index < len(LAYER_WIDTHS):
            hidden = en.relu(hidden)
    return hidden


def _engine_callable(sess, fetches, feed_list):
    """The engine's hot path: Session.make_callable (issue 3) where it exists, else Session.run."""
    if hasattr(sess, "make_callable"):
        return sess.make_callable(fetches, feed_list), "make_callable"
    return (lambda *values: sess.run(fetches, feed_dict=dict(zip(feed_list, values)))), "run"


def build_engine_model(weights: dict[str, np.ndarray], build: str = "auto") -> SideModel:
    """The reference model in the engine's TF-1.x API: placeholders, embeddings, Dense, MSE, Adam."""
    en = import_engine()
    use_layers = build == "layers" or (build == "auto" and _engine_layers_usable(en))
    graph = en.Graph()
    with graph.as_default():
        ids = [en.placeholder(en.int64, shape=(None,), name=name) for name, _, _ in EMBEDDINGS]
        dense = en.placeholder(en.float32, shape=(None, DENSE_FEATURES), name="dense")
        target = en.placeholder(en.float32, shape=(None, 1), name="target")
        to_load = []
        if use_layers:
            try:
                prediction, to_load = _engine_forward_with_layers(en, ids, dense)
            except (AttributeError, TypeError) as error:  # layers without the TF/Keras attribute names
                if build == "layers":
                    raise
                print(f"engine: en.layers unusable here ({error}); building with en.Variable", file=sys.stderr)
                use_layers = False
        if not use_layers:
            prediction = _engine_forward_with_variables(en, weights, ids, dense)
        loss = en.reduce_mean(en.square(prediction - target))
        train_op = en.train.AdamOptimizer(LEARNING_RATE).minimize(loss)
        initialize = en.global_variables_initializer()
        loads_directly = all(hasattr(variable, "load") for variable, _ in to_load)
        load_ops = [] if loads_directly else [variable.assign(weights[name]) for variable, name in to_load]
    sess = en.Session(graph=graph)
    sess.run(initialize)
    if loads_directly:  # TF-1's Variable.load(value, session): no constant copies in the graph
        for variable, name in to_load:
            variable.load(weights[name], sess)
    elif load_ops:
        sess.run(load_ops)
    feeds = [*ids, dense]
    step, hot_path = _engine_callable(sess, [loss, train_op], [*feeds, target])
    # The serving path: small batches run as one compiled function, large ones through the BLAS plan.
    predict = en.compiler.compile_callable(sess, prediction, feeds)

    def profile(b: Batch, runs: int) -> str:
        feed = dict(zip([*feeds, target], (b.store, b.item, b.family, b.dense, b.target)))
        return en.profiler.profile(sess, [loss, train_op], feed, runs=runs).table()

    return SideModel(
        train_step=lambda b: float(step(b.store, b.item, b.family, b.dense, b.target)[0]),
        predict=lambda inputs: predict(*inputs),
        prepare=lambda b: b.inputs(),
        to_numpy=np.asarray,
        notes={"build": "en.layers" if use_layers else "en.Variable", "hot_path": hot_path},
        profile=profile,
    )


# ----- the PyTorch side -----------------------------------------------------


def import_torch(threads: int):
    try:
        import torch
    except ImportError as error:
        raise SideUnavailable(f"PyTorch is not installed ({error}); install it with {TORCH_VERSION_HINT}")
    torch.set_num_threads(threads)
    return torch


def build_torch_model(weights: dict[str, np.ndarray], threads: int, adam: str = "fused") -> SideModel:
    """The reference model as idiomatic eager PyTorch (nn.Embedding, nn.Linear, F.mse_loss, Adam)."""
    torch = import_torch(threads)
    nn, functional = torch.nn, torch.nn.functional

    class ReferenceMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.ModuleList(
                nn.Embedding.from_pretrained(torch.tensor(weights[f"{name}_embedding"]), freeze=False,
                                             sparse=adam == "lazy")
                for name, _, _ in EMBEDDINGS
            )
            self.dense_layers = nn.ModuleList()
            for index, (fan_in, fan_out) in enumerate(layer_shapes(), start=1):
                layer = nn.Linear(fan_in, fan_out)
                with torch.no_grad():  # our kernels are (in, out); nn.Linear keeps (out, in)
                    layer.weight.copy_(torch.tensor(weights[f"dense{index}_kernel"].T))
                    layer.bias.copy_(torch.tensor(weights[f"dense{index}_bias"]))
                self.dense_layers.append(layer)

        def forward(self, store, item, family, dense):
            parts = [table(ids) for table, ids in zip(self.embeddings, (store, item, family))]
            hidden = torch.cat([*parts, dense], dim=1)
            for layer in self.dense_layers[:-1]:
                hidden = functional.relu(layer(hidden))
            return self.dense_layers[-1](hidden)

    model = ReferenceMLP()
    if adam == "lazy":  # the engine's rule (TF's): embedding rows a batch does not touch stay put
        optimizer = _TorchOptimizers([
            torch.optim.SparseAdam(list(model.embeddings.parameters()), lr=LEARNING_RATE),
            torch.optim.Adam(model.dense_layers.parameters(), lr=LEARNING_RATE, fused=True)])
    else:
        flavour = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam]
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, **flavour)
    tensors = {}  # numpy batch -> torch tensors, converted once (outside timing; zero-copy)

    def as_tensors(batch: Batch) -> tuple:
        key = id(batch)
        if key not in tensors:
            tensors[key] = (batch, tuple(torch.from_numpy(a) for a in batch.arrays()))
        return tensors[key][1]

    def train_step(batch: Batch) -> float:
        *inputs, target = as_tensors(batch)
        optimizer.zero_grad(set_to_none=True)
        loss = functional.mse_loss(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss.item()

    def predict(inputs: tuple):
        with torch.inference_mode():
            return model(*inputs)

    return SideModel(
        train_step=train_step,
        predict=predict,
        prepare=lambda b: tuple(torch.from_numpy(a) for a in b.inputs()),
        to_numpy=lambda t: t.detach().numpy(),
        notes={"torch": torch.__version__, "adam": adam, "mode": "eager"},
    )


class _TorchOptimizers:
    """Several torch optimizers stepped as one (SparseAdam for embeddings + Adam for the rest)."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        for optimizer in self.optimizers:
            optimizer.step()


def build_side_model(side: str, weights, args) -> SideModel:
    if side == "engine":
        return build_engine_model(weights, args.engine_build)
    return build_torch_model(weights, args.threads, args.torch_adam)


def side_main(args) -> int:
    """A measured child: build one side, run the asked workloads, print one JSON line."""
    workloads = common.parse_id_list(args.workloads, WORKLOAD_IDS, "--workloads")
    settings = Settings.for_run(args.quick)
    started = time.time()
    try:
        weights = initial_weights(args.seed)
        data = workload_data(args.seed)
        model = build_side_model(args.side, weights, args)
        if args.first_step:  # W4: stop as soon as one training step is done
            loss = model.train_step(data.training[0])
            done_at = time.time()
            print(json.dumps({"side": args.side, "first_step_done_at": done_at, "loss": loss,
                              "cache_files_written": cache_files_written(args.side, started)}))
            return 0
        if args.profile:  # the engine's W1 step, per op, after the usual warm-up
            for k in range(settings.warmup_steps):
                model.train_step(data.training[k % len(data.training)])
            print(model.profile(data.training[0], settings.timed_steps // 2))
            return 0
    except SideUnavailable as error:
        print(f"{args.side}: {error}", file=sys.stderr)
        return EXIT_SIDE_UNAVAILABLE
    check = np.abs(model.to_numpy(model.predict(model.prepare(data.bulk))) - reference_forward(weights, data.bulk))
    figures = measure_side(model, data, settings, workloads)
    figures.update(side=args.side, notes=model.notes, threads=common.thread_report(),
                   initial_max_abs_error=float(check.max()))
    print(json.dumps(figures))
    return 0


# ---------------------------------------------------------------------------
# The parent: run the sides, compare, report
# ---------------------------------------------------------------------------


def side_command(side: str, args, workloads: Sequence[str], first_step: bool = False) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--threads", str(args.threads),
               "--seed", str(args.seed), "--workloads", ",".join(workloads) or "W1",
               "--engine-build", args.engine_build, "--torch-adam", args.torch_adam]
    if args.quick:
        command.append("--quick")
    if first_step:
        command.append("--first-step")
    if args.profile:
        command.append("--profile")
    return command


def run_side(side: str, args, workloads: Sequence[str], env: dict[str, str] | None = None,
             first_step: bool = False) -> tuple[dict, common.ChildRun]:
    env = env or common.thread_env(args.threads)
    run = common.run_child(side_command(side, args, workloads, first_step), env=env, timeout_s=args.timeout)
    if run.returncode == EXIT_SIDE_UNAVAILABLE:
        reason = run.stderr.strip().splitlines()
        raise SideUnavailable(reason[-1] if reason else f"the {side} side cannot run here", side)
    if run.returncode != 0:
        raise RuntimeError(f"the {side} side failed ({' '.join(workloads)}): {run.failure_tail()}")
    return run.last_json_line(f"the {side} side"), run


def cache_files_written(side: str, since: float) -> int | None:
    """How many files of the engine's kernel cache (Numba's, and compiled plans) this process wrote (modified at or
    after ``since``): none on a warm cache, each kernel's on a cold one. What W4's two figures stand for, checked
    without comparing times (one sample of each, on a loaded machine, may come out either way); None for PyTorch."""
    if side != "engine":
        return None
    from engine import config

    return sum(1 for folder, _, files in os.walk(config.CACHE_DIR) for name in files
               if os.stat(os.path.join(folder, name)).st_mtime >= since)


def first_step_seconds(side: str, args, cache_dir: str | None = None) -> tuple[float, int | None]:
    """W4: seconds from starting a fresh process to its first training step done, and the cache files it wrote."""
    env = common.thread_env(args.threads, **({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {}))
    figures, run = run_side(side, args, ["W1"], env=env, first_step=True)
    return figures["first_step_done_at"] - run.started_at, figures.get("cache_files_written")


def measure_first_step(side: str, args) -> dict[str, tuple[float, int | None]]:
    """W4 warm (the usual Numba cache, primed first) and cold (an empty temporary cache): (seconds, files written)."""
    first_step_seconds(side, args)  # primes the warm cache (and the OS file cache) for this side
    figures = {"warm": first_step_seconds(side, args)}
    if side == "engine":
        empty_cache = tempfile.mkdtemp(prefix="shelfcast-numba-cold-")
        try:
            figures["cold"] = first_step_seconds(side, args, cache_dir=empty_cache)
        finally:
            shutil.rmtree(empty_cache, ignore_errors=True)
    else:  # PyTorch has no kernel cache to empty: its fresh-process figure stands for both
        figures["cold"] = figures["warm"]
    return figures


def median_figure(runs: list[dict], workload: str, key: str) -> float | None:
    values = [run[workload][key] for run in runs if workload in run]
    return common.median(values) if values else None


def build_results(selected: Sequence[str], runs: dict[str, list[dict]], first_steps: dict[str, dict]) -> list:
    """BENCHMARKS.md's rows from the sides' figures (median over --repeats)."""
    engine, peer = runs.get("engine", []), runs.get("torch", [])
    results: list[common.Result] = []
    if "W1" in selected:
        results.append(common.Result(
            "W1", "training, batch 1,024", "samples/s",
            median_figure(engine, "W1", "samples_per_s"), median_figure(peer, "W1", "samples_per_s"),
            common.Target(">=", 1.25)))
    if "W2" in selected:
        results.append(common.Result(
            "W2", "inference, batch 1, median latency", "s",
            median_figure(engine, "W2", "median_s"), median_figure(peer, "W2", "median_s"),
            common.Target("<=", 0.25)))
    if "W3" in selected:
        results.append(common.Result(
            "W3", "inference, batch 10,000", "rows/s",
            median_figure(engine, "W3", "rows_per_s"), median_figure(peer, "W3", "rows_per_s"),
            common.Target(">=", 1.0)))
    if "W4" in selected:
        for variant, limit in (("warm", 2.0), ("cold", 30.0)):
            ours, written = first_steps.get("engine", {}).get(variant, (None, None))
            results.append(common.Result(
                f"W4.{variant}", f"fresh process to first step, {variant} Numba cache", "s",
                ours, first_steps.get("torch", {}).get(variant, (None, None))[0],
                common.Target("<=", limit, applies_to="engine"), extra={"cache_files_written": written}))
    if "E1" in selected:
        flops_per_s = [r["W1"]["samples_per_s"] * training_flops_per_row() for r in engine if "W1" in r]
        matmul = [r["matmul_flops"] for r in engine if "matmul_flops" in r]
        torch_efficiency = [r["W1"]["samples_per_s"] * training_flops_per_row() / r["matmul_flops"]
                            for r in peer if "W1" in r]
        ceiling = [r["step_matmul_flops"] / r["matmul_flops"] for r in engine if "step_matmul_flops" in r]
        results.append(common.Result(
            "E1", "W1 useful FLOP/s ÷ numpy 1024³ matmul", "FLOP/s",
            common.median(flops_per_s) if flops_per_s else None, common.median(matmul) if matmul else None,
            common.Target(">=", 0.5),
            extra={"torch_efficiency": round(common.median(torch_efficiency), 4) if torch_efficiency else None,
                   "matmul_ceiling": round(common.median(ceiling), 4) if ceiling else None,
                   "flops_per_row": training_flops_per_row()}))
    return results


def loss_check(runs: dict[str, list[dict]]) -> tuple[bool, list[str]]:
    """Did both sides train the same model? Same first loss (no update yet), close losses after."""
    engine = next((r["W1"]["losses"] for r in runs.get("engine", []) if "W1" in r), None)
    peer = next((r["W1"]["losses"] for r in runs.get("torch", []) if "W1" in r), None)
    if not engine or not peer:
        return True, []

    def relative(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    steps = min(len(engine), len(peer))
    lines = [f"loss check (same initial weights, same batches, {steps} steps on each side):"]
    for step in sorted({1, 2, 5, 10, 20, steps} & set(range(1, steps + 1))):
        a, b = engine[step - 1], peer[step - 1]
        lines.append(f"  step {step:>4}: engine {a:.6f}  torch {b:.6f}  relative difference {relative(a, b):.2e}")
    same_start = relative(engine[0], peer[0]) <= 1e-4
    if not same_start:
        lines.append("  MISMATCH: the first losses differ, so the two sides did not compute the same model; "
                     "the ratios above are not comparable.")
    return same_start, lines


def side_notes(runs: dict[str, list[dict]], child_runs: dict[str, list[common.ChildRun]]) -> list[str]:
    lines = []
    for side, side_runs in runs.items():
        if not side_runs:
            continue
        first = side_runs[0]
        rss = max(run.peak_rss_bytes for run in child_runs[side])
        lines.append(f"{side}: {first['notes']}; threads {first['threads']}; peak RSS "
                     f"{common.format_quantity(rss, 'B')}; forward vs numpy reference: max |error| "
                     f"{first['initial_max_abs_error']:.2e}")
    return lines


def profile_main(args) -> int:
    """--profile: the engine's W1 training step per op, in a child pinned to --threads like a measured run."""
    run = common.run_child(side_command("engine", args, ["W1"]), env=common.thread_env(args.threads),
                           timeout_s=args.timeout)
    if run.returncode != 0:
        raise RuntimeError(f"the engine side failed (--profile): {run.failure_tail()}")
    print(f"engine, W1 training step (batch {TRAIN_BATCH:,}), threads {args.threads}:")
    print(run.stdout.rstrip())
    return 0


def parent_main(args) -> int:
    selected = common.parse_id_list(args.only, WORKLOAD_IDS)
    sides = common.parse_id_list(args.sides.upper(), [s.upper() for s in SIDES], "--sides")
    sides = [s.lower() for s in sides]
    measured = [w for w in ("W1", "W2", "W3") if w in selected or (w == "W1" and "E1" in selected)]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    child_runs: dict[str, list[common.ChildRun]] = {side: [] for side in sides}
    first_steps: dict[str, dict] = {}
    busy = common.busy_machine_note(args.threads)
    try:
        for _ in range(args.repeats if measured else 0):
            for side in sides:  # interleaved, so drift on a shared machine hits both sides alike
                figures, run = run_side(side, args, measured)
                runs[side].append(figures)
                child_runs[side].append(run)
        if "W4" in selected:
            for side in sides:
                first_steps[side] = measure_first_step(side, args)
    except SideUnavailable as error:
        others = [side for side in sides if side != error.side] if error.side else []
        # the side that can still run alone: without PyTorch that is the engine, not the peer
        hint = (f" (--sides {others[0]} runs {'the engine' if others[0] == 'engine' else 'the peer'} alone)"
                if others else "")
        print(f"cannot run: {error}{hint}", file=sys.stderr)
        return EXIT_SIDE_UNAVAILABLE
    results = build_results(selected, runs, first_steps)
    same_model, check_lines = loss_check(runs)
    notes = side_notes(runs, child_runs) + check_lines + ([busy] if busy else [])
    e1 = next((r for r in results if r.id == "E1"), None)
    if e1 is not None and e1.extra.get("torch_efficiency") is not None:
        notes.append(f"E1 for reference: PyTorch's W1 FLOP/s ÷ numpy matmul in its own process = "
                     f"{e1.extra['torch_efficiency']:.3g}")
    if e1 is not None and e1.extra.get("matmul_ceiling") is not None:
        notes.append(f"E1's ceiling here: the step's nine matmuls alone (numpy, same shapes) reach "
                     f"{e1.extra['matmul_ceiling']:.3g} of the 1024³ matmul's FLOP/s")
    notes.append(f"threads per side: {args.threads}; repeats: {args.repeats} (median); E1 counts "
                 f"{training_flops_per_row():,} FLOPs per training row = 3 x 2·Σ fan_in·fan_out of the Dense matmuls")
    if args.json:
        common.write_json_lines(results)
        print("\n".join(notes), file=sys.stderr)
    else:
        print(common.results_table(results, peer_name="peer"))
        print("peer: PyTorch (CPU, eager) for W1–W4; numpy float32 1024³ matmul for E1 (efficiency = ratio)")
        print("\n".join(notes))
    return 0 if same_model else EXIT_LOSS_MISMATCH


def parse_args(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated workload ids (default: all of W1,W2,W3,W4,E1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per workload per line on stdout")
    parser.add_argument("--quick", action="store_true", help="a few steps/calls only (smoke runs, not figures)")
    parser.add_argument("--threads", type=int, default=common.available_cores(),
                        help="threads for every pool on both sides (default: the cores available)")
    parser.add_argument("--sides", default="engine,torch", help="which sides to run (default: engine,torch)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, interleaved; medians reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the inputs")
    parser.add_argument("--engine-build", choices=("auto", "layers", "variables"), default="auto",
                        help="engine model from en.layers or from en.Variable (auto: layers when present)")
    parser.add_argument("--torch-adam", choices=("default", "foreach", "fused", "lazy"), default="fused",
                        help="the peer's Adam: torch.optim.Adam's default, foreach or fused (the default: its "
                             "fastest here) implementation, or lazy (SparseAdam on sparse embedding gradients: "
                             "the engine's update rule, so losses track step by step)")
    parser.add_argument("--profile", action="store_true",
                        help="print where the engine's W1 training step spends its time, per op (no peer, no ratios)")
    parser.add_argument("--timeout", type=float, default=1_800, help="seconds allowed to each side's process")
    # internal: a measured child process
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workloads", help=argparse.SUPPRESS)
    parser.add_argument("--first-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    if args.seed < 0:  # numpy's SeedSequence refused it in each side: "the engine side failed ... expected
        parser.error(f"--seed must be 0 or more, got {args.seed}")  # non-negative integer", no flag named
    if not args.timeout > 0:  # 0 or less killed every side at once: "the engine side failed ... exit status -9"
        parser.error(f"--timeout must be more than 0 seconds, got {args.timeout:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.side:
            return side_main(args)
        return profile_main(args) if args.profile else parent_main(args)
    except (ValueError, RuntimeError) as error:
        print(f"engine_vs_torch: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the measured side's session is killed by common.run_child on the way out
        print("engine_vs_torch: interrupted (Ctrl-C); the side that was running was stopped, no figures",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
