"""Settings from the environment, and production defaults: debug is never on, limits are enforced."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from app.config import AppSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_work_on_a_laptop():
    settings = AppSettings.from_environment({})
    assert settings.model_dir == Path("models/production")
    assert settings.max_batch == 1000 and settings.max_body_bytes == 1024 * 1024 and settings.reload_interval_s == 5.0
    assert settings.body_timeout_s == settings.header_timeout_s == 10.0  # as deploy/nginx.conf's client_*_timeout


def test_the_environment_overrides_each_setting():
    settings = AppSettings.from_environment({"SHELFCAST_MODEL_DIR": "/srv/model", "SHELFCAST_RELOAD_INTERVAL_S": "0.5",
                                             "SHELFCAST_MAX_BATCH": "10", "SHELFCAST_MAX_BODY_BYTES": "4096"})
    assert settings == AppSettings(Path("/srv/model"), 0.5, 10, 4096)


def test_the_header_and_body_timeouts_are_the_compose_proxys():
    """Behind deploy/nginx.conf or not, a client gets the same time for its headers; a body gets as long a pause
    between two reads as the app gives it in all (nginx has no bound on a whole body: README "The web app")."""
    import re

    from app.config import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S

    nginx = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    seconds = {name: float(value) for name, value in re.findall(r"client_(header|body)_timeout (\d+)s;", nginx)}
    assert seconds == {"header": DEFAULT_HEADER_TIMEOUT_S, "body": DEFAULT_BODY_TIMEOUT_S}


def test_the_header_bound_is_the_compose_proxys():
    """Behind deploy/nginx.conf or not, a request's header fields are bounded in all by the same ~32 KiB: nginx's
    large_client_header_buffers (number x size), the app's SHELFCAST_MAX_HEADER_BYTES (app/gunicorn_worker.py)."""
    import re

    from app.config import DEFAULT_MAX_HEADER_BYTES

    nginx = (REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    number, size = re.search(r"^\s*large_client_header_buffers (\d+) (\d+)k;", nginx, re.M).groups()
    assert int(number) * int(size) * 1024 == DEFAULT_MAX_HEADER_BYTES
    assert AppSettings.from_environment({}).max_header_bytes == DEFAULT_MAX_HEADER_BYTES
    assert AppSettings.from_environment({"SHELFCAST_MAX_HEADER_BYTES": "65536"}).max_header_bytes == 65536


@pytest.mark.parametrize("name, value", [("SHELFCAST_RELOAD_INTERVAL_S", "soon"), ("SHELFCAST_RELOAD_INTERVAL_S", "-1"),
                                         ("SHELFCAST_MAX_BATCH", "0"), ("SHELFCAST_MAX_BATCH", "2.5"),
                                         ("SHELFCAST_MAX_BODY_BYTES", "1MB"), ("SHELFCAST_BODY_TIMEOUT_S", "0"),
                                         ("SHELFCAST_HEADER_TIMEOUT_S", "10s"), ("SHELFCAST_HEADER_TIMEOUT_S", "0"),
                                         # accepted before: the deadline thread died of OverflowError at every
                                         # request (a traceback each), and with it the bound on a trickling body
                                         ("SHELFCAST_HEADER_TIMEOUT_S", "inf"), ("SHELFCAST_BODY_TIMEOUT_S", "inf"),
                                         ("SHELFCAST_BODY_TIMEOUT_S", "1e10"), ("SHELFCAST_HEADER_TIMEOUT_S", "3601"),
                                         ("SHELFCAST_MAX_HEADER_BYTES", "32k"), ("SHELFCAST_MAX_HEADER_BYTES", "100"),
                                         # taken before: the app never looked for a promote again, nor for
                                         # a good release once production was refused
                                         ("SHELFCAST_RELOAD_INTERVAL_S", "inf"),
                                         ("SHELFCAST_RELOAD_INTERVAL_S", "1e400"),
                                         ("SHELFCAST_RELOAD_INTERVAL_S", "3601"),
                                         ("SHELFCAST_SERIES_CACHE_ENTRIES", "-1"),
                                         ("SHELFCAST_SERIES_CACHE_ENTRIES", "4k"),
                                         ("SHELFCAST_SERIES_CACHE_ENTRIES", "2.5")])
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        AppSettings.from_environment({name: value})


@pytest.mark.parametrize("entries", [0, 2, 4096])
def test_the_series_cache_setting_bounds_each_loaded_bundles_cache(make_app, production_dir, app_bundles, entries):
    """The store×items whose feature columns a loaded bundle keeps (pipeline/served_features.py) were a constant,
    4,096: ~19 MB a bundle, whatever the host; a team serving Favorita's ~210,000 store×items on a large host, or a
    small container, could not size it. SHELFCAST_SERIES_CACHE_ENTRIES sizes it for production and the candidates
    alike: 0 keeps none; N at most N, the most recently asked."""
    from app.variants import goes_to_canary
    from pipeline.bundle import copy_bundle
    from pipeline.release_store import ReleaseStore

    copy_bundle(app_bundles[1], production_dir.parent / "canary")
    ReleaseStore(production_dir.parent).set_canary_share(0.5)
    settings = AppSettings.from_environment({"SHELFCAST_SERIES_CACHE_ENTRIES": str(entries)})
    assert settings.series_cache_entries == entries
    served = make_app(production_dir, series_cache_entries=settings.series_cache_entries)
    models = {False: served.model, True: served.state.variants.canary_model()}
    first = models[False].first_date.isoformat()
    asked = {False: [], True: []}  # each model's series, in the order asked
    for store in sorted(models[False].catalog.stores):
        for item in sorted(models[False].catalog.items):
            body = {"instances": [{"store_nbr": store, "item_nbr": item, "date": first, "onpromotion": False}]}
            assert served.client.post("/api/v1/predict", json=body).status_code == 200
            asked[goes_to_canary(store, item, 0.5)].append((store, item))
    for to_canary, model in models.items():
        assert len(asked[to_canary]) > 2 and model.served_features.max_series == entries
        assert list(model.served_features._series) == asked[to_canary][len(asked[to_canary]) - entries:] \
            if entries else len(model.served_features) == 0


def test_debug_is_off_even_when_flask_debug_is_set(monkeypatch, make_app, production_dir):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    served = make_app(production_dir)
    assert served.app.debug is False and served.app.config["DEBUG"] is False


def test_an_unexpected_error_is_a_clean_500_without_a_traceback(served, monkeypatch):
    import app.routes_api as routes_api

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(routes_api, "predict_with_variants", broken)
    model = served.model
    response = served.client.post("/api/v1/predict", json={"instances": [{
        "store_nbr": next(iter(model.catalog.stores)), "item_nbr": next(iter(model.catalog.items)),
        "date": model.first_date.isoformat(), "onpromotion": False}]})
    assert response.status_code == 500
    assert response.json["code"] == "internal_error" and response.json["request_id"]
    assert b"secret internals" not in response.data and b"Traceback" not in response.data


def gunicorn_conf(monkeypatch, tmp_path):
    """app/gunicorn_conf.py as gunicorn loads it: a fresh module, reading the environment now. Its metrics
    directory is the test's own (else it makes one and sets PROMETHEUS_MULTIPROC_DIR for every later test)."""
    import importlib.util

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    path = Path(__file__).resolve().parents[2] / "app" / "gunicorn_conf.py"
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", path)
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_gunicorn_settings_are_production_ones(monkeypatch, tmp_path):
    monkeypatch.delenv("SHELFCAST_BIND", raising=False)
    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert conf.bind.endswith(":5005") and conf.preload_app is False
    assert conf.worker_class == "app.gunicorn_worker.ThreadWorker"  # gthread, its graceful closes elsewhere
    assert "FLASK_DEBUG=0" in conf.raw_env


def test_empty_server_settings_mean_their_defaults_and_a_bad_count_names_its_variable(monkeypatch, tmp_path):
    """CI systems pass unset variables as empty: an empty SHELFCAST_BIND listened nowhere ('Listening at:  '),
    an empty SHELFCAST_WORKERS was a ValueError traceback."""
    import os

    for name in ("SHELFCAST_BIND", "SHELFCAST_WORKERS", "SHELFCAST_THREADS"):
        monkeypatch.setenv(name, "")
    from app.config import engine_cores

    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert conf.bind == "127.0.0.1:5005" and conf.threads == 8
    assert conf.workers == engine_cores().usable_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("SHELFCAST_WORKERS", "two")
    with pytest.raises(SystemExit, match="^Error: SHELFCAST_WORKERS=two: not a number of worker processes"):
        gunicorn_conf(monkeypatch, tmp_path)


def test_the_worker_count_is_read_by_one_definition_on_the_apps_side(monkeypatch, tmp_path):
    """gunicorn's worker count (app/gunicorn_conf.py) and the workers app/launch.py waits for are one count:
    engine/cores.py was loaded by its path in two near-copies of a loader, one in each, and SHELFCAST_WORKERS parsed
    apart in each (launch.py took `abc` for one per core, gunicorn_conf a traceback); now app/config.py's
    ``worker_count`` (the master imports that file already) is the one, and both use it."""
    from app import config, launch

    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert conf.worker_count is launch.worker_count is config.worker_count
    assert config.engine_cores().__file__ == str(REPO / "engine" / "cores.py")
    readers = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "app").rglob("*.py")
                     if '"SHELFCAST_WORKERS"' in path.read_text(encoding="utf-8"))
    assert readers == ["app/config.py"]
    loaders = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "app").rglob("*.py")
                     if "spec_from_file_location" in path.read_text(encoding="utf-8"))
    assert loaders == ["app/config.py"]


