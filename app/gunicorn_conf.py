"""gunicorn settings for serving Shelfcast in production (`make serve`).

One worker process per core. Each worker has SHELFCAST_THREADS threads (default 8) for
connections, but runs the app one request at a time (app/request_buffer.py): a thread
first reads the whole body, with a size and a time limit, so clients that stall hold a
connection thread, never the forecast; forecasts (CPU-bound Python) never compete for
the GIL. gthread workers keep idle client connections alive in a poller.
The app is created in each worker after the fork (no preload), so every worker owns its
model reference and event sink, and closes the sink on exit so its prediction events are
sent or left in the shared spool for the other workers.

Each worker listens on a socket of its own (SO_REUSEPORT, Linux) and the kernel spreads new
connections over them by address hash. With one shared socket the worker that wakes first
accepts, and on a busy machine one worker often took 7 or all 8 of S1's keep-alive clients
(12 runs: 4/4 once, 7/1 four times, 8/0 once; with SO_REUSEPORT 4/4 four times, 5/3 five,
6/2 three). As SO_REUSEPORT would also let a second server share the port unnoticed, the
master first checks that nothing listens there (with any number of workers: one line, and the exit).
Connections still queued on a worker's
socket when that worker dies are reset instead of going to another worker; a worker replacing a dead one
beside live workers opens its socket only once its app has loaded (post_fork, post_worker_init), so it takes
no connection it could not answer for the seconds its model takes to load; and while every worker is
being replaced at once (--max-requests without --max-requests-jitter) new ones are refused. A single
worker shares the master's socket instead, which queues connections while it is replaced.

Two settings keep a worker's latency tail short (BENCHMARKS.md S1): the GIL switch
interval is 1 ms, not CPython's 5 ms, so the event delivery thread, when it sends a batch
(JSON parsing and msgpack, CPU-bound), hands the GIL back to a request within 1 ms each
time the request released it for I/O; and the heap as it stands after start-up (modules,
the loaded bundle: ~140,000 objects) is frozen (gc.freeze), so full collections skip it
(measured: one full collection of 58-84 ms CPU every ~6,000 requests without; none in
6,000 requests with). A hot reload collects the replaced model (app/predictor.py).

With at least as many workers as cores (the default), each worker runs on a core of its own
(Linux; SHELFCAST_PIN_WORKERS=0 turns it off): the master gives a new worker the core fewest
live workers hold (a replaced worker takes the core its predecessor freed), and the worker
pins itself there, and logs it, before it imports the app, so its BLAS and Numba pools are
sized for that one core. A request passes between a worker's threads
(the poller, a connection thread, the GIL) several times; pinned, those hand-offs stay on one
core instead of waking the other, and the caches stay warm. S1 on a 2-core AMD machine, pinned
against not, 15 s runs: p99 lower in 11 of 12 alternated pairs (e.g. 61.4 -> 34.1 ms; README
"Serving performance"). Where other busy programs share the cores, 0 lets the kernel move workers.

/metrics is summed over the workers with prometheus_client's multiprocess mode: the
directory PROMETHEUS_MULTIPROC_DIR (default: a new temporary one, removed on exit, or at a later start when
the master was SIGKILLed: app/metrics_files.py remove_orphaned) is emptied at start, and
a dead worker's counts are folded into retired.json and its own files removed
(app/metrics_files.py), so the folder does not grow with every worker ever started.

Environment: SHELFCAST_BIND (default 127.0.0.1:5005; 0.0.0.0:5005 in a container; --bind wins over it),
SHELFCAST_WORKERS (default: the cores this process may use, fewer where its cgroup's CPU limit is lower:
engine/cores.py; app/config.py worker_count), SHELFCAST_THREADS (default 8), SHELFCAST_PIN_WORKERS (default 1),
SHELFCAST_ACCESS_LOG ("-" for stdout), PROMETHEUS_MULTIPROC_DIR; a bad bind address, worker or thread count stops the
start in one line naming the setting, its value and the fix. The worker
class (app/gunicorn_worker.py) reads SHELFCAST_HEADER_TIMEOUT_S and SHELFCAST_MAX_HEADER_BYTES, which app/config.py
defines beside the app's other limits.
"""

