"""benchmarks/app_load.py: finding the server's workers on a machine where other processes come and go."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.benchmarks.conftest import _benchmark_module


def test_a_process_ending_while_the_workers_are_listed_is_skipped(monkeypatch):
    """A busy CI runner ends processes while /proc is read: the workers are still found (the S1 figures were
    None and [] on such a runner)."""
    app_load = _benchmark_module("app_load")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        read = app_load._stat_fields

        def vanishing(pid: int) -> list[str]:
            if pid != child.pid:
                raise FileNotFoundError(f"/proc/{pid}/stat")  # as if every other process had just ended
            return read(pid)

        monkeypatch.setattr(app_load, "_stat_fields", vanishing)
        assert app_load.worker_pids(os.getpid()) == [child.pid]
        assert app_load.workers_cpu(os.getpid()) is not None
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux's /proc")
def test_a_descriptor_closed_while_a_workers_sockets_are_read_is_skipped(monkeypatch):
    """A worker under load closes files while S1 reads its descriptors: one closed between the listing and its
    read lost the whole sample (connections_per_worker was [], and the slow S1 test failed on 0 == 4)."""
    app_load = _benchmark_module("app_load")
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    served, _ = listener.accept()
    doomed = os.open(os.devnull, os.O_RDONLY)
    readlink = os.readlink

    def closed_meanwhile(path):
        if os.path.basename(str(path)) == str(doomed) and doomed_open:
            doomed_open.pop()
            os.close(doomed)  # really closed: the read that follows fails as it did under load
        return readlink(path)

    doomed_open = [True]
    monkeypatch.setattr(os, "readlink", closed_meanwhile)
    monkeypatch.setattr(app_load, "worker_pids", lambda app_pid: [os.getpid()])
    try:
        assert app_load.connections_per_worker(os.getpid(), listener.getsockname()[1]) == [1]
        assert not doomed_open  # the closed descriptor was met
    finally:
        for sock in (served, client, listener):
            sock.close()


def _answer(raw: bytes, *, pieces: int = 1):
    """read_response over a real socket pair, the peer writing `raw` in `pieces` sends and then closing."""
    app_load = _benchmark_module("app_load")
    ours, peer = socket.socketpair()

    def write() -> None:
        step = max(1, len(raw) // pieces)
        for start in range(0, len(raw), step):
            peer.sendall(raw[start:start + step])
        peer.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        return app_load.read_response(ours)
    finally:
        writer.join()
        ours.close()


def test_the_clients_read_a_response_however_it_is_split():
    body = b'{"predictions": []}'
    raw = b"HTTP/1.1 200 OK\r\nServer: shelfcast\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert _answer(raw) == (200, True)
    assert _answer(raw, pieces=len(raw)) == (200, True)  # one byte at a time
    closing = b"HTTP/1.1 413 Request Entity Too Large\r\nconnection: Close\r\ncontent-length: 2\r\n\r\n{}"
    assert _answer(closing) == (413, False)


def test_a_response_the_clients_cannot_read_is_an_error_not_a_hang():
    app_load = _benchmark_module("app_load")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    for raw, reason in ((chunked, "Content-Length"),
                        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "inside a response body"),
                        (b"HTTP/1.1 200 OK\r\nContent-Le", "before a response"),
                        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1", "more bytes")):
        with pytest.raises(app_load.ProtocolError, match=reason):
            _answer(raw)


@pytest.mark.parametrize("mode", [["--cpu-per-request", "5"], ["--seconds", "1"]])
def test_no_bundle_is_one_line_saying_what_to_run_first(tmp_path, capsys, mode):
    """A fresh clone has no models/production: both modes say, in one line, how to make one (--cpu-per-request
    went on to start the app without a model and died in a KeyError traceback)."""
    app_load = _benchmark_module("app_load")
    assert app_load.main([*mode, "--bundle", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("app_load: error: ") and "no model bundle here" in err
    assert "python -m pipeline.promote" in err and "--bundle" in err


@pytest.mark.parametrize("flags, message", [
    (["--clients", "0"], "--clients must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--cpu-per-request", "0"], "--cpu-per-request must be at least 1, got 0"),
    (["--seconds", "0"], "--seconds must be more than 0 and --warm-up 0 or more, got 0 and 2"),
    (["--warm-up", "-1"], "--seconds must be more than 0 and --warm-up 0 or more, got 30 and -1"),
])
def test_a_load_of_nothing_is_refused_before_the_server_starts(flags, message, monkeypatch, capsys):
    """--clients 0 failed on a percentile of no latencies once the server was up, --seconds 0 on a division by zero,
    and --cpu-per-request 0 (falsy) ran the 30 s S1 load instead of the one-process measure."""
    app_load = _benchmark_module("app_load")

    def no_load(*args, **kwargs):
        raise AssertionError("app_load started a measurement")

    for name in ("measure", "cpu_per_request", "print_server_floor"):
        monkeypatch.setattr(app_load, name, no_load)
    with pytest.raises(SystemExit) as stopped:
        app_load.main(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