def test_gunicorn_says_where_it_serves(monkeypatch, tmp_path):
    """With a socket per worker gunicorn logged 'Listening at:  (pid)': make run never said where it served."""
    from types import SimpleNamespace

    conf = gunicorn_conf(monkeypatch, tmp_path)
    said = []
    server = SimpleNamespace(cfg=SimpleNamespace(bind=["127.0.0.1:5005"], workers=2, is_ssl=False),
                             log=SimpleNamespace(info=lambda message, *args: said.append(message % args)))
    conf.when_ready(server)
    assert said == ["Shelfcast serves at http://127.0.0.1:5005 (2 workers)"]


def test_the_tls_context_hook_works_with_an_openssl_that_has_no_unexpected_eof_option(monkeypatch, tmp_path):
    """ssl.OP_IGNORE_UNEXPECTED_EOF exists only where Python was built on OpenSSL 3 (RHEL 8's python3.11 links
    OpenSSL 1.1.1, where a peer's end without close_notify is no fatal error and suppress_ragged_eofs covers it).
    Read unconditionally, gunicorn's ssl_context hook raised AttributeError there on every connection: TLS served
    nothing. The option is set where it exists, and the context is gunicorn's own either way."""
    import ssl

    conf = gunicorn_conf(monkeypatch, tmp_path)
    made = []

    def factory():
        made.append(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        return made[-1]

    context = conf.ssl_context(None, factory)
    assert context is made[-1] and context.options & ssl.OP_IGNORE_UNEXPECTED_EOF
    monkeypatch.delattr(ssl, "OP_IGNORE_UNEXPECTED_EOF")  # as ssl is on an OpenSSL before 3.0
    context = conf.ssl_context(None, factory)
    assert context is made[-1] and isinstance(context, ssl.SSLContext)


def test_a_worker_listens_only_once_its_app_can_answer(monkeypatch, tmp_path):
    """With a socket per worker gunicorn opens a new worker's socket at the fork: while a replacement loaded a
    Favorita-size model (20-40 s), the kernel hashed a share of new connections to it and they hung (a third of
    fresh connections for up to 33 s after a worker was killed). post_fork closes it, post_worker_init opens it."""
    import socket
    from types import SimpleNamespace

    import gunicorn.glogging
    import gunicorn.sock
    from gunicorn.config import Config

    from app.launch import free_port, listening_sockets

    conf = gunicorn_conf(monkeypatch, tmp_path)
    port = free_port()
    cfg = Config()
    cfg.set("bind", [f"127.0.0.1:{port}"])
    cfg.set("reuse_port", True)
    log = gunicorn.glogging.Logger(cfg)
    worker = SimpleNamespace(cfg=cfg, log=log, sockets=gunicorn.sock.create_sockets(cfg, log), PIPE=os.pipe())
    try:
        assert listening_sockets(port) == 1
        # at start-up, when every worker died, in a reload (SIGHUP: the old workers about to stop): it keeps
        # listening, since nothing else would (a refused connection instead of one that waits for the load)
        for others in ({}, {1: "old", 2: "old"}, {1: "old", 2: "old", 3: "new"}):
            conf.post_fork(SimpleNamespace(cfg=cfg, log=log, WORKERS=others, num_workers=2), worker)
            assert len(worker.sockets) == 1 and listening_sockets(port) == 1
        # a replacement beside a live worker: (not pinned: no core was chosen for it)
        conf.post_fork(SimpleNamespace(cfg=cfg, log=log, WORKERS={1: "live"}, num_workers=2), worker)
        assert worker.sockets == [] and listening_sockets(port) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        conf.post_worker_init(worker)
        assert listening_sockets(port) == 1
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # set as gunicorn sets the sockets it opens at the fork, and, as its worker makes those, not inherited by a
        # program the worker runs (gunicorn.sock.create_sockets, called here before, left it inheritable: such a
        # program would have held the port open after the worker exited)
        [listener] = worker.sockets
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) and listener.getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY) and listener.getblocking() is False
        assert not listener.get_inheritable()
    finally:
        __import__("gc").unfreeze()  # post_worker_init froze this test process's heap
        for listener in worker.sockets:
            listener.close()
        for fd in worker.PIPE:
            os.close(fd)


