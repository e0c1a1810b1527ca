"""Shared helpers for engine tests: a fresh default graph per test and the gradient checker."""

from __future__ import annotations

import numpy as np
import pytest

import engine as en


@pytest.fixture(autouse=True)
def fresh_default_graph():
    """Each test builds in its own empty default graph."""
    en.reset_default_graph()
    yield
    en.reset_default_graph()


@pytest.fixture
def moments_op(monkeypatch):
    """A probe's op of two outputs, TensorFlow's ``nn.moments`` over the last axis (mean, variance), registered in
    one ``register`` call for this test only; returns ``make(x) -> (mean, variance)``. ``grad_seen`` collects the
    gradients its gradient function is handed (what a gradient function takes: dense tensors or None)."""
    from engine import registry
    from engine.ops._util import FLOAT, quiet, sample, same_dtype
    from engine.registry import Example, simple_kernel

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def infer(inputs, attrs):
        shape = None if inputs[0].shape is None else inputs[0].shape[:-1]
        return [(same_dtype(inputs, FLOAT), shape)] * 2

    @quiet
    def kernel(x):
        mean = x.mean(axis=-1)
        return mean, ((x - mean[..., None]) ** 2).mean(axis=-1)

    def grad(op, dys):
        make.grad_seen.append(dys)
        x, (mean, _) = op.inputs[0], op.outputs
        n = en.reduce_sum(en.ones_like(x), axis=-1, keepdims=True)
        parts = [en.expand_dims(dm, -1) / n * en.ones_like(x) for dm in dys[:1] if dm is not None]
        parts += [en.expand_dims(dv, -1) * 2.0 * (x - en.expand_dims(mean, -1)) / n for dv in dys[1:] if dv is not None]
        return [en.add_n(parts)]

    registry.register("TestMoments", infer=infer, kernel=simple_kernel(kernel),
                      reference=simple_kernel(quiet(lambda x: (np.mean(x, axis=-1), np.var(x, axis=-1)))), grad=grad,
                      examples=lambda rng: [Example((sample(rng, s, t),)) for t in (np.float32, np.float64)
                                            for s in ((3, 4), (2, 3, 5))])

    def make(x):
        return tuple(en.get_default_graph().create_op("TestMoments", [en.convert_to_tensor(x)]).outputs)

    make.grad_seen = []
    return make
