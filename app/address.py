"""The one reading of a bind address (each form gunicorn's --bind takes); whether a server may listen at a TCP
address: nothing listens there yet; and a worker's own listening socket.

One check for gunicorn's master (app/gunicorn_conf.py on_starting) and `make mlflow-ui` (``python -m app.address
HOST:PORT [HINT]``), so a second server on a host (staging beside production, another user's MLflow UI on the
same port) is refused in one line at once. Standard library only: gunicorn's master imports it.
"""

from __future__ import annotations

import errno
import socket
import sys

GUNICORN_DEFAULT_PORT = 8000  # gunicorn's port for a bind address that names a host only


class BindAddressError(RuntimeError):
    """A bind address no server here could listen at: gunicorn's master prints it as one line and exits. Its
    ``problem`` and a well-formed ``example`` apart, for a message that names the setting that gave the address
    (app/gunicorn_conf.py)."""

    def __init__(self, address: str, problem: str, example: str):
        super().__init__(f"bind address {address!r}: {problem}; write HOST:PORT, e.g. {example}")
        self.address, self.problem, self.example = address, problem, example


class CannotListenAt(RuntimeError):
    """A TCP bind address that cannot be listened at: something listens there already (EADDRINUSE), or another
    ``error`` of the bind (a port under 1024 without the privilege, a host that is none of this machine's)."""

    def __init__(self, address: str, error: OSError, hint: str = ""):
        question = "is another server running there?" if self.in_use(error) else ""
        said = " ".join(part for part in (question, hint) if part)
        super().__init__(f"cannot serve at {address}: {error.strerror or error}{f' ({said})' if said else ''}")
        self.address, self.error = address, error

    @staticmethod
    def in_use(error: OSError) -> bool:
        return error.errno == errno.EADDRINUSE


def host_and_port(address: str) -> tuple[socket.AddressFamily, str, int]:
    """The family, host and port of a TCP bind address in each form gunicorn's --bind reads it: ``host:port``,
    ``host`` alone (port 8000), ``tcp://host:port``, an IPv6 host in brackets (``[::1]:port``); no host: every
    IPv4 address. BindAddressError for a ``unix:`` or ``fd://`` one (see is_tcp) or one that is no address."""
    if not is_tcp(address):
        raise BindAddressError(address, "no TCP address", "127.0.0.1:5005")
    netloc = address[len("tcp://"):] if address.startswith("tcp://") else address
    default = str(GUNICORN_DEFAULT_PORT)
    if netloc.startswith("["):
        host, closed, rest = netloc[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise BindAddressError(address, "an IPv6 host must be in brackets", "[::1]:5005")
        port = rest[1:] if rest else default
    elif netloc.count(":") > 1:  # gunicorn reads up to the second colon: an IPv6 host must be in brackets
        raise BindAddressError(address, "an IPv6 host must be in brackets", "[::1]:5005")
    else:
        host, colon, port = netloc.partition(":")
        port = port if colon else default
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise BindAddressError(address, f"{port!r} is no port number (0 to 65535)", "127.0.0.1:5005")
    host = host or "0.0.0.0"
    return socket.AF_INET6 if ":" in host else socket.AF_INET, host, int(port)


def is_tcp(address: str) -> bool:
    """Whether a bind address is a TCP one, not a Unix socket's path (``unix:PATH``) or an inherited descriptor
    (``fd://N``): neither has a port to check or to share between workers."""
    return not address.startswith(("unix:", "fd://"))


def shown(address: str, scheme: str = "http") -> str:
    """A bind address as a client reaches it: ``http://host:port`` (the port gunicorn takes for a host alone),
    a ``unix:`` or ``fd://`` one as given."""
    if not is_tcp(address):
        return address
    _, host, port = host_and_port(address)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def refuse_a_taken_address(address: str, hint: str = "") -> None:
    """CannotListenAt if something already listens at ``host:port`` (an IPv6 host in brackets), as a plain bind
    would report it; ``hint`` (what to do instead) ends the message."""
    family, host, port = host_and_port(address)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CannotListenAt(address, exc, hint) from None


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
