"""Run-time errors of the engine, named like TensorFlow's ``tf.errors`` so users know what each means: for what goes
wrong when a graph runs or a checkpoint/export is read (building a graph raises ValueError/TypeError naming the op).
"""

from __future__ import annotations


class OpError(Exception):
    """Base of every run-time engine error; ``op_name`` names the failing op when there is one."""

    def __init__(self, message: str, op_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.op_name = op_name


class InvalidArgumentError(OpError):
    """A value is wrong for the op (bad feed, bad shape at run time, NaN caught by check_numerics)."""


def op_failed(label: str, op_name: str, error: Exception, inputs) -> InvalidArgumentError:
    """The error a run raises when an op's kernel fails with ``error``: ``label`` (``"Add op 'total'"``) and the
    inputs, ``(name, value)`` pairs, named. One wording for a plan's step (session.py) and for the member of a fused
    group that failed when the group ran its ops one by one (passes/fusion.py)."""
    described = ", ".join(f"{name} {value.dtype}{tuple(value.shape)}" for name, value in inputs
                          if value is not None) or "none"
    return InvalidArgumentError(f"{label} failed: {error} (inputs: {described})", op_name)


class FailedPreconditionError(OpError):
    """The graph ran before something it needs exists (an uninitialized variable)."""


def uninitialized(name: str) -> FailedPreconditionError:
    """TensorFlow's error for a read of a variable that was never initialized, with the way out: a variable made
    from another one's value (``Variable(w * 2)``) reads it before ``w``'s own initializer has run."""
    return FailedPreconditionError(f"Attempting to use uninitialized value {name} (run its initializer first; to "
                                   f"make another variable from its value, use {name}.initial_value)", name)


class NotFoundError(OpError):
    """A named thing (variable in a checkpoint, file, tensor name) does not exist."""


class DataLossError(OpError):
    """A file on disk is corrupt or does not match its checksum."""