def test_gunicorn_refuses_an_address_another_server_listens_on(monkeypatch, tmp_path):
    """Workers bind with SO_REUSEPORT (one socket each, connections spread by the kernel), which alone
    would let a second server share the port: the master checks first."""
    import socket

    import pytest

    from app.address import refuse_a_taken_address

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(RuntimeError, match="another server"):
            refuse_a_taken_address(address)
    refuse_a_taken_address(address)  # free again


def test_a_server_started_on_a_taken_port_says_so_in_one_line_and_exits(tmp_path):
    """Found by a probe (a second server on one host, one worker): gunicorn itself logged "Connection in use" and
    "connection to ... failed" each second for 5 s, then "Can't connect to ('127.0.0.1', PORT)". The master now
    checks the address whatever the number of workers."""
    import socket
    import subprocess

    from app import launch

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "SHELFCAST_BIND": f"127.0.0.1:{port}", "SHELFCAST_WORKERS": "1",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c")}
        done = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, env=env, capture_output=True, text=True,
                              timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line or "Error" in line]
    assert done.returncode != 0, done.stderr
    assert errors == [f"Error: SHELFCAST_BIND=127.0.0.1:{port}: cannot serve there: Address already in use (is "
                      "another server running there? stop it, or serve at a free port, e.g. "
                      f"SHELFCAST_BIND=127.0.0.1:{port + 1})"], done.stderr


