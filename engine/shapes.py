"""Static shapes: a tuple of ints with ``None`` for unknown dimensions, or ``None`` for unknown rank."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

Shape = Optional[Tuple[Optional[int], ...]]


def as_shape(shape) -> Shape:
    """Normalize a user shape (None, int, list, tuple) to the static-shape form."""
    if shape is None:
        return None
    if isinstance(shape, int):
        shape = (shape,)
    out = []
    for d in shape:
        if d is None:
            out.append(None)
        elif isinstance(d, (int,)) or hasattr(d, "__index__"):
            d = int(d)
            if d < 0:
                raise ValueError(f"negative dimension {d} in shape {tuple(shape)}")
            out.append(d)
        else:
            raise TypeError(f"bad dimension {d!r} in shape {shape!r}")
    return tuple(out)


def whole_number(value, what: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``: a size or count (units, rows, batches). ValueError naming ``what``
    otherwise: int() made Dense(2.5) 2 units and 2.7 epochs 2, and Dense(0) divided by zero in its initializer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def is_fully_defined(shape: Shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def broadcast(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of two static shapes; raises ValueError when they cannot broadcast."""
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for da, db in zip(a, b):
        if da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        elif da is None:
            out.append(db)
        elif db is None or da == db:
            out.append(da)
        else:
            raise ValueError(f"shapes {a} and {b} cannot broadcast")
    return tuple(out)


def compatible(a: Shape, b: Shape) -> bool:
    """Whether two shapes (static or concrete) can describe one value: an unknown rank or dimension fits any."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def merge(a: Shape, b: Shape) -> Shape:
    """The most specific shape compatible with both; ValueError when they contradict."""
    if a is None:
        return b
    if b is None:
        return a
    if len(a) != len(b):
        raise ValueError(f"shapes {a} and {b} have different ranks")
    out = []
    for da, db in zip(a, b):
        if da is not None and db is not None and da != db:
            raise ValueError(f"shapes {a} and {b} are incompatible")
        out.append(da if da is not None else db)
    return tuple(out)


def normalize_axes(axis, rank: int, what: str = "axis") -> tuple:
    """Axis (None, int or sequence; negatives allowed) as a sorted tuple of non-negative ints; an axis named twice
    (``(0, 0)``, ``(0, -2)`` of rank 2) is an error, as in NumPy (the references), not a silent set."""
    if axis is None:
        return tuple(range(rank))
    if isinstance(axis, int):
        axis = (axis,)
    out = set()
    for a in axis:
        a = int(a)
        if not -rank <= a < rank:
            raise ValueError(f"{what} {a} is out of range for rank {rank}")
        if a % rank in out:
            raise ValueError(f"{what} {tuple(axis)} names axis {a % rank} twice")
        out.add(a % rank)
    return tuple(sorted(out))
