"""`pip install` for `make venv`, saying how far it is at least every 20 s.

pip is silent while it installs (about 200 packages after one "Installing collected packages" line: 1-3 min
on 2 cores, more on a busy machine) and while it downloads a large wheel with its bar off, so `make run` on a
fresh clone looked stuck there (144 s without a line at load 9). This passes pip's step lines through (Collecting,
Installing, Successfully...) and, after ``SHELFCAST_PIP_HEARTBEAT_S`` seconds (default 20) without one, says
where it is: how many of the packages pip named are in place, or the step it is still on. Standard library
only: it runs on the new virtual environment before anything is installed there.

    .venv/bin/python scripts/pip_install.py -e '.[test]'    # the arguments of `pip install`
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

SHOWN = re.compile(r"^(Obtaining|Processing|Collecting|Building|Installing|Successfully)")
INSTALLING = "Installing collected packages:"


class Progress:
    """What pip last said, and a line of where it is after ``every_s`` seconds without one."""

    def __init__(self, site_packages: Path, every_s: float):
        self.site_packages, self.every_s = site_packages, every_s
        self.started = self.last_said = time.monotonic()
        self.before = self.installed()
        self.step, self.total = "starting pip", 0
        self.lock = threading.Lock()

    def installed(self) -> int:
        return sum(1 for _ in self.site_packages.glob("*.dist-info"))

    def say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.last_said = time.monotonic()

    def pip_said(self, line: str) -> None:
        if SHOWN.match(line):
            self.say(line)
            self.step = line if len(line) <= 100 else line[:97] + "..."
            if line.startswith(INSTALLING):
                self.total = len(line[len(INSTALLING):].split(","))

    def beat(self) -> None:
        if time.monotonic() - self.last_said < self.every_s or self.step.startswith("Successfully"):
            return
        elapsed = f"{time.monotonic() - self.started:.0f} s"
        if self.total:
            done = min(max(self.installed() - self.before, 0), self.total)
            self.say(f"venv: {done} of {self.total} packages installed ({elapsed})")
        else:
            self.say(f"venv: pip is still on: {self.step} ({elapsed})")


def main(pip_args: list[str]) -> int:
    progress = Progress(Path(sysconfig.get_paths()["purelib"]),
                        float(os.environ.get("SHELFCAST_PIP_HEARTBEAT_S", "20")))
    finished = threading.Event()

    def beating() -> None:
        while not finished.wait(min(1.0, progress.every_s / 4)):
            progress.beat()

    threading.Thread(target=beating, daemon=True).start()
    pip = None
    try:
        with subprocess.Popen([sys.executable, "-m", "pip", "install", "--progress-bar", "off", *pip_args],
                              stdout=subprocess.PIPE, text=True, bufsize=1) as pip:
            for line in pip.stdout:
                progress.pip_said(line.rstrip("\n"))
    except KeyboardInterrupt:
        # Ctrl-C reaches pip too (one process group): it stops and leaves what it installed, and a second
        # `make venv` goes on from there. Before, this process ended in a KeyboardInterrupt traceback.
        finished.set()
        if pip is not None:
            try:
                pip.wait(timeout=30)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                pip.kill()
        print("venv: interrupted; `make venv` again goes on where pip stopped", file=sys.stderr, flush=True)
        return 130
    finished.set()
    return pip.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