def test_a_refused_bind_address_names_the_setting_that_gave_it(monkeypatch, tmp_path):
    """The master's refusals name where the address came from: SHELFCAST_BIND, "(the default)" when unset (a second
    `make serve` on a host), or --bind where the command line or GUNICORN_CMD_ARGS overrode it; an address that is
    none of this machine's is told to choose one that is. Before, each named the address alone."""
    import errno
    import subprocess

    from app import launch
    from app.address import CannotListenAt

    monkeypatch.delenv("SHELFCAST_BIND", raising=False)
    conf = gunicorn_conf(monkeypatch, tmp_path)
    in_use = CannotListenAt("127.0.0.1:5005", OSError(errno.EADDRINUSE, "Address already in use"))
    assert conf.bind_refusal("127.0.0.1:5005", in_use) == (
        "SHELFCAST_BIND=127.0.0.1:5005 (the default): cannot serve there: Address already in use (is another server "
        "running there? stop it, or serve at a free port, e.g. SHELFCAST_BIND=127.0.0.1:5006)")
    elsewhere = CannotListenAt("[::1]:8080", OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
    assert conf.bind_refusal("[::1]:8080", elsewhere) == (
        "--bind [::1]:8080: cannot serve there: Cannot assign requested address; choose an address of this machine, "
        "e.g. --bind 127.0.0.1:5005 (0.0.0.0:5005: every interface)")
    env = {**os.environ, "GUNICORN_CMD_ARGS": "--bind 127.0.0.1:99999", "SHELFCAST_WORKERS": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"), "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c")}
    done = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and [line for line in done.stderr.splitlines() if "rror" in line] == [
        "Error: --bind 127.0.0.1:99999: '99999' is no port number (0 to 65535); write HOST:PORT, e.g. "
        "--bind 127.0.0.1:5005"], done.stderr


def test_a_refused_address_the_command_line_repeats_from_shelfcast_bind_names_the_command_line(tmp_path):
    """--bind given the address SHELFCAST_BIND also holds is still the command line's: it replaces SHELFCAST_BIND,
    and the fix is to change it there. Before, the refusal credited SHELFCAST_BIND (told by the address alone), so
    changing SHELFCAST_BIND as it said changed nothing; both ways gunicorn reads a command line are tried."""
    import socket
    import subprocess

    from app import launch

    env = {**os.environ, "SHELFCAST_WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
           "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c")}
    env.pop("GUNICORN_CMD_ARGS", None)
    bad = "127.0.0.1:99999"
    done = subprocess.run([*launch.gunicorn_command(), "--bind", bad], cwd=launch.REPO,
                          env={**env, "SHELFCAST_BIND": bad}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and [line for line in done.stderr.splitlines() if "rror" in line] == [
        f"Error: --bind {bad}: '99999' is no port number (0 to 65535); write HOST:PORT, e.g. "
        "--bind 127.0.0.1:5005"], done.stderr
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        done = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, capture_output=True, text=True, timeout=60,
                              env={**env, "SHELFCAST_BIND": taken, "GUNICORN_CMD_ARGS": f"--bind {taken}"})
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line or "Error" in line]
    assert done.returncode != 0 and len(errors) == 1 and f"Error: --bind {taken}: cannot serve there" in errors[0], (
        done.stderr)
    assert "e.g. --bind 127.0.0.1:" in errors[0], errors


