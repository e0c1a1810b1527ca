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
