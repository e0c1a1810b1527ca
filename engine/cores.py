"""How many cores this process can use: the one definition of it (Numba's and BLAS's default pool size,
gunicorn's default worker count, `make test`'s pytest-xdist processes).

The cores it may run on (``os.sched_getaffinity``: `taskset`, a cpuset), capped by the CPU time its cgroup may
take (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, of its own cgroup and every one
above it), rounded up: a container run with ``--cpus 1.5`` (Docker), ``resources.limits.cpu`` (Kubernetes) or
a systemd ``CPUQuota`` on a 16-core host can use 2 cores' worth, not 16. Before, only the affinity counted, so
such a container started 16 gunicorn workers (16 copies of the model) and 16 Numba threads each, throttled to
1.5 cores in all. ``os.cpu_count()`` counts neither.

Standard library only and no import of the engine: gunicorn's master loads this file by its path (importing
the engine there would size every worker's thread pools before a worker is pinned to its core), and the
Makefile runs it as a script (``python3 engine/cores.py`` prints the count) before ``.venv`` exists.
"""

from __future__ import annotations

import math
import os

PROC_SELF = "/proc/self"


def affinity_cores() -> set[int]:
    """The cores this process may run on; every core ``os.cpu_count`` sees where affinity is not known."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def usable_cores(cores: set[int] | None = None, proc_self: str = PROC_SELF) -> int:
    """``len(cores)`` (default: this process's affinity), at most the cgroup's CPU limit rounded up; at least 1."""
    count = len(affinity_cores() if cores is None else cores)
    limit = cgroup_cpu_limit(proc_self)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def cgroup_cpu_limit(proc_self: str = PROC_SELF) -> float | None:
    """The CPU time this process's cgroups allow, in cores (``1.5``): the lowest limit of its cgroup and the ones
    above it, cgroup v2 or v1; None where none is set or none can be read (not Linux, no cgroup filesystem)."""
    try:
        with open(os.path.join(proc_self, "cgroup"), encoding="utf-8") as file:
            memberships = [line.rstrip("\n").split(":", 2) for line in file if line.count(":") >= 2]
        with open(os.path.join(proc_self, "mountinfo"), encoding="utf-8") as file:
            mounts = [_mount(line) for line in file]
    except OSError:
        return None
    limits = []
    for hierarchy, controllers, path in memberships:
        v2 = hierarchy == "0" and controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        for mount_root, mount_point in (m[:2] for m in mounts if m and _serves(m, v2)):
            directory = _directory(mount_root, mount_point, path)
            if directory is not None:
                limits += _limits_up_to(directory, mount_point, v2)
    return min(limits) if limits else None


def _mount(line: str) -> tuple[str, str, str, set[str]] | None:
    """(root, mount point, filesystem type, super options) of one /proc/self/mountinfo line."""
    fields, _, rest = line.partition(" - ")
    fields, rest = fields.split(), rest.split()
    if len(fields) < 5 or len(rest) < 3:
        return None
    unescape = lambda text: text.replace("\\040", " ")  # noqa: E731 - mountinfo writes a space as \040
    return unescape(fields[3]), unescape(fields[4]), rest[0], set(rest[2].split(","))


def _serves(mount: tuple[str, str, str, set[str]], v2: bool) -> bool:
    return mount[2] == "cgroup2" if v2 else (mount[2] == "cgroup" and "cpu" in mount[3])


def _directory(mount_root: str, mount_point: str, path: str) -> str | None:
    """Where cgroup ``path`` is under a mount of the hierarchy's ``mount_root`` (a container sees its own cgroup as
    the mount's root, and /proc/self/cgroup may still name it from the host's root)."""
    root = mount_root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return os.path.join(mount_point, path[len(root):].lstrip("/"))


def _limits_up_to(directory: str, mount_point: str, v2: bool) -> list[float]:
    """The CPU limits (cores) set in ``directory`` and each directory above it up to ``mount_point``."""
    found = []
    mount_point = os.path.normpath(mount_point)
    directory = os.path.normpath(directory)
    while True:
        limit = _v2_limit(directory) if v2 else _v1_limit(directory)
        if limit is not None:
            found.append(limit)
        if directory == mount_point or not directory.startswith(mount_point + os.sep):
            return found
        directory = os.path.dirname(directory)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(directory: str) -> float | None:
    """cpu.max: ``<quota> <period>`` in microseconds, or ``max <period>`` for none."""
    fields = (_read(os.path.join(directory, "cpu.max")) or "").split()
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]) > 0:
        return int(fields[0]) / int(fields[1])
    return None


def _v1_limit(directory: str) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us; a quota of -1 is none."""
    quota, period = (_read(os.path.join(directory, name)) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
    if quota and period and quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None


if __name__ == "__main__":  # the Makefile's count: `python3 engine/cores.py`
    print(usable_cores())
