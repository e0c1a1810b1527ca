"""How many cores this process can use, the one definition for Numba's and BLAS's pools, gunicorn's workers and
`make test`'s processes: its affinity (``taskset``, a cpuset) capped by the CPU limit, rounded up, of its cgroup and
those above it. With the affinity alone, a container run with ``--cpus 1.5`` on 16 cores started 16 gunicorn workers
of 16 Numba threads each.

Standard library only, no engine import: gunicorn's master loads this file by its path (the engine would size every
worker's pools before it is pinned), and the Makefile runs ``python3 engine/cores.py`` before ``.venv`` exists.
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
    return max(1, count if limit is None else min(count, math.ceil(limit)))


def cgroup_cpu_limit(proc_self: str = PROC_SELF) -> float | None:
    """The lowest CPU limit, in cores (``1.5``), of this process's cgroups and those above them, v2 or v1; None where
    none is set or none can be read (not Linux, no cgroup filesystem)."""
    try:
        with open(os.path.join(proc_self, "cgroup"), encoding="utf-8") as file:
            memberships = [line.rstrip("\n").split(":", 2) for line in file if line.count(":") >= 2]
        with open(os.path.join(proc_self, "mountinfo"), encoding="utf-8") as file:
            mounts = [m for m in map(_mount, file) if m is not None]
    except OSError:
        return None
    limits = []
    for hierarchy, controllers, path in memberships:
        v2 = hierarchy == "0" and controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        for root, point, fs_type, options in mounts:
            if (fs_type == "cgroup2") if v2 else (fs_type == "cgroup" and "cpu" in options):
                limits += _limits_up_to(root.rstrip("/"), os.path.normpath(point), path, v2)
    return min(limits) if limits else None


def _mount(line: str) -> tuple[str, str, str, set[str]] | None:
    """(root, mount point, filesystem type, super options) of one /proc/self/mountinfo line (a space is \\040)."""
    fields, _, rest = line.partition(" - ")
    fields, rest = fields.split(), rest.split()
    if len(fields) < 5 or len(rest) < 3:
        return None
    return fields[3].replace("\\040", " "), fields[4].replace("\\040", " "), rest[0], set(rest[2].split(","))


def _limits_up_to(root: str, point: str, path: str, v2: bool) -> list[float]:
    """The limits set in cgroup ``path``'s directory under a mount of ``root`` at ``point`` and in those above it (a
    container's mount root is its own cgroup, which /proc/self/cgroup may name from the host's root)."""
    if root and path != root and not path.startswith(root + "/"):
        return []
    directory = os.path.normpath(os.path.join(point, path[len(root):].lstrip("/")))
    found = []
    while True:
        found += _limit(directory, v2)
        if directory == point or not directory.startswith(point + os.sep):
            return found
        directory = os.path.dirname(directory)


def _limit(directory: str, v2: bool) -> list[float]:
    """The CPU limit set in ``directory``, in cores: one, or none."""
    if v2:  # cpu.max: "<quota> <period>" in microseconds, or "max <period>" for none
        fields = _read(os.path.join(directory, "cpu.max")).split()
    else:  # a quota of -1 is none
        fields = [_read(os.path.join(directory, name)) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    if len(fields) == 2 and all(f.isdigit() and int(f) > 0 for f in fields):
        return [int(fields[0]) / int(fields[1])]
    return []


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


if __name__ == "__main__":  # the Makefile's count: `python3 engine/cores.py`
    print(usable_cores())
