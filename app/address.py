"""Whether a server may listen at a TCP address: nothing listens there yet.

One check for gunicorn's master (app/gunicorn_conf.py on_starting) and `make mlflow-ui` (``python -m app.address
HOST:PORT [HINT]``), so a second server on a host (staging beside production, another user's MLflow UI on the
same port) is refused in one line at once. Standard library only: gunicorn's master imports it.
"""

from __future__ import annotations

import socket
import sys


def refuse_a_taken_address(address: str, hint: str = "") -> None:
    """RuntimeError if something already listens at ``host:port`` (an IPv6 host in brackets), as a plain bind
    would report it; ``hint`` (what to do instead) ends the message."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: TIME_WAIT is no obstacle
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise RuntimeError(f"cannot serve at {address}: {exc.strerror} (is another server running there?"
                               f"{' ' + hint if hint else ''})") from None


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m app.address HOST:PORT [HINT]", file=sys.stderr)
        return 2
    try:
        refuse_a_taken_address(*argv)
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
