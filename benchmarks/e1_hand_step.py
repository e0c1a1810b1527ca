"""E1's reachable bound: the W1 training step written by hand, beside the engine's, in one process.

E1 (BENCHMARKS.md) divides W1's useful FLOP/s by a 1024³ numpy matmul's. Its printed ceiling (the
step's nine matmuls alone) ignores everything else a step must do; this script measures what a step
that does everything can reach on this machine: the same model, batches and lazy Adam as W1, written
directly against numpy's BLAS and four Numba loops, with every fusion a person would make by hand
(the embedding rows gathered straight into the concatenation; the last layer, the loss and their
gradients in one pass; the first layer's input gradient for the embedding columns only; the bias
gradients summed inside the ReLU-gradient loops) and the engine's own Adam kernels. No dispatch, no
plan, no generality. Rounds alternate the hand step and the engine's step, 1024³ matmul beside them,
so both see the same minutes of a machine whose speed drifts.

The hand step's losses are checked against the engine's first (same start, same batches): it is the
same computation, or the script stops (exit 2).

    python benchmarks/e1_hand_step.py [--rounds 5] [--steps 200] [--threads N] [--all-input-columns] [--split N]
        [--quick]

Both steps run in this one process with --threads for BLAS and Numba (default: the cores available, as
engine_vs_torch.py), set through threadpoolctl and numba.set_num_threads. --split N adds a third side: the same
hand step with its forward and backward on N row blocks of the batch, one Python thread each (BLAS on one thread,
the loops release the GIL), their weight gradients summed before the Adam updates: the step's own loops and copies
on every core as well as its matmuls (data parallelism, where the engine and the default hand step parallelize
each matmul alone).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading

import numpy as np

import common
import engine_vs_torch as bench

EXIT_LOSS_MISMATCH = 2
LOSS_CHECK_STEPS = 20
LOSS_RTOL = 1e-3  # float32, sums in another order: the first 20 losses agree to ~1e-6 (measured)


def _kernels():
    """The hand step's loops (compiled once, cached with the engine's kernels)."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def gather_concat(out, tables, ids, dense):
        """out[i] = [tables[0][ids[0][i]], ..., dense[i]]: each row written once."""
        for i in range(out.shape[0]):
            start = 0
            for p in range(len(tables)):
                table = tables[p]
                j = ids[p][i]
                for k in range(table.shape[1]):
                    out[i, start + k] = table[j, k]
                start += table.shape[1]
            for k in range(dense.shape[1]):
                out[i, start + k] = dense[i, k]

    @njit(cache=True, nogil=True, error_model="numpy")
    def bias_relu(h, b):
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):
                x = h[i, j] + b[j]
                h[i, j] = x if x > 0 else np.float32(0)

    @njit(cache=True, nogil=True, error_model="numpy")
    def head(h, w, b, y, g, dw, db_hidden, n=0):
        """Last layer (one output), mean squared error, and the gradients: into ``g`` (masked by the
        hidden ReLU), ``dw``, ``db_hidden`` (the hidden bias); returns (loss, the output bias's gradient).
        ``n``: the batch's rows where ``h`` holds a block of them (0: all)."""
        n = n or h.shape[0]
        m = h.shape[1]
        dw[:] = 0
        db_hidden[:] = 0
        loss, db = np.float32(0), np.float32(0)
        scale = np.float32(2) / np.float32(n)
        for i in range(h.shape[0]):
            out = b[0]
            for j in range(m):
                out += h[i, j] * w[j, 0]
            d = out - y[i, 0]
            loss += d * d
            gi = scale * d
            db += gi
            for j in range(m):
                dw[j, 0] += h[i, j] * gi
                x = gi * w[j, 0] if h[i, j] > 0 else np.float32(0)
                g[i, j] = x
                db_hidden[j] += x
        return loss / np.float32(n), db

    @njit(cache=True, nogil=True, error_model="numpy")
    def relu_grad_sum(g, h, s):
        s[:] = 0
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                x = g[i, j] if h[i, j] > 0 else np.float32(0)
                g[i, j] = x
                s[j] += x

    return gather_concat, bias_relu, head, relu_grad_sum


