"""The install scripts `make test` runs where they cannot install: scripts/apt_install.sh (behind install_browser.sh
and install_nginx.sh) as a user who is not root, and install_test_services.sh offline. `make test` goes on, and
says what it skips and how to install it; CI fails instead."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tests.node_packages import FAILED_MARK, REQUIRE_VARIABLE, require_installed

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def as_a_plain_user() -> list[str]:
    """The command prefix that runs a script as a user who is neither root nor has a password-less sudo."""
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        pytest.skip("this user has a password-less sudo: the script would really install")
    return []


def test_apt_install_as_a_user_without_root_or_sudo_skips_with_a_line_naming_what_and_how():
    """It ran `sudo apt-get update`: without sudo, 'sudo: command not found' and exit 127 (.ci/run stopped there,
    make test printed only that Chromium 'could not be installed'); with a sudo that asks a password, a prompt in
    the middle of `make test`."""
    done = subprocess.run([*as_a_plain_user(), "scripts/apt_install.sh", "the widget tests",
                           "shelfcast-no-such-command", "shelfcast-widget"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ("apt_install: not root and no password-less sudo; the widget tests will be "
                                   "skipped (as root: apt-get install shelfcast-widget)")


def offline_copy(tmp_path: Path) -> tuple[Path, dict]:
    """scripts/install_test_services.sh with the two package folders, in ``tmp_path``, and an environment whose npm
    registry refuses connections (as offline: nothing cached, no retries)."""
    if shutil.which("npm") is None:
        pytest.skip("npm not found: nothing to install offline")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "install_test_services.sh", tmp_path / "scripts")
    for folder in ("tests/fluentd_receiver", "tests/e2e/axe"):
        (tmp_path / folder).mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(REPO / folder / name, tmp_path / folder / name)
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "npm_config_registry": f"http://127.0.0.1:{port}/",
           "npm_config_cache": str(tmp_path / "npm-cache"), "npm_config_fetch_retries": "0"}
    return tmp_path, env


def test_make_test_goes_on_offline_with_npm_installed_and_the_tests_skip_naming_npms_error(tmp_path, monkeypatch):
    """`npm ci` without its registry stopped `make test` (set -e) before any test ran, though the script promised
    to skip what it cannot install; and had it gone on, the receiver tests would have failed ('run
    scripts/install_test_services.sh'), not skipped."""
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)  # as a person's make test: .ci/run sets it
    root, env = offline_copy(tmp_path)
    done = subprocess.run(["scripts/install_test_services.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for folder in ("tests/fluentd_receiver", "tests/e2e/axe"):
        assert not (root / folder / "node_modules").exists()  # no half-installed tree to pass for installed
        reason = (root / folder / FAILED_MARK).read_text(encoding="utf-8")
        assert reason.startswith(f"npm ci failed in {folder}: ") and "ECONNREFUSED" in reason, reason
        assert f"npm ci failed in {folder} (" in done.stderr
    receiver = root / "tests/fluentd_receiver"
    with pytest.raises(pytest.skip.Exception, match="@fluent-org/logger is not installed: npm ci failed in tests/"):
        require_installed(receiver / "node_modules" / "@fluent-org" / "logger", receiver, "@fluent-org/logger")


def test_ci_fails_where_the_test_services_cannot_be_installed(tmp_path, monkeypatch):
    """.ci/run sets SHELFCAST_REQUIRE_TEST_SERVICES=1: CI must not pass by skipping the receiver's tests."""
    root, env = offline_copy(tmp_path)
    done = subprocess.run(["scripts/install_test_services.sh"], cwd=root, capture_output=True, text=True,
                          env={**env, REQUIRE_VARIABLE: "1"}, timeout=120)
    assert done.returncode == 1 and f"{REQUIRE_VARIABLE}=1: failing" in done.stderr
    assert f"export {REQUIRE_VARIABLE}=1" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    axe = root / "tests/e2e/axe"
    with pytest.raises(pytest.fail.Exception, match=f"axe-core is not installed: .*ECONNREFUSED.*{REQUIRE_VARIABLE}"):
        require_installed(axe / "node_modules" / "axe-core" / "axe.min.js", axe, "axe-core")


def a_package_served_on_loopback(folder: Path, served: Path, server_port: int) -> None:
    """package.json and package-lock.json in ``folder`` for one dependency, tiny 1.0.0, whose tarball (made here, in
    ``served``) the lock resolves to http://127.0.0.1:<server_port>/: `npm ci` installs it without npm's registry."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tarball:
        for name, body in (("package/package.json", b'{"name": "tiny", "version": "1.0.0"}'),
                           ("package/index.js", b"module.exports = 1;\n")):
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(body), 0o644
            tarball.addfile(member, io.BytesIO(body))
    (served / "tiny-1.0.0.tgz").write_bytes(packed.getvalue())
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(packed.getvalue()).digest()).decode()
    manifest = {"name": "probe", "version": "1.0.0", "private": True, "dependencies": {"tiny": "1.0.0"}}
    lock = {"name": "probe", "version": "1.0.0", "lockfileVersion": 3, "requires": True, "packages": {
        "": {key: manifest[key] for key in ("name", "version", "dependencies")},
        "node_modules/tiny": {"version": "1.0.0", "integrity": integrity,
                              "resolved": f"http://127.0.0.1:{server_port}/tiny-1.0.0.tgz"}}}
    (folder / "package.json").write_text(json.dumps(manifest), encoding="utf-8")
    (folder / "package-lock.json").write_text(json.dumps(lock), encoding="utf-8")


PACKAGE_FOLDERS = ("tests/fluentd_receiver", "tests/e2e/axe")


def install_from_loopback(tmp_path: Path, home: Path, temporary: Path, as_user: tuple[str, ...] = (),
                          owner: int | None = None, unwritable: tuple[Path, ...] = (),
                          ) -> tuple[Path, subprocess.CompletedProcess]:
    """install_test_services.sh (a copy in ``tmp_path``) with HOME ``home``, TMPDIR ``temporary``, and each package
    folder depending on a tarball on loopback; run with the command prefix ``as_user`` after ``tmp_path`` is given to
    ``owner``, all but ``unwritable``, which stay root's."""
    root, env = offline_copy(tmp_path)
    served = tmp_path / "tarballs"
    served.mkdir()
    tarballs = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=tarballs.serve_forever, daemon=True).start()
    for folder in PACKAGE_FOLDERS:
        a_package_served_on_loopback(root / folder, served, tarballs.server_port)
    del env["npm_config_cache"]  # npm's own default: $HOME/.npm
    env.update(HOME=str(home), TMPDIR=str(temporary), npm_config_update_notifier="false")
    if owner is not None:
        for path in (tmp_path, *tmp_path.rglob("*")):
            if not any(path == kept or kept in path.parents for kept in unwritable):
                os.chown(path, owner, owner, follow_symlinks=False)
    try:
        done = subprocess.run([*as_user, "scripts/install_test_services.sh"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        tarballs.shutdown()
    assert done.returncode == 0, done.stderr
    for folder in PACKAGE_FOLDERS:
        assert (root / folder / "node_modules" / "tiny" / "index.js").is_file(), done.stderr
        assert not (root / folder / FAILED_MARK).exists()
    return root, done


def install_where_home_cannot_be_written(tmp_path: Path, temporary: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """install_from_loopback with HOME under a regular file, where no user, root included, can make a folder."""
    (tmp_path / "not-a-folder").write_text("", encoding="utf-8")
    return install_from_loopback(tmp_path, tmp_path / "not-a-folder" / "home", temporary)


def test_npm_ci_where_home_cannot_be_written_caches_under_the_temporary_directory(tmp_path, monkeypatch):
    """npm keeps its cache in ~/.npm: with a read-only or missing HOME (CI runners, service accounts; the engine's
    kernel cache already moves for it) every `npm ci` failed with EACCES, and `make test` skipped the receiver and
    accessibility tests (.ci/run failed). The temporary directory here has a space in its name."""
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    temporary = tmp_path / "temporary files"
    temporary.mkdir()
    _, done = install_where_home_cannot_be_written(tmp_path, temporary)
    cache = temporary / f"shelfcast-npm-{os.getuid()}"
    assert cache.is_dir() and cache.stat().st_mode & 0o777 == 0o700
    assert done.stderr == (f"install_test_services: cannot write npm's cache {tmp_path}/not-a-folder/home/.npm; "
                           f"caching in {cache} instead (set npm_config_cache to keep it elsewhere)\n")


def test_npm_ci_where_home_cannot_be_written_and_tmpdir_names_a_missing_folder_caches_where_the_engine_does(
        tmp_path, monkeypatch):
    """TMPDIR naming a folder not made (a runner's job folder): Python's tempfile, and so the engine's kernel cache,
    passes over it to /tmp; the script made its npm cache folder in it, failed, and npm ci failed with EACCES in the
    unwritable ~/.npm (measured as a user with HOME=/nonexistent: both folders' tests skipped)."""
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    missing = tmp_path / "not made"
    picked = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                            env={"PATH": os.environ["PATH"], "TMPDIR": str(missing)}, capture_output=True, text=True,
                            check=True).stdout.strip()
    ours = Path(picked) / f"shelfcast-npm-{os.getuid()}"
    had = ours.exists() or ours.is_symlink()
    try:
        _, done = install_where_home_cannot_be_written(tmp_path, missing)
        assert f"caching in {picked}/shelfcast-npm-" in done.stderr, done.stderr
    finally:
        if not had and ours.is_dir() and not ours.is_symlink():
            shutil.rmtree(ours)


def test_npm_ci_where_home_cannot_be_written_takes_no_cache_folder_it_does_not_own(tmp_path, monkeypatch):
    """A shared /tmp: another user could hold shelfcast-npm-<uid> first (here a link to a folder of theirs), and
    npm would have cached into it. The script makes a fresh folder of its own instead."""
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    temporary, theirs = tmp_path / "tmp", tmp_path / "theirs"
    temporary.mkdir()
    theirs.mkdir()
    (temporary / f"shelfcast-npm-{os.getuid()}").symlink_to(theirs)
    _, done = install_where_home_cannot_be_written(tmp_path, temporary)
    assert list(theirs.iterdir()) == []
    caches = [path for path in temporary.iterdir() if not path.is_symlink()]
    assert len(caches) == 1 and caches[0].name.startswith("shelfcast-npm-"), caches
    assert caches[0].stat().st_mode & 0o777 == 0o700 and f"caching in {caches[0]} instead" in done.stderr


@pytest.mark.parametrize("store", ["root-owned", "root-owned index-v5", "a file"])
def test_npm_ci_where_home_is_writable_but_npm_s_store_in_it_is_not_caches_under_the_temporary_directory(
        tmp_path, monkeypatch, store):
    """~/.npm could be written, so the cache stayed there, but npm writes into ~/.npm/_cacache: root-owned (a `sudo
    npm install` once; here the script runs as nobody), or a folder in it root-owned, or a file in its place (no
    user can write in it, root included), every `npm ci` failed EACCES/ENOTDIR and the tests that need the packages
    skipped."""
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    as_user, owner, folder = (), None, tmp_path
    if store.startswith("root-owned"):
        if os.getuid() != 0:
            pytest.skip("a root-owned cache folder needs root to make it")
        as_user, owner = tuple(as_a_plain_user()), NOBODY
        # nobody must reach the copy: pytest's own temporary folders are root's alone
        folder = Path(tempfile.mkdtemp(prefix="shelfcast-npm-store-", dir="/tmp"))
        folder.chmod(0o755)
    try:
        home, temporary = folder / "home", folder / "temporary"
        store_path = home / ".npm" / "_cacache"
        (store_path / "index-v5").mkdir(parents=True)
        temporary.mkdir()
        unwritable = {"root-owned": store_path, "root-owned index-v5": store_path / "index-v5"}.get(store)
        if store == "a file":
            shutil.rmtree(store_path)
            store_path.write_text("", encoding="utf-8")
        _, done = install_from_loopback(folder, home, temporary, as_user, owner, (unwritable,) if unwritable else ())
        uid, gid = (owner, owner) if owner is not None else (os.getuid(), os.getgid())
        cache = temporary / f"shelfcast-npm-{uid}"
        assert cache.is_dir() and (cache / "_cacache").is_dir(), done.stderr
        assert done.stderr.strip().splitlines() == [
            f"install_test_services: cannot write npm's cache {home}/.npm (its {unwritable or store_path} is not "
            f"writable: root-owned? `chown -R {uid}:{gid} {home}/.npm` as root mends it); caching in {cache} "
            "instead (set npm_config_cache to keep it elsewhere)"], done.stderr
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def pip_install_module():
    spec = importlib.util.spec_from_file_location("pip_install", REPO / "scripts" / "pip_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_venv_says_how_many_packages_pip_has_installed_while_it_is_silent(tmp_path, capsys):
    """pip printed one 'Installing collected packages' line, then nothing until it was done: `make run` on a fresh
    clone (the README walkthrough, tests/e2e/test_readme.py) went 144 s without a line at load 9."""
    pip_install = pip_install_module()
    progress = pip_install.Progress(tmp_path, every_s=0.0)
    progress.pip_said("Installing collected packages: numpy, pandas, mlflow")
    for name in ("numpy-2.2.6.dist-info", "pandas-2.3.3.dist-info"):
        (tmp_path / name).mkdir()
    progress.beat()
    assert capsys.readouterr().out.splitlines() == ["Installing collected packages: numpy, pandas, mlflow",
                                                    "venv: 2 of 3 packages installed (0 s)"]


def a_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, slow_wheel 1.0, built by hand (no setuptools: a fresh .venv has none)."""
    path = folder / "slow_wheel-1.0-py3-none-any.whl"
    files = {"slow_wheel.py": "", "slow_wheel-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: slow-wheel\n"
             "Version: 1.0\n", "slow_wheel-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: shelfcast-tests\n"
             "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + "slow_wheel-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "slow_wheel-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    return path


@contextlib.contextmanager
def slow_wheel_index(tmp_path: Path, delay_s: float):
    """A --find-links page on loopback offering a_wheel, whose download takes ``delay_s`` seconds: pip's
    arguments to install it from there alone."""
    wheel = a_wheel(tmp_path)

    class SlowWheels(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name for it
            if self.path.endswith(".whl"):
                time.sleep(delay_s)
                body, kind = wheel.read_bytes(), "application/octet-stream"
            else:
                body, kind = f'<a href="/{wheel.name}">{wheel.name}</a>'.encode(), "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowWheels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [str(REPO / "scripts" / "pip_install.py"), "--no-index", "--no-cache-dir", "--find-links",
               f"http://127.0.0.1:{server.server_port}/", "--target", str(tmp_path / "target"), "slow-wheel"]
    finally:
        server.shutdown()
        server.server_close()


def pip_environment() -> dict:
    env = {**os.environ, "SHELFCAST_PIP_HEARTBEAT_S": "0.5", "PIP_CONFIG_FILE": os.devnull}
    env.pop("PIP_FIND_LINKS", None)
    return env


def test_pip_install_says_the_step_it_is_on_while_a_download_is_silent(tmp_path):
    """A real pip downloading a wheel from a server that takes 2 s to send it (a large wheel, its bar off): the
    heartbeat names the step pip is on."""
    with slow_wheel_index(tmp_path, 2) as arguments:
        done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=120,
                              env=pip_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout.splitlines()
    assert said[-1].startswith("Successfully installed slow-wheel"), said
    assert any(line.startswith("venv: pip is still on: Collecting slow-wheel") for line in said), said


def test_make_venv_interrupted_mid_install_ends_in_one_line_not_a_traceback(tmp_path):
    """Ctrl-C during `make venv` (to the whole process group, as a terminal sends it) while pip downloads: this
    process ended in a KeyboardInterrupt traceback from pip_install.py's read of pip's output."""
    with slow_wheel_index(tmp_path, 30) as arguments:
        running = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=pip_environment(), start_new_session=True)
        try:
            said = []
            for line in running.stdout:  # wait until pip is at the download, not still importing itself (a
                said.append(line)  # Ctrl-C then is Python's traceback of pip's imports, not pip's or ours)
                if line.startswith("venv: pip is still on: Collecting"):
                    break
            os.killpg(running.pid, signal.SIGINT)
            out, err = running.communicate(timeout=60)
        finally:
            if running.poll() is None:
                os.killpg(running.pid, signal.SIGKILL)
    assert running.returncode == 130, "".join(said) + out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "venv: interrupted; `make venv` again goes on where pip stopped" in err


def venv_python_module():
    spec = importlib.util.spec_from_file_location("venv_python", REPO / "scripts" / "venv_python.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pythons_make_venv_takes_are_pyproject_s_requires_python():
    module = venv_python_module()
    spec = module.requires_python(REPO / "pyproject.toml")
    assert spec == ">=3.11,<3.12"
    assert module.satisfies((3, 11, 0), spec) and module.satisfies((3, 11, 7), spec)
    for other in ((3, 10, 13), (3, 12, 0), (3, 12, 1), (3, 13, 0)):
        assert not module.satisfies(other, spec), other


def make_venv_tree(tmp_path, requires):
    """Makefile, its include, scripts/ and a pyproject.toml requiring `requires`: what `make venv` reads first.
    PYTHON is this interpreter behind a wrapper that fails `-m venv` (marking that it was asked), so no run of
    this test makes a virtual environment or reaches a package index."""
    for name in ("Makefile", "monitoring/delivery.mk", "scripts/venv_python.py", "scripts/pip_install.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).exists():
            shutil.copy2(REPO / name, tmp_path / name)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(
        pyproject.replace('requires-python = ">=3.11,<3.12"', f'requires-python = "{requires}"'), encoding="utf-8")
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = venv ]; then touch "{tmp_path}/venv-asked"; '
                       f'exit 3; fi\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return wrapper


def test_make_venv_with_a_python_pyproject_does_not_take_says_so_before_making_anything(tmp_path):
    """python3 of 3.12 or 3.13 and no python3.11: .venv was made, pip upgraded, and only then pip refused
    ('requires a different Python: 3.12.1 not in ...'), naming neither what to install nor PYTHON=."""
    mine = sys.version_info
    wrapper = make_venv_tree(tmp_path, f">={mine.major}.{mine.minor + 1}")
    done = subprocess.run(["make", "venv", f"PYTHON={wrapper}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert (f"make venv: Shelfcast needs Python >={mine.major}.{mine.minor + 1} (pyproject.toml requires-python); "
            f"{sys.executable} is {mine.major}.{mine.minor}.{mine.micro}") in done.stderr, done.stderr
    assert "make venv PYTHON=/path/to/python3.11" in done.stderr
    assert not (tmp_path / "venv-asked").exists() and not (tmp_path / ".venv").exists()


def other_pythons() -> list[str]:
    """Interpreters of another minor version than this one (2.7, an older or newer 3.x: pyenv's, the system's)
    that run (a pyenv shim of a version not selected does not), if any."""
    found = [shutil.which(name) for name in ("python2.7", "python2", "python3.10", "python3.9", "python3.8")]
    found += sorted(str(p) for p in Path.home().glob(".pyenv/versions/[23].*/bin/python")
                    if not p.parent.parent.name.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."))
    return sorted({p for p in found if p and subprocess.run([p, "-c", ""], capture_output=True).returncode == 0})


@pytest.mark.skipif(not other_pythons(), reason="no Python 2.7 or older 3.x on this machine")
def test_make_venv_refuses_a_python_2_in_the_same_one_line(tmp_path):
    """`make venv PYTHON=python` where `python` is 2.7 (an old distribution's): venv_python.py imported pathlib
    first, and the refusal was `ImportError: No module named pathlib` under a traceback, not the one line."""
    make_venv_tree(tmp_path, ">=3.11,<3.12")
    for python in other_pythons():
        done = subprocess.run(["make", "venv", f"PYTHON={python}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0, python
        refusal = [line for line in done.stderr.splitlines()  # make's own line, `make[1]: ***` under make test
                   if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
        assert len(refusal) == 1 and refusal[0].startswith(
            "make venv: Shelfcast needs Python >=3.11,<3.12 (pyproject.toml requires-python); "), done.stderr
        assert not (tmp_path / ".venv").exists(), python


def test_make_venv_makes_again_a_venv_another_python_left(tmp_path):
    """A .venv left by a Python pyproject does not take (or whose Python was removed): `python3.11 -m venv` over it
    kept its `python`, and every `make venv` after Python 3.11 was installed failed as the first had."""
    wrapper = make_venv_tree(tmp_path, ">=3.11,<3.12")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stale = tmp_path / ".venv" / "bin" / "python"
    stale.write_text("#!/bin/sh\necho 'python3.12: error while loading shared libraries' >&2; exit 127\n")
    stale.chmod(0o755)
    done = subprocess.run(["make", "venv", f"PYTHON={wrapper}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert "venv: .venv was left without a Python that runs: making it again with" in done.stdout, done.stdout
    assert not (tmp_path / ".venv").exists()
    assert (tmp_path / "venv-asked").exists()  # then `python -m venv` makes it afresh
    # a .venv of this Python (an interrupted install) is kept: pip goes on where it stopped
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    done = subprocess.run(["make", "venv", f"PYTHON={wrapper}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert "making it again" not in done.stdout and (tmp_path / ".venv" / "bin" / "python").exists()


def test_make_venv_on_a_machine_without_python3_says_so(tmp_path):
    """No python3.11 nor python3 on PATH: PYTHON was empty and make ran `scripts/venv_python.py .venv` itself
    ('Permission denied'; before that script, `-m venv .venv`: 'No such file or directory')."""
    make_venv_tree(tmp_path, ">=3.11,<3.12")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("make", "sh", "bash", "env", "tr", "printf", "git"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    done = subprocess.run([str(tools / "make"), "venv"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": str(tools), "HOME": str(tmp_path)})
    assert done.returncode != 0
    assert ("make venv: no python3.11 or python3 on PATH: install Python 3.11, or name one: "
            "make venv PYTHON=/path/to/python3.11") in done.stderr, done.stderr


def test_without_npm_packages_installed_to_their_lock_are_used_and_ci_goes_on(tmp_path):
    """Debian's nodejs without its npm, and the packages restored from a runner's cache: the script said the
    tests would be skipped (they are not: require_installed finds them) and, under .ci/run's
    SHELFCAST_REQUIRE_TEST_SERVICES=1, failed the run. npm is needed only to install."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "install_test_services.sh", root / "scripts")
    for folder in PACKAGE_FOLDERS:
        (root / folder).mkdir(parents=True)
        shutil.copy2(REPO / folder / "package-lock.json", root / folder)
        lock = hashlib.sha256((root / folder / "package-lock.json").read_bytes()).hexdigest()
        (root / folder / "node_modules").mkdir()
        (root / folder / "node_modules" / ".shelfcast-lock.sha256").write_text(lock + "\n", encoding="utf-8")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "env", "sha256sum", "cut", "cat", "rm", "dirname", "mkdir", "mktemp", "id"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "HOME": str(tmp_path), REQUIRE_VARIABLE: "1"}
    done = subprocess.run([str(tools / "bash"), "scripts/install_test_services.sh"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    # with a folder still to install, no npm is said, and fails CI as before
    (root / PACKAGE_FOLDERS[1] / "node_modules" / ".shelfcast-lock.sha256").unlink()
    done = subprocess.run([str(tools / "bash"), "scripts/install_test_services.sh"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == (f"install_test_services: npm not found; the tests that need {PACKAGE_FOLDERS[1]} will be "
                           "skipped\ninstall_test_services: SHELFCAST_REQUIRE_TEST_SERVICES=1: failing\n")