@pytest.mark.parametrize("count", ["abc", "-1", "0", "2.5", "257"])
def test_make_serve_refuses_a_bad_worker_count_in_one_line_naming_the_setting_and_the_fix(tmp_path, count):
    """Before: "Failed to read config file" and a RuntimeError traceback (`abc`, `-1`, `2.5`), one per core (`0`)."""
    from app import launch
    from tests.app.make_serve import make_serve

    status, lines = make_serve(tmp_path, {"SHELFCAST_WORKERS": count,
                                          "SHELFCAST_BIND": f"127.0.0.1:{launch.free_port()}"})
    assert status != 0 and lines == [f"Error: SHELFCAST_WORKERS={count}: not a number of worker processes (1 to 256, "
                                     "each loads the model); write a whole number, e.g. SHELFCAST_WORKERS=2, or leave "
                                     "it unset: one per core"], lines


@pytest.mark.parametrize("count", ["eight", "0", "-1", "2.5", "513"])
def test_a_bad_thread_count_is_refused_in_one_line(monkeypatch, tmp_path, count):
    """0 silently meant one thread, 1025 and more were taken (a thread each, made as clients come)."""
    monkeypatch.setenv("SHELFCAST_THREADS", count)
    with pytest.raises(SystemExit, match=rf"^Error: SHELFCAST_THREADS={re.escape(count)}: not a number of connection "
                                         r"threads per worker \(1 to 512\); write a whole number, e\.g\. "
                                         r"SHELFCAST_THREADS=8 "):
        gunicorn_conf(monkeypatch, tmp_path)


@pytest.mark.parametrize("count, threads", [("1", 1), (" 16 ", 16), ("512", 512), ("", 8)])
def test_a_thread_count_from_1_to_512_is_taken(count, threads):
    from app.config import thread_count

    assert thread_count({"SHELFCAST_THREADS": count}) == threads


def test_a_count_thousands_of_digits_long_is_refused_in_one_line_not_a_traceback(monkeypatch, tmp_path):
    """Found by a probe: int() reads at most 4,300 digits, and SHELFCAST_WORKERS or SHELFCAST_THREADS of 5,000 nines
    was its ValueError, "Failed to read config file" and a traceback. Leading zeros still read as before."""
    many = "9" * 5000
    monkeypatch.setenv("SHELFCAST_WORKERS", many)
    with pytest.raises(SystemExit, match="^Error: SHELFCAST_WORKERS=9+: not a number of worker processes"):
        gunicorn_conf(monkeypatch, tmp_path)
    monkeypatch.setenv("SHELFCAST_WORKERS", "0002")
    monkeypatch.setenv("SHELFCAST_THREADS", many)
    with pytest.raises(SystemExit, match="^Error: SHELFCAST_THREADS=9+: not a number of connection threads"):
        gunicorn_conf(monkeypatch, tmp_path)
    monkeypatch.setenv("SHELFCAST_THREADS", "0016")
    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert (conf.workers, conf.threads) == (2, 16)


