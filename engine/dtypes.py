"""The five tensor element types, each a thin name over a NumPy dtype."""

from __future__ import annotations

import numpy as np


class DType:
    """An element type; compare with ``==`` against another DType or a NumPy dtype."""

    __slots__ = ("name", "np")

    def __init__(self, name: str, np_dtype):
        self.name = name
        self.np = np.dtype(np_dtype)

    @property
    def is_floating(self) -> bool:
        return self.np.kind == "f"

    @property
    def is_integer(self) -> bool:
        return self.np.kind in "iu"

    @property
    def is_bool(self) -> bool:
        return self.np.kind == "b"

    def __repr__(self) -> str:
        return f"en.{self.name}"

    def __eq__(self, other) -> bool:
        if isinstance(other, DType):
            return self.np == other.np
        try:
            return self.np == np.dtype(other)
        except TypeError:
            return False

    def __hash__(self) -> int:
        return hash(self.name)


float32 = DType("float32", np.float32)
float64 = DType("float64", np.float64)
int32 = DType("int32", np.int32)
int64 = DType("int64", np.int64)
bool_ = DType("bool", np.bool_)

ALL = (float32, float64, int32, int64, bool_)
_BY_NP = {d.np: d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_BY_PYTHON = {bool: bool_, float: float32, int: int32}


def as_dtype(value) -> DType:
    """A DType from a DType, a NumPy dtype/type, or a name ("float32"); unsupported types are an error."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    if isinstance(value, type) and value in _BY_PYTHON:
        return _BY_PYTHON[value]
    try:
        npd = np.dtype(value)
    except TypeError:
        raise TypeError(f"not a dtype: {value!r}") from None
    if npd not in _BY_NP:
        raise TypeError(f"unsupported dtype {npd}; the engine supports {', '.join(_BY_NAME)}")
    return _BY_NP[npd]
