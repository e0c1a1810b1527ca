"""Where the pipeline's parallel work runs: in this process, or on a Dask cluster when one is configured.

The embedded default needs nothing started: with no scheduler configured every
task runs here, one after another. A team that outgrows one machine points the
pipeline at an existing Dask scheduler, and the same tasks fan out to its
workers without any other change:

* ``$SHELFCAST_DASK_SCHEDULER`` (e.g. ``tcp://10.0.0.5:8786``), else
* ``cluster.scheduler`` in params.yaml (``null``: no cluster).

The environment variable wins, so CI or a laptop can switch without editing a
tracked file. The choice is deliberately *not* a DVC param of any stage: the
outputs are the same rows either way, so switching must not rerun anything.

``run_tasks`` is the one place that submits work: stages call it with a
function and its inputs and get the results back in input order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from pipeline.params import ParamsError, names_file
from pipeline.stage import bar_options

SCHEDULER_ENV = "SHELFCAST_DASK_SCHEDULER"
PARAMS_SECTION = "cluster"
WATCH_S = 5.0  # while no task finishes, how often run_tasks asks whether the cluster has a worker at all
SCHEDULER_LOST = "lost the Dask scheduler mid-stage (its tasks were cancelled); rerun once it is back"
NO_WORKER_S = 60.0  # a cluster without any worker this long fails the stage instead of waiting forever
HANDSHAKE_S = 5.0  # past the connection's timeout, how long a server that accepted it may take to answer as Dask
NOT_DASK = (": not a Dask scheduler (an HTTP server? the scheduler's dashboard is on :8787, the scheduler on :8786 "
            "by default)")

T = TypeVar("T")
R = TypeVar("R")


class ClusterError(RuntimeError):
    """The configured scheduler cannot be reached or a task failed on a worker (message says which)."""


class WorkerMismatch(RuntimeError):
    """A worker cannot run the stage's task as the stage would (raised on the worker; the message says why)."""


class WorkerCodeError(WorkerMismatch):
    """A worker runs other project code than the stage that sent it the task (raised on the worker)."""


class WorkerKernelsError(WorkerMismatch):
    """A worker's BLAS runs other kernels than the stage's, for a task whose numbers depend on them."""


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("pipeline", "engine")  # the project's code a task can run: what a worker must have as the stage has it
_LOADED: dict[str, str] = {}  # on a worker: each project module's sha256 when this process first ran a task with it