import collections
import gc
import json
import os
import re
import shutil
import socket
import ssl
import stat
import sys
import tempfile
from pathlib import Path

import gunicorn.http.wsgi

# gunicorn runs this file in its master at start and again on SIGHUP, then loads the worker class
# (app/gunicorn_worker.py) and forks workers, which inherit the master's modules as they stand. The modules of this
# project the worker class brought in (app/__init__.py imports only app/config.py; the rest of the app is imported
# by create_app, in each worker) are dropped here, so after a SIGHUP the worker class and the workers run the
# code now on disk, all of it.
if __name__ == "__config__":  # as gunicorn loads it (a test that loads this file keeps its modules)
    for module in [name for name in sys.modules if name == "app" or name.startswith("app.")]:
        del sys.modules[module]
# app/config.py (standard library only; the worker class imports it too): the one reading of SHELFCAST_WORKERS
from app.address import (  # noqa: E402 - the same: standard library
    BindAddressError,
    CannotListenAt,
    host_and_port,
    is_tcp,
    shown,
)
from app.config import SettingsError, thread_count, worker_count  # noqa: E402 - after the drop above: code on disk


def setting(name: str, default: str) -> str:
    """An environment setting; empty counts as unset (CI systems pass unset variables as empty: an empty
    SHELFCAST_BIND listened nowhere, an empty SHELFCAST_WORKERS was a traceback)."""
    return os.environ.get(name, "").strip() or default


DEFAULT_BIND = "127.0.0.1:5005"
bind = setting("SHELFCAST_BIND", DEFAULT_BIND)


def given_as(address: str) -> tuple[str, str]:
    """How the server was given ``address``, for an error that names it, and the start of a corrected one: --bind
    where the command line or GUNICORN_CMD_ARGS gives the addresses (`COMMAND_LINE_BINDS`: they replace
    SHELFCAST_BIND whole, even where they repeat it) or the address is not SHELFCAST_BIND's; else SHELFCAST_BIND
    (`make serve`'s setting, "(the default)" when unset)."""
    if COMMAND_LINE_BINDS or address != bind:
        return f"--bind {address}", "--bind "
    unset = not os.environ.get("SHELFCAST_BIND", "").strip()
    return f"SHELFCAST_BIND={address}{' (the default)' if unset else ''}", "SHELFCAST_BIND="


def bind_refusal(address: str, refused: BindAddressError | CannotListenAt) -> str:
    """One line for a bind address the server cannot listen at: the setting, its value, what to do. Before,
    gunicorn's own line named neither (`Error: 'abc' is not a valid port number.`), and the master's check named the
    address but no setting (`Error: cannot serve at 127.0.0.1:5005: Address already in use`)."""
    given, corrected = given_as(address)
    if isinstance(refused, BindAddressError):
        return f"{given}: {refused.problem}; write HOST:PORT, e.g. {corrected}{refused.example}"
    if not CannotListenAt.in_use(refused.error):  # a port under 1024 unprivileged, a host not of this machine
        return (f"{given}: cannot serve there: {refused.error.strerror or refused.error}; choose an address of this "
                f"machine, e.g. {corrected}{DEFAULT_BIND} (0.0.0.0:5005: every interface)")
    _, host, port = host_and_port(address)
    free = f"{f'[{host}]' if ':' in host else host}:{port + 1 if port < 65535 else port - 1}"
    return (f"{given}: cannot serve there: {refused.error.strerror} (is another server running there? stop it, or "
            f"serve at a free port, e.g. {corrected}{free})")


def command_line_setting(argv: list[str], name: str):
    """What the command line (else GUNICORN_CMD_ARGS) sets gunicorn's setting ``name`` to, read by gunicorn's own
    parser as gunicorn reads them: it applies this file, then GUNICORN_CMD_ARGS, then its command line, each replacing
    the one before (gunicorn/app/base.py load_config). None where neither sets it. By the time gunicorn reads this
    file it has parsed both already, so neither can fail here."""
    from gunicorn.config import Config

    config = Config()
    parser = config.parser()
    given = getattr(parser.parse_known_args(argv)[0], name)
    return given if given is not None else getattr(parser.parse_known_args(config.get_cmd_args_from_env())[0], name)


