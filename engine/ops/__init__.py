"""Graph-building op constructors by family; importing this package registers every op."""

from engine.ops import array, control, math, nn, random, state, training  # noqa: F401  (imported to register every op)
