"""The real Fluentd forward-protocol receiver (receiver.js here) as a process that can be stopped and started again
on the same port: Fluentd going down and coming back. One definition for the tests (tests/app/conftest.py's
fixture) and the event-delivery benchmark (benchmarks/event_delivery.py); no pytest here."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

RECEIVER_DIR = Path(__file__).resolve().parent
RECEIVER_SCRIPT = RECEIVER_DIR / "receiver.js"
INSTALLED = RECEIVER_DIR / "node_modules" / "@fluent-org" / "logger"


def why_unavailable() -> str | None:
    """Why the receiver cannot run here (no Node.js, or its package not installed); None when it can."""
    if shutil.which("node") is None:
        return "node not found on PATH: the Fluentd forward-protocol receiver needs Node.js >= 18"
    if not INSTALLED.exists():
        return f"@fluent-org/logger is not installed in {RECEIVER_DIR}: run scripts/install_test_services.sh"
    return None


class FluentdReceiver:
    """A receiver process that can be stopped and started again on the same port."""

    def __init__(self, command: list[str], output: Path, port: int = 0):
        self.command = command
        self.output = output
        self.port = port  # 0: the first start takes the one the kernel picks, and keeps it
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        assert self.process is None, "receiver already running"
        self.process = subprocess.Popen(
            [*self.command, "--port", str(self.port), "--output", str(self.output)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = read_line(self.process, timeout_s)
        if not line.startswith("ready "):
            self.kill()
            raise RuntimeError(f"Fluentd test receiver did not start (port {self.port}): {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        """SIGTERM: the receiver exits between messages, having written all it acknowledged."""
        assert self.process is not None, "receiver not running"
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        stderr = self.process.stderr.read() if self.process.stderr else ""
        self.process = None
        assert code == 0, f"receiver exited with {code}: {stderr}"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def events(self) -> list[dict[str, Any]]:
        """Everything received, as {tag, time, record}; call it while the receiver is stopped.

        FluentServer writes a message's acknowledgement before it hands the entries to
        our listener, so a client can hold an ack for an entry not yet written; a stopped
        receiver has written everything it acknowledged.
        """
        assert self.process is None, "stop() the receiver before reading what it received"
        if not self.output.exists():
            return []
        with open(self.output, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The first stdout line, or the process's stderr if it exits or stays silent."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if box and box[0]:
        return box[0].strip()
    process.kill()
    process.wait(timeout=10)
    return f"no 'ready' line within {timeout_s} s; stderr: {process.stderr.read() if process.stderr else ''}"