def command_line_binds(argv: list[str]) -> list[str]:
    """The --bind (-b) addresses that replace this file's ``bind``; empty where neither way gives one."""
    return command_line_setting(argv, "bind") or []


def refuse_preload(argv: list[str]) -> None:
    """SystemExit with one line where ``--preload`` is given: the app would be created in the master and forked,
    its event sink's sending thread left behind in the master (threads do not survive a fork) and one sink shared by
    every worker, whose spool and exit report assume one per process: prediction events would wait unsent. Each
    worker loads the app itself (``preload_app = False`` below, which the command line would replace)."""
    if command_line_setting(argv, "preload_app"):
        raise SystemExit("Error: --preload: not supported; each worker loads the app after the fork, so it owns its "
                         "model and its prediction-event sink (a sink created in the master is shared by every worker "
                         "and its sending thread is not forked); remove --preload from the command line or "
                         "GUNICORN_CMD_ARGS")


def refuse_unusable_binds(addresses: list[str]) -> None:
    """SystemExit with `bind_refusal`'s one line for the first TCP address no server could listen at. Run as this file
    is read, on the addresses gunicorn will serve at: gunicorn parses them before any hook runs (`:abc`: "Error: 'abc'
    is not a valid port number.", naming no setting) and took 99999 for a port. SystemExit, not an exception: gunicorn
    prints those raised by this file as "Failed to read config file" and a traceback. Only the addresses used: a bad
    SHELFCAST_BIND that --bind overrides stopped the server. (A SIGHUP reads this file again, the same way.)"""
    for address in addresses:
        if is_tcp(address):
            try:
                host_and_port(address)
            except BindAddressError as bad:
                raise SystemExit(f"Error: {bind_refusal(address, bad)}") from None


# gunicorn loads this file as "__config__" with its own command line in sys.argv; a test loading it has another
GUNICORN_ARGV = sys.argv[1:] if __name__ == "__config__" else []
refuse_preload(GUNICORN_ARGV)
COMMAND_LINE_BINDS = command_line_binds(GUNICORN_ARGV)
refuse_unusable_binds(COMMAND_LINE_BINDS or [bind])
# One per usable core: the cores this process may run on, its cgroup's CPU limit counted (a container run with
# --cpus 1 on a 16-core host started 16 workers, each loading the model, throttled to one core in all).
try:
    workers = worker_count()
    threads = thread_count()
except SettingsError as bad:  # one line naming the setting, the value and the fix (see refuse_unusable_binds)
    raise SystemExit(f"Error: {bad}") from None
worker_class = "app.gunicorn_worker.ThreadWorker"  # gthread: graceful closes off the accepting thread, headers timed
keepalive = 5
timeout = 60  # a worker loads and warms up the bundle before it serves
graceful_timeout = 30  # time to flush prediction events on shutdown
preload_app = False


def a_socket_per_worker(binds: list[str], worker_count: int) -> bool:
    """Whether each worker listens on a socket of its own (SO_REUSEPORT): on Linux, for 2 or more workers, every
    bind address a TCP one with a fixed port. One worker gains nothing from it, and would leave none listening while
    it is replaced (--max-requests, a timeout): connections would be refused, where the master's shared socket
    queues them. A Unix socket's path is one file (each worker binding it removed the one before), an ``fd://``
    one socket already, and port 0 a different port for each worker. An address that is none (a bad port) is
    refused at start (`bind_refusal`)."""
    try:
        return (sys.platform == "linux" and worker_count >= 2
                and all(is_tcp(address) and host_and_port(address)[2] != 0 for address in binds))
    except BindAddressError:
        return False


def settle_reuse_port(cfg) -> None:
    """reuse_port as the settings gunicorn serves with decide it: GUNICORN_CMD_ARGS (--bind, --workers) override
    this file, which saw only SHELFCAST_BIND and SHELFCAST_WORKERS (`--bind unix:PATH` with 2 workers was a ValueError
    in every worker). Only ever turned off; at start and at each SIGHUP, which reads this file again."""
    if cfg.reuse_port and not a_socket_per_worker(cfg.bind, cfg.workers):
        cfg.set("reuse_port", False)


