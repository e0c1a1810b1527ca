"""Whether a server may listen at a TCP address: nothing listens there yet; and a worker's own listening socket.

One check for gunicorn's master (app/gunicorn_conf.py on_starting) and `make mlflow-ui` (``python -m app.address
HOST:PORT [HINT]``), so a second server on a host (staging beside production, another user's MLflow UI on the
same port) is refused in one line at once. Standard library only: gunicorn's master imports it.
"""

from __future__ import annotations

import socket
import sys


def host_and_port(address: str) -> tuple[socket.AddressFamily, str, int]:
    """The family, host and port of ``host:port`` (an IPv6 host in brackets; no host: every IPv4 address)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return socket.AF_INET6 if ":" in host else socket.AF_INET, host, int(port)


def refuse_a_taken_address(address: str, hint: str = "") -> None:
    """RuntimeError if something already listens at ``host:port`` (an IPv6 host in brackets), as a plain bind
    would report it; ``hint`` (what to do instead) ends the message."""
    family, host, port = host_and_port(address)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"cannot serve at {address}: {exc.strerror} (is another server running there?"
                               f"{' ' + hint if hint else ''})") from None


def listen_beside(address: str, backlog: int) -> socket.socket:
    """A non-blocking socket listening at ``host:port`` in its SO_REUSEPORT group (Linux: the kernel spreads new
    connections over the group's sockets), set as gunicorn sets the socket it opens for each worker at the fork
    (SO_REUSEADDR, SO_REUSEPORT, TCP_NODELAY, its backlog), for a worker that opens its own later
    (app/gunicorn_conf.py post_worker_init): gunicorn offers no public call for that. Not inherited by a program
    the worker runs, as gunicorn's worker makes the sockets it opened at the fork."""
    family, host, port = host_and_port(address)
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((host, port))
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


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