class HandStep:
    """One W1 training step (forward, backward, lazy Adam) on its own copy of the weights."""

    def __init__(self, weights: dict[str, np.ndarray], all_input_columns: bool = False, split: int = 1):
        from engine.kernels import array as KA
        from engine.kernels import train as KT

        self.merge, self.adam_sparse, self.adam_dense = KA.merge_sparse_rows, KT.adam_sparse, KT.adam_dense
        self.gather_concat, self.bias_relu, self.head, self.relu_grad_sum = _kernels()
        self.w = {k: v.copy() for k, v in weights.items()}
        self.m = {k: np.zeros_like(v) for k, v in weights.items()}
        self.v = {k: np.zeros_like(v) for k, v in weights.items()}
        self.grad = grad = {k: np.empty_like(v) for k, v in weights.items()}
        rows, (h1, h2, _) = bench.TRAIN_BATCH, bench.LAYER_WIDTHS
        self.embedding_width = sum(width for _, _, width in bench.EMBEDDINGS)
        # dense1's input gradient: the embedding columns only (as a person would, and the engine's narrowing), or all
        self.input_columns = bench.CONCAT_WIDTH if all_input_columns else self.embedding_width
        self.x = np.empty((rows, bench.CONCAT_WIDTH), np.float32)
        self.h1, self.g1 = np.empty((rows, h1), np.float32), np.empty((rows, h1), np.float32)
        self.h2, self.g2 = np.empty((rows, h2), np.float32), np.empty((rows, h2), np.float32)
        self.gx = np.empty((rows, self.input_columns), np.float32)
        self.scratch = {name: {} for name, _, _ in bench.EMBEDDINGS}
        self.t = 0
        # --split: block k of the batch's rows on thread k (block 0 on the caller's), into grads[k]
        self.blocks = [(k * rows // split, (k + 1) * rows // split) for k in range(split)]
        self.grads = [grad, *({k: np.empty_like(v) for k, v in grad.items() if k.startswith("dense")}
                              for _ in range(split - 1))]
        self.results: list = [None] * split
        self.batch = None
        self.go, self.done = [threading.Semaphore(0) for _ in range(split)], threading.Semaphore(0)
        for k in range(1, split):
            threading.Thread(target=self._serve, args=(k,), daemon=True, name=f"hand-step-block-{k}").start()

    def _adam_scalars(self):
        """The engine's Adam (engine/ops/training.py): bias-corrected rate, float32 scalars. Its defaults are
        written here again on purpose (the hand step uses no engine graph code); the loss check fails if they drift."""
        b1, b2 = 0.9, 0.999
        lr_t = bench.LEARNING_RATE * math.sqrt(1.0 - b2 ** self.t) / (1.0 - b1 ** self.t)
        return tuple(np.float32(s) for s in (lr_t, b1, 1.0 - b1, b2, 1.0 - b2, 1e-8))

    def _serve(self, k: int) -> None:
        while True:
            self.go[k].acquire()
            try:
                self.results[k] = self._rows(self.batch, k)
            except Exception as error:  # noqa: BLE001 raised again in the caller's thread, never lost
                self.results[k] = error
            self.done.release()

    def _rows(self, batch: bench.Batch, k: int):
        """Forward and backward on row block k: its loss share, weight gradients into grads[k], its gx rows."""
        (lo, hi), w, grad = self.blocks[k], self.w, self.grads[k]
        x, h1, h2, g1, g2 = (a[lo:hi] for a in (self.x, self.h1, self.h2, self.g1, self.g2))
        names = [name for name, _, _ in bench.EMBEDDINGS]
        self.gather_concat(x, tuple(w[f"{n}_embedding"] for n in names), tuple(i[lo:hi] for i in batch.inputs()[:3]),
                           batch.dense[lo:hi])
        np.matmul(x, w["dense1_kernel"], out=h1)
        self.bias_relu(h1, w["dense1_bias"])
        np.matmul(h1, w["dense2_kernel"], out=h2)
        self.bias_relu(h2, w["dense2_bias"])
        loss, grad["dense3_bias"][0] = self.head(h2, w["dense3_kernel"], w["dense3_bias"], batch.target[lo:hi], g2,
                                                 grad["dense3_kernel"], grad["dense2_bias"], len(self.x))
        np.matmul(g2, w["dense2_kernel"].T, out=g1)
        np.matmul(h1.T, g2, out=grad["dense2_kernel"])
        self.relu_grad_sum(g1, h1, grad["dense1_bias"])
        np.matmul(g1, w["dense1_kernel"][:self.input_columns].T, out=self.gx[lo:hi])
        np.matmul(x.T, g1, out=grad["dense1_kernel"])
        return loss

    def __call__(self, batch: bench.Batch) -> float:
        w, grad = self.w, self.grad
        self.batch = batch
        for k in range(1, len(self.blocks)):
            self.go[k].release()
        loss = self._rows(batch, 0)
        for k in range(1, len(self.blocks)):
            self.done.acquire()
        for part in self.results[1:]:
            if isinstance(part, Exception):
                raise part
            loss += part
        for part in self.grads[1:]:
            for key, value in part.items():
                np.add(grad[key], value, out=grad[key])
        self.t += 1
        scalars = self._adam_scalars()
        start = 0
        for (name, _, width), ids in zip(bench.EMBEDDINGS, batch.inputs()):
            key = f"{name}_embedding"
            rows, values = self.merge(self.gx[:, start:start + width], ids, w[key].shape[0], self.scratch[name])
            self.adam_sparse(w[key], self.m[key], self.v[key], values, rows, *scalars)
            start += width
        for index in range(1, len(bench.LAYER_WIDTHS) + 1):
            for key in (f"dense{index}_kernel", f"dense{index}_bias"):
                self.adam_dense(w[key].reshape(-1), self.m[key].reshape(-1), self.v[key].reshape(-1),
                                grad[key].reshape(-1), *scalars)
        return float(loss)


def check_losses(hand: HandStep, engine, batches) -> list[str]:
    """The first LOSS_CHECK_STEPS losses of each, side by side; raises SystemExit(2) when they differ."""
    lines, worst = [], 0.0
    for k in range(LOSS_CHECK_STEPS):
        batch = batches[k % len(batches)]
        a, b = hand(batch), engine.train_step(batch)
        worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
        if k in (0, 1, 4, LOSS_CHECK_STEPS - 1):
            lines.append(f"  step {k + 1:3d}: hand {a:.6f}  engine {b:.6f}")
    lines.append(f"  largest relative difference over {LOSS_CHECK_STEPS} steps: {worst:.1e} (allowed {LOSS_RTOL:g})")
    if worst > LOSS_RTOL:
        print("\n".join(["loss check FAILED: the hand step is not the engine's computation"] + lines))
        raise SystemExit(EXIT_LOSS_MISMATCH)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (median over them)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per side per round")
    parser.add_argument("--threads", type=int, default=common.available_cores(),
                        help="BLAS and Numba threads (default: the cores available, as engine_vs_torch.py)")
    parser.add_argument("--quick", action="store_true", help="1 round of 5 steps (a smoke run)")
    parser.add_argument("--all-input-columns", action="store_true",
                        help="the hand step computes dense1's input gradient for all 64 columns (as the engine did "
                             "before its narrowing pass)")
    parser.add_argument("--split", type=int, default=1, metavar="N",
                        help="also time the hand step on N row blocks, one thread each, BLAS on one thread (default 1: "
                             "no third side)")
    args = parser.parse_args(argv)
    common.refuse_counts_below_one(parser, (("--threads", args.threads), ("--rounds", args.rounds),
                                            ("--steps", args.steps)))
    if not 1 <= args.split <= bench.TRAIN_BATCH:
        parser.error(f"--split must be 1 to {bench.TRAIN_BATCH}")
    weights = bench.initial_weights(0)
    engine, hand = bench.build_engine_model(weights), HandStep(weights, args.all_input_columns)
    split = HandStep(weights, args.all_input_columns, args.split) if args.split > 1 else None
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(args.threads):  # every BLAS and OpenMP pool loaded by now (both steps are built)
        return _measure(args, engine, hand, split)


def _measure(args, engine, hand: HandStep, split: HandStep | None = None) -> int:
    from threadpoolctl import threadpool_limits

    rounds, steps = (1, 5) if args.quick else (args.rounds, args.steps)
    settings = bench.Settings.for_run(args.quick)
    batches = bench.workload_data(0).training
    loss_lines = check_losses(hand, engine, batches)
    if split is not None:
        with threadpool_limits(1, user_api="blas"):
            split_lines = check_losses(split, bench.build_engine_model(bench.initial_weights(0)), batches)
        loss_lines.append(f"  split into {args.split} row blocks:{split_lines[-1].split(' steps:')[1]}")
    flops_per_step = bench.TRAIN_BATCH * bench.training_flops_per_row()
    hand_s, engine_s, split_s, matmul = [], [], [], []
    sides = [(hand, hand_s, args.threads), (engine.train_step, engine_s, args.threads)]
    sides += [(split, split_s, 1)] if split is not None else []
    for r in range(rounds):
        for side, times, blas_threads in sides:
            with threadpool_limits(blas_threads, user_api="blas"):
                seconds = common.time_loop(lambda k, side=side: side(batches[k % len(batches)]), steps, warmup=5)
            times.append(seconds / steps)
        matmul.append(bench.numpy_matmul_flops(settings))
        print(f"round {r + 1}/{rounds}: hand {hand_s[-1] * 1e3:.3f} ms, engine {engine_s[-1] * 1e3:.3f} ms"
              + (f", split {split_s[-1] * 1e3:.3f} ms" if split_s else "")
              + f" per step; 1024³ matmul {matmul[-1] / 1e9:.0f} GFLOP/s", flush=True)
    e1 = {name: [flops_per_step / s / f for s, f in zip(times, matmul)]
          for name, times in (("hand", hand_s), ("engine", engine_s), ("split", split_s))}
    print("loss check (same start, same batches):")
    print("\n".join(loss_lines))
    import numba
    from threadpoolctl import threadpool_info

    numpy_blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"
                  and f"{os.sep}numpy" in p.get("filepath", "")]  # the BLAS both steps call (np.matmul)
    print(f"threads: numpy's BLAS {numpy_blas}, Numba {numba.get_num_threads()}")
    if split_s:
        ratios = ", ".join(f"{s / h:.2f}" for s, h in zip(split_s, hand_s))
        print(f"hand step on {args.split} row blocks, {args.split} threads, BLAS on 1 each: "
              f"{common.median(split_s) * 1e3:.3f} ms -> E1 {common.median(e1['split']):.3f} "
              f"({common.median(split_s) / common.median(hand_s):.2f}x the hand step's time; per round {ratios})")
    print(f"E1 reachable here: hand step {common.median(hand_s) * 1e3:.3f} ms -> E1 {common.median(e1['hand']):.3f}; "
          f"engine {common.median(engine_s) * 1e3:.3f} ms -> E1 {common.median(e1['engine']):.3f} "
          f"(medians of {rounds} round(s); the engine takes {common.median(engine_s) / common.median(hand_s):.2f}x "
          f"the hand step's time)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a traceback from inside a round before
        print("e1_hand_step: interrupted (Ctrl-C); no figures", file=sys.stderr)
        sys.exit(130)