reuse_port = a_socket_per_worker([bind], workers)
accesslog = os.environ.get("SHELFCAST_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("SHELFCAST_LOG_LEVEL", "info")
raw_env = ["FLASK_DEBUG=0"]


def control_socket_dir() -> str:
    """$XDG_RUNTIME_DIR, else ~/.gunicorn where this user can write it, else the temporary directory: with a
    read-only or missing HOME (CI runners, service accounts) gunicorn logged "[ERROR] Control server error:
    [Errno 13] Permission denied: '/nonexistent'" at every start, and had no control socket."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        return runtime
    home = os.path.expanduser(os.path.join("~", ".gunicorn"))
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
    except OSError:
        return tempfile.gettempdir()
    return home if os.access(home, os.W_OK | os.X_OK) else tempfile.gettempdir()


# gunicorn 26's control socket (for `gunicornc -s PATH`) defaults to one path per user, so a second server on the
# host took it over and either one's exit removed it: one per server, named by the master's pid.
CONTROL_SOCKET_NAME = re.compile(r"shelfcast-([0-9]+)\.ctl")
OWN_CONTROL_SOCKET = not setting("SHELFCAST_CONTROL_SOCKET", "")
control_socket = (setting("SHELFCAST_CONTROL_SOCKET", "")
                  or os.path.join(control_socket_dir(), f"shelfcast-{os.getpid()}.ctl"))


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_dead_control_sockets(directory: str) -> list[str]:
    """The control sockets this user's servers left in ``directory`` when their master was SIGKILLed (gunicorn
    removes its own only when it exits): each ``shelfcast-<pid>.ctl`` socket of this user whose pid runs no
    process and on which nothing listens (a connection is refused) is removed; the paths removed. Never another
    user's file, one that is no socket, or a live server's."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = CONTROL_SOCKET_NAME.fullmatch(name)
        path = os.path.join(directory, name)
        if match is None or int(match.group(1)) == os.getpid() or _process_runs(int(match.group(1))):
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                continue  # something answers there
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed
OWN_METRICS_DIR_ENV = "SHELFCAST_OWN_METRICS_DIR"  # the metrics directory this server made (and removes)
METRICS_DIR_PREFIX = "shelfcast-metrics-"  # in the temporary directory; a SIGKILLed master's is removed at start

# Set before any worker imports prometheus_client, which reads it at import. gunicorn reads this file again on
# SIGHUP, with the variable set by then: which directory is ours (removed on exit) is kept in a second one.
MADE_METRICS_DIR_NOW = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # by this read of the file (not a SIGHUP's)
if MADE_METRICS_DIR_NOW:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[OWN_METRICS_DIR_ENV] = tempfile.mkdtemp(
        prefix=METRICS_DIR_PREFIX)
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
OWN_METRICS_DIR = os.environ.get(OWN_METRICS_DIR_ENV) == str(METRICS_DIR)
held_metrics_dir: list[int] = []  # the descriptor holding METRICS_DIR's server.lock (app/metrics_files.py hold)
HELD_METRICS_DIR_ENV = "SHELFCAST_HELD_METRICS_DIR"  # the directory this master holds (kept across SIGHUP's reads)
GIL_SWITCH_INTERVAL_S = 0.001  # see the module docstring
# Fewer workers than cores: not pinned, so a worker's other threads (event delivery, BLAS) keep the spare cores.
PIN_WORKERS = (hasattr(os, "sched_setaffinity") and os.environ.get("SHELFCAST_PIN_WORKERS", "1") != "0"
               and workers >= len(os.sched_getaffinity(0)))
core_of_worker: dict[int, int] = {}  # the master's record: id(worker) -> the core it was given
# gunicorn has no setting for its Server header (upstream, benoitc/gunicorn#825 and #2189: "use a proxy"), and an
# app's own Server header would go out beside gunicorn's, two fields. The issue asks that `make serve`, which has
# no proxy, not name its server, so this module constant (no underscore, read by every Response gunicorn builds)
# is the one rewritten library value in the project; tests/app/test_served_request_bodies.py checks it on a real server.
gunicorn.http.wsgi.SERVER = "shelfcast"


def inherits_its_sockets(environ=os.environ) -> bool:
    """Whether gunicorn is handed listening sockets rather than binding them: systemd socket activation
    (LISTEN_FDS) or a USR2 upgrade (GUNICORN_FD, the old master still listening). The address is then taken on
    purpose."""
    return bool(environ.get("LISTEN_FDS", "").strip() or environ.get("GUNICORN_FD", "").strip())