def test_launch_refuses_a_bad_worker_count_as_gunicorn_does_starting_nothing(tmp_path):
    """launch.py read SHELFCAST_WORKERS apart: `abc` was one per core there, and it waited for a server that had
    exited with a traceback."""
    from app import launch

    with pytest.raises(SettingsError, match="^SHELFCAST_WORKERS=abc: not a number of worker processes"):
        launch.start({"SHELFCAST_WORKERS": "abc"}, tmp_path / "gunicorn.log")
    assert not (tmp_path / "gunicorn.log").exists()


def test_a_server_refused_at_start_leaves_no_metrics_directory_behind(tmp_path):
    """Found by a probe: the metrics directory a server makes (shelfcast-metrics-* in the temporary directory)
    stayed when the server was refused at start (a taken port, a metrics directory in use): on_exit never runs
    then, and the directory names no master yet, so no later start removed it."""
    import socket
    import subprocess

    from app import launch

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        env = {**os.environ, "SHELFCAST_BIND": f"127.0.0.1:{other.getsockname()[1]}", "SHELFCAST_WORKERS": "1",
               "PROMETHEUS_MULTIPROC_DIR": "", "SHELFCAST_OWN_METRICS_DIR": "", "TMPDIR": str(tmp_path),
               "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c")}
        done = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, env=env, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode != 0 and "cannot serve there" in done.stderr, done.stderr
    assert not list(tmp_path.glob("shelfcast-metrics-*"))


def test_sockets_handed_to_gunicorn_are_not_refused_as_taken(monkeypatch, tmp_path):
    """systemd socket activation (LISTEN_FDS) and a USR2 upgrade (GUNICORN_FD) hand gunicorn an address already
    listening: the check must not refuse it."""
    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert not conf.inherits_its_sockets({})
    assert conf.inherits_its_sockets({"LISTEN_FDS": "1"}) and conf.inherits_its_sockets({"GUNICORN_FD": "5"})
    assert not conf.inherits_its_sockets({"LISTEN_FDS": "", "GUNICORN_FD": " "})


def test_gunicorn_gives_each_new_worker_the_least_used_core(monkeypatch, tmp_path):
    """pre_fork (master) records a core per worker; child_exit frees it for the worker that replaces it."""
    import types

    monkeypatch.setenv("SHELFCAST_PIN_WORKERS", "1")
    monkeypatch.delenv("SHELFCAST_WORKERS", raising=False)  # one per core
    conf = gunicorn_conf(monkeypatch, tmp_path)
    monkeypatch.setattr(conf.os, "sched_getaffinity", lambda pid: {4, 7})
    workers = [types.SimpleNamespace(pid=10_000_000 + k) for k in range(3)]
    for worker in workers:
        conf.pre_fork(None, worker)
    assert [conf.core_of_worker[id(w)] for w in workers] == [4, 7, 4]
    conf.child_exit(None, workers[1])  # the only worker on core 7 dies
    replacement = types.SimpleNamespace(pid=10_000_003)
    conf.pre_fork(None, replacement)
    assert conf.core_of_worker[id(replacement)] == 7 and id(workers[1]) not in conf.core_of_worker


@pytest.mark.parametrize("setting", [{"SHELFCAST_PIN_WORKERS": "0"}, {"SHELFCAST_WORKERS": "1"}],
                         ids=["switched off", "fewer workers than cores"])
def test_gunicorn_leaves_cores_alone_when_pinning_is_off_or_workers_are_fewer_than_cores(monkeypatch, tmp_path,
                                                                                       setting):
    import os
    import types

    if "SHELFCAST_WORKERS" in setting and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    conf = gunicorn_conf(monkeypatch, tmp_path)
    conf.pre_fork(None, types.SimpleNamespace(pid=10_000_000))
    assert conf.core_of_worker == {}


def test_a_home_that_cannot_be_written_puts_the_control_socket_in_the_temporary_directory(monkeypatch, tmp_path):
    """With a read-only or missing HOME gunicorn logged "[ERROR] Control server error: [Errno 13] Permission
    denied: '/nonexistent'" at every start, and had no control socket (`gunicornc` could not reach the server)."""
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("HOME", str(blocker / "home"))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("SHELFCAST_CONTROL_SOCKET", raising=False)
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() reads TMPDIR again
    conf = gunicorn_conf(monkeypatch, tmp_path)
    assert conf.control_socket == str(temp / f"shelfcast-{os.getpid()}.ctl")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gunicorn_conf(monkeypatch, tmp_path).control_socket == str(
        tmp_path / "home" / ".gunicorn" / f"shelfcast-{os.getpid()}.ctl")


