"""Feeding a training loop: ``batches`` of in-memory arrays (contiguous, optionally in a seeded order per epoch),
``shuffle_buffer`` for a stream that does not fit in memory (as ``tf.data``'s), and ``prefetch``, which builds the next
items on a background thread while the session runs the current step.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from engine.shapes import whole_number


def _rows(names, values: list) -> int:
    if not values:
        raise ValueError("batches: no arrays given")
    counts = {np.shape(v)[0] if np.ndim(v) else None for v in values}
    if None in counts:
        raise ValueError("batches: every array needs a first (row) dimension")
    if len(counts) != 1:
        sizes = {str(n): np.shape(v)[0] for n, v in zip(names, values)}
        raise ValueError(f"batches: arrays have different numbers of rows {sizes}")
    return counts.pop()


def batches(arrays, batch_size: int, *, shuffle: bool = False, seed: int | None = None, epochs: int = 1,
            drop_remainder: bool = False) -> Iterator:
    """Batches of ``batch_size`` rows, C-contiguous, in the structure of ``arrays`` (one array, whose rows are not
    taken for columns, a tuple or a dict); with ``shuffle``, in a new order each epoch drawn from ``seed`` (required:
    runs are reproducible). The last short batch is kept unless ``drop_remainder``."""
    batch_size, epochs = whole_number(batch_size, "batches: batch_size"), whole_number(epochs, "batches: epochs")
    if shuffle and seed is None:
        raise ValueError("batches: shuffle=True needs a seed (runs must be reproducible)")
    single = isinstance(arrays, np.ndarray)
    arrays = (arrays,) if single else arrays
    keys = list(arrays) if isinstance(arrays, Mapping) else None
    values = list(arrays.values() if keys is not None else arrays)  # read once: a generator of arrays is spent then
    n = _rows(range(len(values)) if keys is None else keys, values)
    values = [np.asarray(v) for v in values]
    rng = np.random.default_rng(seed) if shuffle else None
    for _ in range(epochs):
        order = rng.permutation(n) if shuffle else None
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            pick = slice(start, end) if order is None else order[start:end]
            parts = [np.ascontiguousarray(v[pick]) for v in values]
            yield parts[0] if single else tuple(parts) if keys is None else dict(zip(keys, parts))


def shuffle_buffer(items: Iterable, buffer_size: int, seed: int) -> Iterator:
    """Items of a stream in a random order, keeping at most ``buffer_size`` of them in memory."""
    buffer_size = whole_number(buffer_size, "shuffle_buffer: buffer_size")
    if seed is None:
        raise ValueError("shuffle_buffer: needs a seed (runs must be reproducible)")
    rng = np.random.default_rng(seed)
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        k = int(rng.integers(len(buffer)))
        buffer[k], item = item, buffer[k]
        yield item
    while buffer:
        k = int(rng.integers(len(buffer)))
        buffer[k], buffer[-1] = buffer[-1], buffer[k]
        yield buffer.pop()


_DONE = object()


def _produce(source, out: queue.Queue, stop: threading.Event, owner: weakref.ref) -> None:
    def put(entry) -> bool:
        while not stop.is_set() and owner() is not None:  # closed, or its prefetch collected: stop
            try:
                out.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put((True, item)):
                return
        put((True, _DONE))
    except BaseException as error:  # noqa: BLE001  (handed to the consumer, not lost)
        put((False, error))


class prefetch(Iterator):  # noqa: N801  (used like a function: for batch in prefetch(batches(...)))
    """Iterate ``items`` while a background thread produces up to ``depth`` items ahead; the producer's exception is
    raised in the consumer; ``close()`` (or leaving a ``with`` block, or collecting an abandoned loop) stops it."""

    def __init__(self, items: Iterable, depth: int = 2):
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=whole_number(depth, "prefetch: depth"))
        self._finished = False
        # the thread holds the queue, the stop flag and a weak reference to ``self``, never ``self``: an abandoned
        # loop is collected, and the thread sees it gone (within 0.05 s). No ``__del__``: a finalizer is Python code,
        # and a Ctrl-C whose handler runs there is printed as "Exception ignored" and lost (the train stage drops an
        # epoch's prefetch as the next epoch starts: a Ctrl-C at that boundary was lost and training went on)
        self._thread = threading.Thread(target=_produce, args=(iter(items), self._queue, self._stop,
                                                               weakref.ref(self)), daemon=True, name="engine-prefetch")
        self._thread.start()

    def __next__(self):
        if self._finished:
            raise StopIteration
        ok, item = self._queue.get()
        if not ok:
            self._finished = True
            raise item
        if item is _DONE:
            self._finished = True
            raise StopIteration
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