def halt_once(server) -> None:
    """gunicorn stops the master when a worker exits with its boot-error status (3), and reaps the other workers in
    that stop: another that failed to boot too (every worker meets the same bad setting, unwritable folder or
    open-file limit) raised the same HaltServer inside the stop, out of gunicorn's handling: a 30-line traceback
    after the one line that said what to change (2 of 4 starts with 2 workers, 4 of 4 with 4). Once the master
    stops, a worker's boot error has been said (its own line and gunicorn's "exited with code 3"): none is raised."""
    from gunicorn.errors import HaltServer

    if not (hasattr(server, "stop") and hasattr(server, "reap_workers")):
        return  # not gunicorn's Arbiter (a test's stand-in for it): nothing reaps there
    stop, reap = server.stop, server.reap_workers
    stopping: list[bool] = []

    def stop_and_remember(graceful=True):
        stopping.append(True)
        return stop(graceful)

    def reap_workers():
        try:
            reap()
        except HaltServer:
            if not stopping:
                raise

    server.stop, server.reap_workers = stop_and_remember, reap_workers


def on_starting(server):
    """Counts from an earlier run must not be added to this one's; the address must be free. A server refused here
    never runs on_exit: the metrics directory it made goes now (it names no master yet, so no later start would
    take it for an orphan: each refused start left one in the temporary directory). And the master halts once
    (halt_once)."""
    halt_once(server)
    try:
        _prepare(server)
    except BaseException:
        if MADE_METRICS_DIR_NOW:  # never one inherited (a USR2 upgrade's new master: the old one's, in use)
            shutil.rmtree(METRICS_DIR, ignore_errors=True)
        raise


def _prepare(server):
    """on_starting's work. The address is checked for any number of workers: a single worker shares the master's
    socket, and gunicorn itself, finding the port taken, logged two errors a second for 5 s and then "Can't
    connect to ('127.0.0.1', 5005)"."""
    from app.address import refuse_a_taken_address

    settle_reuse_port(server.cfg)
    if not inherits_its_sockets():
        for address in server.cfg.bind:
            if is_tcp(address):
                try:
                    refuse_a_taken_address(address)
                except (BindAddressError, CannotListenAt) as refused:  # malformed: refused as this file was read
                    raise RuntimeError(bind_refusal(address, refused)) from None
    from app.gunicorn_worker import RELOAD_MARKER
    from app.metrics_files import DirectoryInUse, claim, clear, disown, hold, remove_orphaned

    try:
        METRICS_DIR.mkdir(parents=True, exist_ok=True)
        # one server per directory: a second one given it emptied it, deleting the first one's live counts
        held_metrics_dir.append(hold(METRICS_DIR))
        os.environ[HELD_METRICS_DIR_ENV] = str(METRICS_DIR)
        clear(METRICS_DIR)
        (METRICS_DIR / RELOAD_MARKER).unlink(missing_ok=True)  # an earlier server's: pids that may be reused
        if OWN_METRICS_DIR:  # named for the master (after any daemonizing fork), which removes it on exit
            claim(METRICS_DIR, os.getpid())
        else:
            disown(METRICS_DIR)
    except DirectoryInUse as exc:
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR: {exc}; give each server a directory of its own (unset: "
                           "a new one for each)") from None
    except OSError as exc:  # e.g. another user's directory: a PermissionError traceback from metrics_files
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR={METRICS_DIR}: cannot keep this server's metrics there "
                           f"({exc.strerror or exc}: {exc.filename or METRICS_DIR})") from None
    # a SIGKILLed master never ran on_exit: its directory is removed here, at the next start of any server
    for orphan in remove_orphaned(tempfile.gettempdir(), METRICS_DIR_PREFIX):
        server.log.info("removed %s, the metrics directory of a server that is gone", orphan)
    if OWN_CONTROL_SOCKET:  # and the control socket it left (the default ones' folder only)
        for orphan in remove_dead_control_sockets(os.path.dirname(control_socket)):
            server.log.info("removed %s, the control socket of a server that is gone", orphan)


