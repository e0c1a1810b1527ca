"""engine/cores.py: the cores a process can use, its cgroup's CPU limit counted (the default size of Numba's and
BLAS's pools, gunicorn's workers and `make test`'s processes). The cgroup cases read a cgroup filesystem laid out
under tmp_path in the kernel's own file formats (/proc/self/cgroup, /proc/self/mountinfo, cpu.max,
cpu.cfs_quota_us): before, a container limited to 1.5 CPUs on a 16-core host counted 16."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cores

REPO = Path(__file__).resolve().parents[2]
SIXTEEN = set(range(16))


def cgroup_fs(tmp_path: Path, cgroup: str, mountinfo: list[str], files: dict[str, str]) -> str:
    """A /proc/self with ``cgroup`` and ``mountinfo`` (mount points under tmp_path), and the cgroup ``files``."""
    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup, encoding="utf-8")
    (proc / "mountinfo").write_text("".join(line.replace("@", str(tmp_path)) + "\n" for line in mountinfo),
                                    encoding="utf-8")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="ascii")
    return str(proc)


V2_MOUNT = "41 31 0:38 / @/cgroup rw,relatime - cgroup2 cgroup2 rw"


def test_a_cgroup_v2_limit_caps_the_cores_rounded_up(tmp_path):
    proc = cgroup_fs(tmp_path, "0::/system.slice/job.service\n", [V2_MOUNT],
                     {"cgroup/system.slice/job.service/cpu.max": "150000 100000\n",
                      "cgroup/system.slice/cpu.max": "max 100000\n"})
    assert cores.cgroup_cpu_limit(proc) == 1.5
    assert cores.usable_cores(SIXTEEN, proc) == 2
    assert cores.usable_cores({3}, proc) == 1  # the affinity is lower: it counts


def test_the_lowest_limit_of_the_cgroup_and_those_above_it_counts(tmp_path):
    """Kubernetes sets a pod's limit on the pod's cgroup, above each container's."""
    proc = cgroup_fs(tmp_path, "0::/kubepods/pod1/ctr\n", [V2_MOUNT],
                     {"cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
                      "cgroup/kubepods/pod1/cpu.max": "50000 100000\n",
                      "cgroup/kubepods/cpu.max": "800000 100000\n"})
    assert cores.cgroup_cpu_limit(proc) == 0.5
    assert cores.usable_cores(SIXTEEN, proc) == 1  # never 0


def test_no_limit_leaves_the_affinity(tmp_path):
    proc = cgroup_fs(tmp_path, "0::/user.slice\n", [V2_MOUNT], {"cgroup/user.slice/cpu.max": "max 100000\n"})
    assert cores.cgroup_cpu_limit(proc) is None and cores.usable_cores(SIXTEEN, proc) == 16


def test_a_cgroup_v1_quota_counts_and_minus_one_is_none(tmp_path):
    mounts = ["32 31 0:29 / @/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
              "35 31 0:32 / @/memory rw,relatime - cgroup cgroup rw,memory"]
    proc = cgroup_fs(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", mounts,
                     {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                      "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                      "memory/docker/abc/cpu.cfs_quota_us": "100000\n"})  # not the cpu hierarchy: ignored
    assert cores.cgroup_cpu_limit(proc) == 2.0 and cores.usable_cores(SIXTEEN, proc) == 2
    (tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cores.cgroup_cpu_limit(proc) is None


def test_a_container_whose_cgroup_is_its_mounts_root(tmp_path):
    """Without a cgroup namespace /proc/self/cgroup names the container's cgroup from the host's root, while the
    container's mount of the hierarchy starts at that cgroup (mountinfo's root field)."""
    proc = cgroup_fs(tmp_path, "0::/docker/abc\n", ["41 31 0:38 /docker/abc @/cgroup rw - cgroup2 cgroup2 rw"],
                     {"cgroup/cpu.max": "100000 100000\n"})
    assert cores.cgroup_cpu_limit(proc) == 1.0 and cores.usable_cores(SIXTEEN, proc) == 1


def test_no_cgroup_files_is_no_limit(tmp_path):
    assert cores.cgroup_cpu_limit(str(tmp_path / "absent")) is None
    assert cores.usable_cores({0, 1, 2}, str(tmp_path / "absent")) == 3


def test_this_machine_without_a_limit_counts_its_affinity():
    if cores.cgroup_cpu_limit() is not None:
        pytest.skip(f"this process's cgroup limits it to {cores.cgroup_cpu_limit()} CPUs")
    assert cores.usable_cores() == len(os.sched_getaffinity(0))


def run_in(command: list[str], cpus: str | None = None, **environ: str) -> str:
    if cpus is not None:
        if shutil.which("taskset") is None:
            pytest.skip("taskset is not installed")
        command = ["taskset", "-c", cpus, *command]
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ, **environ), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or cores.usable_cores() < 2, reason="needs two usable cores")
def test_make_test_counts_usable_cores_not_omp_num_threads():
    """`make test` sized TEST_WORKERS with nproc, which answers OMP_NUM_THREADS: CI jobs that set it to 1 (a common
    guard against oversubscription) ran the suite in one process, 15 min instead of 6 on 2 cores."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    make = ["make", "-s", "--no-print-directory", "--eval", "print-test-workers: ; @echo $(TEST_WORKERS)",
            "print-test-workers"]
    expected = str(min(4, cores.usable_cores()))
    assert run_in(make, OMP_NUM_THREADS="1") == expected
    assert run_in(make, OMP_NUM_THREADS="64") == expected
    assert run_in(make, cpus=str(min(os.sched_getaffinity(0)))) == "1"


def test_the_engines_thread_default_is_the_usable_cores():
    code = "import engine, os; print(os.environ['NUMBA_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    one = str(min(os.sched_getaffinity(0)))
    if shutil.which("taskset") is None:
        pytest.skip("taskset is not installed")
    done = subprocess.run(["taskset", "-c", one, sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_thread_count_numba_cannot_use_is_an_error_naming_the_variable(value):
    """0 failed every `import engine` (every stage, the app) with a 25-line traceback from Numba's internals
    naming no variable; 'two' was a warning, then Numba's own default, every core of the host."""
    code = "import engine"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, NUMBA_NUM_THREADS=value),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"engine.config.EnvironmentSettingError: {thread_count_refusal(value)}")
    assert "site-packages/numba" not in done.stderr  # raised before Numba loads, not from inside it


