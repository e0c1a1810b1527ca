"""The release store's id (models/.serving-host), which the app reads in a request's thread every reload interval."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pipeline import release_store
from pipeline.release_store import SERVING_HOST_FILE, draw_serving_host, serving_host


def _read_in_thread(models: Path) -> dict:
    found: dict = {}
    reader = threading.Thread(target=lambda: found.setdefault("id", serving_host(models)), daemon=True)
    reader.start()
    reader.join(5)
    return found


def test_a_fifo_at_the_id_file_is_no_id_and_does_not_hang_the_reader(tmp_path: Path) -> None:
    """Found by review (the last note left it alone): the id was read with read_text, so a FIFO put at
    models/.serving-host blocked the request thread that read it until someone wrote to the FIFO. It is opened
    without waiting now and read only where it is a regular file; drawn again, the id replaces the FIFO."""
    models = tmp_path / "models"
    models.mkdir()
    os.mkfifo(models / SERVING_HOST_FILE)
    assert _read_in_thread(models) == {"id": None}, "serving_host blocked on a FIFO for 5 s"
    drawn = draw_serving_host(models)
    assert (models / SERVING_HOST_FILE).is_file() and serving_host(models) == drawn


def test_a_long_file_at_the_id_file_is_no_id_and_only_its_start_is_read(tmp_path: Path, monkeypatch) -> None:
    """A file that starts with an id and goes on is no id (before, the whole file was read to find that out)."""
    models = tmp_path / "models"
    models.mkdir()
    drawn = draw_serving_host(models)
    assert serving_host(models) == drawn
    with open(models / SERVING_HOST_FILE, "a", encoding="ascii") as file:
        file.write("0" * (1 << 20))
    sizes = []
    real_open = release_store.open_regular_file

    class RecordedReads:
        """The file serving_host opens, every read's size recorded (-1: the whole file)."""

        def __init__(self, path):
            self.handle = real_open(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size=-1):
            sizes.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(release_store, "open_regular_file", RecordedReads)
    assert serving_host(models) is None
    assert sizes and all(0 <= size < 64 for size in sizes), sizes