def when_ready(server):
    """Say where it serves: with a socket per worker (SO_REUSEPORT) gunicorn's own "Listening at:" line is empty.
    And, once per master (before its first fork; a SIGHUP does not run this again), release the stop signals pre_fork
    holds as each fork returns in the master (app/gunicorn_worker.py hold_stop_signals): gunicorn has no hook there."""
    from app.gunicorn_worker import release_stop_signals

    os.register_at_fork(after_in_parent=release_stop_signals)
    for address in server.cfg.bind:
        server.log.info("Shelfcast serves at %s (%d workers)", shown(address, "https" if server.cfg.is_ssl else "http"),
                        server.cfg.workers)


def ssl_context(conf, default_ssl_context_factory):
    """gunicorn's TLS context (given --certfile/--keyfile), a peer's end of the stream without TLS' close_notify taken
    as an end rather than as an error, which OpenSSL 3 makes fatal: a read side the worker shuts itself (a header or
    body deadline, app/request_buffer.py) reads as such an end, and the connection could then send nothing more,
    its 408 neither. Requests are framed by HTTP (Content-Length, chunks), so one cut short is still told apart, as
    with gunicorn's own suppress_ragged_eofs (on by default). The option exists only in a Python built on OpenSSL 3;
    before it, such an end is no fatal error (suppress_ragged_eofs takes it), so there is nothing to set (read
    unconditionally, the hook raised AttributeError on every connection there)."""
    context = default_ssl_context_factory()
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context


def pre_fork(server, worker):
    """Master, before the fork: the core this worker is to run on (see the module docstring); and the stop signals
    held until the worker's own handlers are in (app/gunicorn_worker.py hold_stop_signals; only for a worker of that
    class, which releases them: one of another class given --worker-class would never see a SIGTERM)."""
    from app.gunicorn_worker import ThreadWorker, hold_stop_signals

    restore_metrics_dir(server)
    if isinstance(worker, ThreadWorker):
        hold_stop_signals()
    if PIN_WORKERS:
        core_of_worker[id(worker)] = least_used_core(sorted(os.sched_getaffinity(0)), core_of_worker.values())


def restore_metrics_dir(server) -> None:
    """Master, before each fork: METRICS_DIR made again, held and named as at start, where it was removed while the
    server ran (by hand, or a /tmp cleaner; a worker may have made it again since: app/metrics.py labelled). Before,
    the next worker could not make its metric files, failed to boot, and gunicorn stopped the whole server; the
    counts so far are lost either way (/metrics answers 503 while the directory is missing)."""
    from app.metrics_files import SERVER_LOCK, claim, disown, hold, restore

    if os.environ.get(HELD_METRICS_DIR_ENV) != str(METRICS_DIR):  # not a master that took it at start (tests)
        return
    try:
        restore(METRICS_DIR)
        if (METRICS_DIR / SERVER_LOCK).exists():  # the one held since the start (whose file a SIGHUP's read forgot)
            return
        while held_metrics_dir:  # the lock file went with the old directory
            os.close(held_metrics_dir.pop())
        held_metrics_dir.append(hold(METRICS_DIR))
        claim(METRICS_DIR, os.getpid()) if OWN_METRICS_DIR else disown(METRICS_DIR)
    except (OSError, RuntimeError) as exc:  # DirectoryInUse among them: the worker's start says the rest
        server.log.error("PROMETHEUS_MULTIPROC_DIR=%s was removed while the server ran and cannot be made again: %s",
                         METRICS_DIR, exc)
        return
    server.log.warning("PROMETHEUS_MULTIPROC_DIR=%s was removed while the server ran: made again; /metrics counts "
                       "from 0 in the workers started since (kill -HUP to restart them all now)", METRICS_DIR)


def least_used_core(cores: list[int], taken) -> int:
    """The core in ``cores`` that fewest entries of ``taken`` name; the lowest among equals."""
    held = collections.Counter(taken)
    return min(cores, key=lambda core: (held[core], core))


replaced_in_reload: set[int] = set()  # master (and the workers it forks): the workers the SIGHUP in progress replaces