@pytest.fixture
def socket_folder():
    """A folder for Unix sockets under /tmp: bind() takes at most 107 bytes of path, which pytest's tmp_path under
    a longer TMPDIR than /tmp (macOS's /var/folders/…, a folder or two deeper) already nearly fills."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="shelfcast-sockets-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_control_sockets_of_servers_that_are_gone_are_removed_and_no_other(monkeypatch, tmp_path, socket_folder):
    """Found by a probe: a SIGKILLed master never removes its control socket, and each such start left one more
    shelfcast-<pid>.ctl in ~/.gunicorn (10 on a shared box after a day of test runs). A socket is removed only
    when its pid runs no process and nothing answers on it."""
    import socket
    import subprocess
    import sys

    conf = gunicorn_conf(monkeypatch, tmp_path)
    gone = [int(pid) for pid in subprocess.run(
        [sys.executable, "-c", "import os\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0: os._exit(0)\n"
         "    os.waitpid(pid, 0); print(pid)"], capture_output=True, text=True, check=True).stdout.split()]
    sockets = socket_folder

    def bound(name: str, listening: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(sockets / name))
        if listening:
            sock.listen()
        return sock

    dead = bound(f"shelfcast-{gone[0]}.ctl")
    dead.close()  # its file stays, as a SIGKILLed master's does
    answering = bound(f"shelfcast-{gone[1]}.ctl", listening=True)  # its name's pid is gone, but it answers
    running = bound(f"shelfcast-{os.getppid()}.ctl")  # a process with that pid runs
    running.close()
    other_name = bound(f"other-{gone[0]}.ctl")
    other_name.close()
    (sockets / f"shelfcast-{gone[2]}.ctl").write_text("")  # not a socket
    try:
        assert conf.remove_dead_control_sockets(str(sockets)) == [str(sockets / f"shelfcast-{gone[0]}.ctl")]
    finally:
        answering.close()
    assert sorted(p.name for p in sockets.iterdir()) == sorted(
        [f"shelfcast-{gone[1]}.ctl", f"shelfcast-{os.getppid()}.ctl", f"other-{gone[0]}.ctl",
         f"shelfcast-{gone[2]}.ctl"])
    assert conf.remove_dead_control_sockets(str(tmp_path / "missing")) == []


def test_an_unexpected_error_on_the_form_page_shows_its_request_id(served, monkeypatch):
    """Found by a probe: the form's 500 page said "internal error; it has been logged with this request id" and
    showed no id (only the X-Request-ID header had it), so a store manager had nothing to quote."""
    import app.routes_web as routes_web

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(routes_web, "predict_with_variants", broken)
    model = served.model
    response = served.client.get("/", query_string={"store": next(iter(model.catalog.stores)),
                                                    "item": next(iter(model.catalog.items)),
                                                    "date": model.first_date.isoformat()})
    assert response.status_code == 500 and response.mimetype == "text/html"
    request_id = response.headers["X-Request-ID"]
    page = response.get_data(as_text=True)
    assert f'<p id="request-id">Request id: <code>{request_id}</code>' in page, page
    assert "secret internals" not in page and "Traceback" not in page
    assert 'id="request-id"' not in served.client.get("/no-such-page").get_data(as_text=True)  # a 404: no id


@pytest.mark.parametrize("how", ["argv", "GUNICORN_CMD_ARGS"])
def test_preload_is_refused_in_one_line_before_the_app_loads_in_the_master(tmp_path, how):
    """--preload created the app, its event sink and the sink's sending thread in the master; the workers forked
    from it shared one sink and had no sending thread (threads do not survive a fork), so events waited unsent."""
    import subprocess

    from app import launch

    env = {**os.environ, "SHELFCAST_WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
           "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c"), "SHELFCAST_BIND": f"127.0.0.1:{launch.free_port()}",
           "SHELFCAST_MODEL_DIR": str(tmp_path / "no-bundle-here")}
    env.pop("GUNICORN_CMD_ARGS", None)
    command = launch.gunicorn_command()
    if how == "argv":
        command = [*command, "--preload"]
    else:
        env["GUNICORN_CMD_ARGS"] = "--preload"
    done = subprocess.run(command, cwd=launch.REPO, env=env, capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "rror" in line]
    assert done.returncode != 0 and len(errors) == 1 and errors[0].startswith("Error: --preload: not supported"), (
        done.stdout + done.stderr)
    assert "remove --preload" in errors[0]