def thread_count_refusal(value: str) -> str:
    return (f"environment variable NUMBA_NUM_THREADS must be a whole number >= 1 (the engine's thread pools; unset: "
            f"the cores this process can use, {cores.usable_cores()}), got {value!r}")


@pytest.mark.parametrize("module, command", [("pipeline.train", "train"), ("pipeline.registry_fetch", "fetch-model")])
def test_a_command_says_an_unusable_engine_setting_in_one_line(module, command):
    """Met while the command's imports ran, before run_stage: a 10-line traceback through the import machinery."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, NUMBA_NUM_THREADS="0"), timeout=120)
    assert (done.returncode, done.stderr) == (1, f"{command}: {thread_count_refusal('0')}\n")
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, SHELFCAST_PARALLEL_MIN_ELEMENTS="1e6"), timeout=120)
    assert (done.returncode, done.stderr) == (1, f"{command}: environment variable SHELFCAST_PARALLEL_MIN_ELEMENTS "
                                                 "must be a whole number >= 0, got '1e6'\n")


THREAD_COUNT_PROBE = """
import hashlib, numba, numpy as np
import engine as en
from pipeline import blas
blas.use_one_blas_thread()
rng = np.random.default_rng(0)
xv, yv = rng.normal(size=(512, 80)).astype(np.float32), rng.normal(size=(512, 1)).astype(np.float32)
digests = []
for threads in (1, numba.config.NUMBA_NUM_THREADS):
    numba.set_num_threads(threads)
    en.reset_default_graph()
    en.set_random_seed(1)
    x, y = en.placeholder(en.float32, (None, 80)), en.placeholder(en.float32, (None, 1))
    h = en.layers.Dense(96, activation="relu", seed=2, name="hidden")(x)
    out = en.layers.Dense(1, seed=3, name="out")(h)
    loss = en.reduce_mean(en.square(out - y)) + en.reduce_sum(en.reduce_max(h, axis=0))
    step = en.train.AdamOptimizer(0.01).minimize(loss)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        for _ in range(20):
            s.run(step, {x: xv, y: yv})
        weights = s.run(en.trainable_variables())
    digests.append(hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest())
print(numba.threading_layer(), *digests)
"""


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_the_engines_parallel_kernels_give_the_same_bits_on_any_number_of_threads(layer):
    """README: a model's bits do not depend on thread settings, so checkpoints resume across them. Every kernel runs
    parallel here (SHELFCAST_PARALLEL_MIN_ELEMENTS=1: a 16-step tiny train otherwise never reaches the 8 M elements
    where they start) on 1 thread, then on 4 (more than this machine may have: the split is what could differ)."""
    env = dict(os.environ, SHELFCAST_PARALLEL_MIN_ELEMENTS="1", NUMBA_NUM_THREADS="4", NUMBA_THREADING_LAYER=layer)
    done = subprocess.run([sys.executable, "-c", THREAD_COUNT_PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    used, one, many = done.stdout.strip().splitlines()[-1].split()
    assert layer in ("default", used) and one == many