def _source_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def code_digests(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """sha256 of each .py file of the project's code as it is on disk now, by path relative to the project."""
    return {path.relative_to(root).as_posix(): _source_digest(path)
            for directory in CODE_DIRS for path in sorted((root / directory).rglob("*.py"))}


def _loaded_code() -> dict[str, str]:
    """This process's project modules and their source's digest when it first ran a task after importing them.

    A worker outlives a stage and keeps the modules it imported: the files on the shared checkout may have changed
    since (an edit, a ``git pull``), and Python does not reload them. Recorded as soon as a task follows the import
    (unpickling a task imports its function's module), so the digest is that of the code it runs.
    """
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        try:
            relative = Path(file).resolve().relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            continue
        if relative.split("/", 1)[0] in CODE_DIRS and relative not in _LOADED:
            _LOADED[relative] = _source_digest(Path(file))
    return _LOADED


def _on_worker(fn: Callable[..., R], code: Mapping[str, str], kernels: str | None, item: Any, **kwargs) -> R:
    """``fn(item, **kwargs)``, once this worker is known to run the code the stage runs (``code``) and, for a task
    that trains or scores (``kernels`` given), OpenBLAS's kernels the stage runs (pipeline/blas.py)."""
    if kernels is not None:
        from pipeline.blas import ENV_BLAS_KERNELS, kernels_in_use

        ours = kernels_in_use()
        if ours != kernels:
            from distributed import get_worker

            # A `dask worker` has loaded numpy (and OpenBLAS) before any task imports pipeline.blas: too late to pin
            raise WorkerKernelsError(
                f"a Dask worker at {get_worker().address} runs OpenBLAS's {ours or 'no'} kernels, this stage "
                f"{kernels}: the models it trains would differ from this stage's in their last bits; start the "
                f"workers with {ENV_BLAS_KERNELS}={kernels} in their environment and rerun")
    differ = sorted(name for name, digest in _loaded_code().items() if code.get(name) != digest)
    if differ:
        from distributed import get_worker

        raise WorkerCodeError(
            f"a Dask worker at {get_worker().address} runs other code than this stage "
            f"({', '.join(differ[:3])}{f' and {len(differ) - 3} more' if len(differ) > 3 else ''}): it imported "
            "them before they changed, or runs another checkout; restart the workers (e.g. `docker compose "
            "--profile cluster restart dask-worker`) from this checkout and rerun")
    return fn(item, **kwargs)


def scheduler_address(raw_params: Mapping | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Dask scheduler to use, or None for the embedded in-process default."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(SCHEDULER_ENV, "").strip()
    if from_env:
        return _checked_address(from_env, f"${SCHEDULER_ENV}")
    return _scheduler_param(raw_params or {})


@names_file
def _scheduler_param(raw_params: Mapping) -> str | None:
    """params.yaml's ``cluster.scheduler`` (its refusal names the file; the variable's names the variable)."""
    section = raw_params.get(PARAMS_SECTION)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ParamsError(f"{PARAMS_SECTION}: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - {"scheduler"})
    if unknown:
        raise ParamsError(f"{PARAMS_SECTION}.{unknown[0]}: unknown key (known: scheduler)")
    value = section.get("scheduler")
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ParamsError(f"{PARAMS_SECTION}.scheduler: expected an address like tcp://host:8786 or null, "
                          f"got {value!r}")
    return _checked_address(value.strip(), f"{PARAMS_SECTION}.scheduler")


_ADDRESS = re.compile(r"(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<port>\d{1,5})")


def _checked_address(address: str, where: str) -> str:
    """``address`` if Dask can connect a stage to it as a scheduler's ([tcp|tls|ws|wss|ucx]://host:port, nothing
    after the port); checked here, before a stage starts, and without importing Dask. ``inproc://`` is refused:
    it names a scheduler inside the same process, which a stage never has."""
    match = _ADDRESS.fullmatch(address)
    if match and 0 < int(match["port"]) < 65536:
        return address
    raise ParamsError(f"{where}: {address!r} is not a scheduler address (expected e.g. tcp://host:8786)")


@contextmanager
def dask_client(address: str | None, timeout_s: float = 30.0) -> Iterator[Any]:
    """A ``distributed.Client`` connected to ``address``, or None (run here) when ``address`` is None.

    Dask is imported only when a cluster is used, so the embedded default never pays for it.
    """
    if address is None:
        yield None
        return
    from distributed import Client

    where = f"Dask scheduler {address} (from ${SCHEDULER_ENV} or params.yaml cluster.scheduler)"
    missing = _missing_transport(address)
    if missing:
        raise ClusterError(f"{where} cannot be reached: {missing}")
    try:
        not_scheduler = _not_a_scheduler(address, timeout_s)
        if not_scheduler:
            raise ClusterError(f"{where} cannot be reached: {not_scheduler}")
        client = Client(address, timeout=f"{timeout_s}s")
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a transport Dask cannot set up (tls, ucx)
        raise ClusterError(f"{where} cannot be reached: "
                           f"{exc if isinstance(exc, OSError) else f'{type(exc).__name__}: {exc}'}") from None
    echoes, client_log = _SchedulerLossEchoes(), logging.getLogger("distributed.client")
    client_log.addFilter(echoes)
    try:
        lacking = _workers_without_project(client)
        if lacking:
            raise ClusterError(f"{where}: {lacking}")
        yield client
    finally:
        client.close()
        client_log.removeFilter(echoes)


def _project_home() -> str:
    """On a worker (``client.run``): where it imports this project from. Unpickling this function is the test."""
    return str(PROJECT_ROOT)


def _workers_without_project(client: Any) -> str | None:
    """Which of the cluster's workers cannot import this project, in words (None: all of them can).

    A task names its function by module (``pipeline.prepare.build_store_grid``): a worker whose environment lacks
    the project fails to unpickle its first task, and Dask then closes that worker for good (nanny included), so
    the stage waited NO_WORKER_S and said there was no worker, to a user who had started them. ``client.run``
    unpickles its function in a request of its own, which fails alone and comes back here as the import error."""
    homes = client.run(_project_home, on_error="return")
    lacking = {address: home for address, home in homes.items() if isinstance(home, BaseException)}
    if not lacking:
        return None
    first = next(iter(lacking.values()))
    why = first if type(first) is Exception else f"{type(first).__name__}: {first}"  # Exception: Dask's wrapping
    workers = ", ".join(sorted(lacking)[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
    return (f"{len(lacking)} of its {len(homes)} Dask worker(s) ({workers}) cannot import this project's code "
            f"({why}): start them from an environment that has it (`pip install -e .` in the shared checkout, or the "
            "checkout on their PYTHONPATH) and rerun; such a worker stops at its first task")


class _SchedulerLossEchoes(logging.Filter):
    """Drops distributed.client's records of its reconnection to a lost scheduler ending: run_tasks says the loss in
    the stage's one line (SCHEDULER_LOST), and closing the client cut the reconnection short, so they came out
    before it as a traceback of the cancelled reconnect or a "Failed to reconnect to scheduler after 30.00 seconds"
    one second after the loss."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to reconnect to scheduler"):
            return False
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _not_a_scheduler(address: str, timeout_s: float) -> str | None:
    """Why the server at ``address`` is not a Dask scheduler, in words; None when it is one (asked before the
    ``Client`` connects). Raises OSError when nothing answers there, as ``Client`` does.

    ``Client`` waits for Dask's handshake without a bound: a server that accepts the connection and never answers
    in Dask's protocol (an HTTP server, such as the scheduler's own dashboard on :8787) held the stage forever, with
    no output. A worker's or a nanny's address did answer, and the stage failed on a TypeError of theirs."""
    from distributed.comm import connect
    from distributed.comm.core import CommClosedError
    from distributed.security import Security

    async def identify() -> Any:
        bound = asyncio.timeout(timeout_s + HANDSHAKE_S)
        try:
            async with bound:
                # connect() bounds the connection by timeout_s (then raises OSError), not Dask's handshake after it
                comm = await connect(address, timeout=timeout_s, **Security().get_connection_args("client"))
                try:
                    await comm.write({"op": "identity", "reply": True})
                    return await comm.read()
                finally:
                    comm.abort()
        except TimeoutError:
            if bound.expired():  # connected, and no answer in Dask's protocol since
                return None
            raise

    try:
        identity = asyncio.run(identify())
    except CommClosedError as exc:  # it hung up on Dask's handshake
        return f"the server there closed the connection when spoken to in Dask's protocol ({exc}){NOT_DASK}"
    except OSError:  # nothing answers there: the Client would say the same
        raise
    except Exception as exc:  # noqa: BLE001 - its reply read as Dask frames: "HTTP/1.1" is a length of 3 EiB
        return (f"the server there answers in another protocol than Dask's ({type(exc).__name__} reading its reply "
                f"as Dask's){NOT_DASK}")
    if identity is None:
        return (f"the server there accepts connections but gave no Dask handshake in {timeout_s + HANDSHAKE_S:.0f} s"
                f"{NOT_DASK}")
    kind = identity.get("type") if isinstance(identity, Mapping) else None
    if kind == "Scheduler":
        return None
    if kind in ("Worker", "Nanny"):
        scheduler = identity.get("scheduler")
        return (f"it is a Dask {kind.lower()}'s address, not the scheduler's"
                f"{f' (its scheduler: {scheduler})' if scheduler else ''}: give the scheduler's address")
    return f"the Dask server there is not a scheduler ({f'a {kind}' if kind else 'it does not say what it is'})"


def _missing_transport(address: str) -> str | None:
    """What a tls:// or ucx:// scheduler needs and this machine lacks (Dask's TLS settings, distributed-ucxx), in
    words; None when nothing is missing. Checked before connecting: Dask's own errors name neither."""
    scheme = address.partition("://")[0] if "://" in address else "tcp"
    if scheme in ("tls", "wss"):
        import dask.config

        if not dask.config.get("distributed.comm.tls.ca-file", None):
            return ("TLS needs Dask's security settings, and none are configured: set distributed.comm.tls.ca-file, "
                    "distributed.comm.tls.client.cert and distributed.comm.tls.client.key in Dask's config "
                    "(a YAML file in ~/.config/dask/, or DASK_DISTRIBUTED__COMM__TLS__CA_FILE=... variables)")
    if scheme == "ucx":
        import importlib.util

        if importlib.util.find_spec("distributed_ucxx") is None:
            return "ucx:// needs the distributed-ucxx package, which is not installed here"
    return None


def run_tasks(fn: Callable[..., R], items: Sequence[T] | Iterable[T], client: Any = None, desc: str = "tasks",
              progress: bool = True, same_blas_kernels: bool = False, **kwargs) -> list[R]:
    """``[fn(item, **kwargs) for item in items]``, on the cluster's workers when ``client`` is given.

    Results come back in input order whatever order the workers finish in. A task
    that fails raises here with its input named, so a bad store partition is
    findable. Progress is one bar over the tasks either way. ``same_blas_kernels``: the tasks train or score, so a
    worker must run the BLAS kernels this process runs (pipeline/blas.py), or the stage stops saying so.
    """
    items = list(items)
    if client is None:
        results = []
        for item in tqdm(items, desc=desc, unit="task", **bar_options(progress)):
            results.append(fn(item, **kwargs))
        return results
    from distributed import KilledWorker, wait

    kernels = None
    if same_blas_kernels:
        from pipeline.blas import kernels_in_use

        kernels = kernels_in_use()
    futures = client.map(partial(_on_worker, fn, code_digests(), kernels), items,
                         key=[f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}" for _ in items], **kwargs)
    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(items)
    pending, no_worker_since = set(futures), None
    with tqdm(total=len(items), desc=f"{desc} (dask)", unit="task", **bar_options(progress)) as bar:
        while pending:
            try:
                with client.as_current():  # distributed.wait waits through the default client: make it this one
                    done, pending = wait(list(pending), timeout=WATCH_S, return_when="FIRST_COMPLETED")
            except CancelledError:  # not by us: the scheduler went away and took every task with it
                _cancel(futures)
                raise ClusterError(f"{desc}: {SCHEDULER_LOST}") from None
            except TimeoutError:  # nothing finished for a while: is any worker able to run a task at all?
                info = client.scheduler_info(n_workers=-1)
                workers = list((info.get("workers") or {}).values())
                if any(_can_work(worker) for worker in workers):
                    no_worker_since = None
                elif no_worker_since is None:
                    no_worker_since = time.monotonic()
                elif time.monotonic() - no_worker_since >= NO_WORKER_S:
                    _cancel(futures)
                    if workers:  # every one paused past distributed.worker.memory.pause, running nothing
                        raise ClusterError(
                            f"{desc}: every Dask worker at {info.get('address')} ({len(workers)}) has been paused "
                            f"for memory for {NO_WORKER_S:.0f} s, running no task (its process holds more than "
                            "distributed.worker.memory.pause of its --memory-limit, e.g. memory a finished task "
                            "left unreturned); restart the workers, or give them more memory, and rerun") from None
                    raise ClusterError(f"{desc}: no Dask worker at {info.get('address')} for "
                                       f"{NO_WORKER_S:.0f} s; start workers and rerun") from None
                continue
            for future in done:
                i = index[future.key]
                try:
                    results[i] = future.result()
                except CancelledError:
                    _cancel(futures)
                    raise ClusterError(f"{desc}: {SCHEDULER_LOST}") from None
                except WorkerMismatch as exc:  # not the task's input: the worker's code or BLAS kernels
                    _cancel(futures)
                    raise ClusterError(f"{desc}: {exc}") from None
                except KilledWorker as exc:  # its workers died running it: the task's input did not fail
                    _cancel(futures)
                    raise ClusterError(f"{desc}: the task for {items[i]!r} {_workers_died(client, exc)}") from None
                except Exception as exc:  # noqa: BLE001 - re-raised with the failing input named
                    _cancel(futures)
                    raise ClusterError(f"{desc}: the task for {items[i]!r} failed on a Dask worker: "
                                       f"{type(exc).__name__}: {exc}") from exc
                bar.update(1)
    return results


def _workers_died(client: Any, killed: Any) -> str:
    """What Dask's KilledWorker means for the stage, in words: a task whose every worker died running it (after
    distributed.scheduler.allowed-failures reruns), and whether the last one was restarted for memory, as the
    scheduler's "worker-restart-memory" events say (its nanny restarts a worker past
    distributed.worker.memory.terminate of its --memory-limit: 95% by default, the worker's own setting, which
    the stage cannot read).

    Dask's own message ("Attempted to run task 'build_store_grid-…' on 4 different workers, but all those workers
    died ... Inspecting worker logs is often a good next step") named neither the memory nor what to change."""
    last = killed.last_worker
    address = getattr(last, "address", last)
    runs = killed.allowed_failures + 1
    died = f"died with every Dask worker that ran it ({runs} run{'s' if runs > 1 else ''}, the last on {address})"
    try:
        events = client.get_events("worker-restart-memory")
    except Exception:  # noqa: BLE001 - the cause is extra information: the line stands without it
        events = ()
    rss = [event.get("rss") for _, event in events if isinstance(event, Mapping) and event.get("worker") == address]
    if not rss:
        return (f"{died}, not restarted for memory by a nanny: see the workers' logs for why (a crash, or a process "
                "killed from outside); rerun once it is fixed")
    limit = getattr(last, "memory_limit", 0)
    if not limit:
        workers = (client.scheduler_info(n_workers=-1).get("workers") or {}).values()
        limit = max((worker.get("memory_limit") or 0 for worker in workers), default=0)
    held = f", holding {_mib(rss[-1])}" if rss[-1] else ""
    return (f"{died}: its nanny restarted it for memory, past its terminate share (95% by default) of its "
            f"--memory-limit ({_mib(limit) if limit else 'unknown'}{held}): the task needs more memory than a worker "
            "has; give the workers more (`dask worker --memory-limit`) and rerun")


def _mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def _can_work(worker: Mapping) -> bool:
    """Whether a worker (as scheduler_info lists it) runs tasks: not paused for memory, or still running one (a
    worker pauses for memory with its task going on: that task may finish and free it)."""
    if worker.get("status", "running") != "paused":
        return True
    counts = (worker.get("metrics") or {}).get("task_counts") or {}
    return bool(counts.get("executing") or counts.get("long-running"))


def _cancel(futures: list) -> None:
    for future in futures:
        future.cancel()