def on_reload(server):
    """SIGHUP, before the new workers fork: name the old ones (RELOAD_MARKER), which keep serving until the new ones
    listen (app/gunicorn_worker.py handle_exit), and whose presence makes each new worker open its socket only once
    its app has loaded (post_fork). Before, gunicorn stopped the old workers at once and the new ones listened at
    the fork: every request of the reload waited for their load (4.8-6.1 s for a tiny model, up to 7.2 s at
    Favorita's width)."""
    from app.gunicorn_worker import RELOAD_MARKER

    settle_reuse_port(server.cfg)  # gunicorn has just read this file again: its reuse_port, not the settled one
    replaced_in_reload.clear()
    # only workers of a class that hands over (the master's objects of the running workers' class): after an
    # upgrade from a version without it, the old ones stop at once, and the new ones must listen at the fork
    replaced_in_reload.update(pid for pid, worker in server.WORKERS.items() if hasattr(worker, "exit_once_replaced"))
    staging = METRICS_DIR / f".{RELOAD_MARKER}.{os.getpid()}"
    try:
        staging.write_text(json.dumps({"replaced": sorted(replaced_in_reload), "workers": server.cfg.workers}),
                           "utf-8")
        os.replace(staging, METRICS_DIR / RELOAD_MARKER)
    except OSError as exc:  # an exception here would stop the master: the old workers stop at once, as before
        replaced_in_reload.clear()
        server.log.warning("reload: the old workers stop at once (cannot write %s: %s)", staging, exc)


def post_fork(server, worker):
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if server.cfg.reuse_port and (0 < len(server.WORKERS) < server.num_workers
                                  or replaced_in_reload & set(server.WORKERS)):
        # A replacement beside live workers (this child's copy of WORKERS holds the others). gunicorn opened its
        # socket at the fork, before the app loads (seconds; 20-40 s for a Favorita-size model beside its
        # candidates): the kernel would hash new connections to it meanwhile and they would wait unanswered. It
        # listens once the app can answer (post_worker_init); until then the live workers take every new
        # connection. The same in a reload (SIGHUP) while a worker it replaces lives: those serve until the new ones
        # listen (on_reload). Not at start-up or when every worker died (nothing else listens: its socket queues them).
        for listener in worker.sockets:
            listener.close()
        worker.sockets = []
    core = core_of_worker.get(id(worker))
    if core is not None:
        try:
            os.sched_setaffinity(0, {core})
        except OSError as exc:  # a core taken away since: run unpinned rather than not at all
            server.log.warning("worker %s: not pinned to core %s (%s)", os.getpid(), core, exc)
        else:
            server.log.info("worker %s runs on core %s", os.getpid(), core)


def post_worker_init(worker):
    """The app is created and its bundle loaded: what exists now lives as long as the worker. With a socket per
    worker, this worker's socket opens now (see post_fork), set as gunicorn sets the ones it opens at the fork
    (app/address.py listen_beside: gunicorn has no public call for it). Should the address be taken meanwhile (by
    another user's program: our live workers hold it), this worker exits and gunicorn starts another."""
    from app.address import listen_beside

    gc.freeze()
    if worker.cfg.reuse_port and not worker.sockets:
        try:
            worker.sockets = [listen_beside(address, worker.cfg.backlog) for address in worker.cfg.bind]
        except OSError as exc:
            worker.log.error("worker %s: cannot listen at %s: %s", os.getpid(), ", ".join(worker.cfg.bind), exc)
            raise SystemExit(1) from None
        worker.wait_fds = worker.sockets + [worker.PIPE[0]]


def on_exit(server):
    while held_metrics_dir:
        os.close(held_metrics_dir.pop())
    if OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


def child_exit(server, worker):
    from app.metrics_files import retire_process

    core_of_worker.pop(id(worker), None)  # its core goes to the next worker started
    try:
        retire_process(worker.pid, METRICS_DIR)  # its counts folded into retired.json (app/metrics_files.py)
    except OSError as exc:  # before: "Unhandled exception in main loop", and the master, so the server, stopped
        server.log.error("worker %s: its metrics not folded into %s (%s: %s); its files stay and /metrics still "
                         "counts them", worker.pid, METRICS_DIR / "retired.json", exc.strerror or exc,
                         exc.filename or METRICS_DIR)


def worker_exit(server, worker):
    """Flush this worker's prediction events before it goes."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("shelfcast") if app is not None else None
    if state is not None:
        state.close()
