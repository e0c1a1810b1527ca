"""Session semantics: partial execution, control dependencies, feeds, nested fetches, errors."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

import engine as en
from engine import compiler


def test_pruning_does_not_run_unneeded_stateful_ops():
    counter = en.Variable(0, name="counter")
    bump = counter.assign_add(1)
    x = en.constant(2.0)
    y = x * 3.0
    total = en.add(y, en.cast(bump, en.float32))  # needs bump
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        assert s.run(y) == 6.0
        assert s.run(counter) == 0  # bump exists in the graph but y does not need it
        s.run(total)
        s.run(total)
        assert s.run(counter) == 2


def test_control_dependencies_order_side_effects():
    v = en.Variable(1.0, name="v")
    double = v.assign(v * 2.0)
    with en.control_dependencies([double]):
        after = en.identity(v.value() + 0.0)  # reads v only after the assignment ran
    plus_one = v.assign_add(1.0)
    with en.control_dependencies([plus_one]):
        then_double = v.assign(v * 2.0)  # reads v's value in the op after plus_one
    with en.Session() as s:
        s.run(v.initializer)
        assert s.run(after) == 2.0
        s.run(then_double)
        assert s.run(v) == 6.0  # (2 + 1) * 2
        assert s.run(v) == 6.0  # reading does not re-run assignments
        snapshot = v.read_value()
        with en.control_dependencies([snapshot]):
            bump = v.assign_add(1.0)
        assert s.run([snapshot, bump])[0] == 6.0  # the snapshot was taken before the bump
        assert s.run(v) == 7.0


def test_feeds_override_any_tensor_and_skip_its_producers():
    counter = en.Variable(0, name="counter")
    bumped = en.cast(counter.assign_add(1), en.float32)
    y = bumped * 10.0
    with en.Session() as s:
        s.run(counter.initializer)
        assert s.run(y, {bumped: 5.0}) == 50.0
        assert s.run(counter) == 0  # the fed tensor's producer (the assign_add) did not run
        assert s.run(y) == 10.0
        assert s.run(y, {"Cast:0": np.float32(7.0)}) == 70.0  # fed by name


def test_nested_fetches_and_ops_as_fetches():
    Pair = collections.namedtuple("Pair", "a b")
    a, b = en.constant(1.0), en.constant(2.0)
    noop = en.no_op()
    with en.Session() as s:
        out = s.run({"x": [a, (b, noop)], "p": Pair(a, b)})
        assert out["x"][0] == 1.0 and out["x"][1][0] == 2.0 and out["x"][1][1] is None
        assert isinstance(out["p"], Pair) and out["p"].b == 2.0
        assert s.run(noop) is None
        assert s.run("Const:0") == 1.0
        for fetches in ({a, b}, [frozenset([a])]):  # 'unhashable type: set', 'cannot fetch frozenset(...)'
            with pytest.raises(TypeError, match="cannot fetch the set .*: its order is undefined"):
                s.run(fetches)


def test_plans_are_cached_per_fetches_and_feeds():
    x = en.placeholder(en.float32, (None,))
    y = x * 2.0
    with en.Session() as s:
        s.run(y, {x: [1.0]})
        s.run(y, {x: [1.0, 2.0]})
        assert len(s._plans) == 1
        s.run([y], {x: [1.0]})  # same leaves, another structure: same plan
        assert len(s._plans) == 1
        s.run([y, x], {x: [1.0]})
        assert len(s._plans) == 2
        f = s.make_callable(y, [x])
        np.testing.assert_array_equal(f(np.array([1.0, 3.0], np.float32)), [2.0, 6.0])


def test_fetched_variable_is_a_copy_not_the_state():
    v = en.Variable(np.zeros(3, np.float32))
    with en.Session() as s:
        s.run(v.initializer)
        got = s.run(v)
        got[0] = 99.0
        assert s.run(v)[0] == 0.0
        c = s.run(en.constant([1.0, 2.0]))
        c[0] = 5.0  # a fetched constant is writable and independent


def test_missing_feed_names_the_placeholder():
    x = en.placeholder(en.float32, (None, 3), name="features")
    with en.Session() as s:
        with pytest.raises(en.errors.InvalidArgumentError,
                           match=r"must feed a value for placeholder tensor 'features' with dtype float32 and shape"
                                 r" \(None, 3\)"):
            s.run(x * 2.0)


def test_wrong_feed_shape_and_dtype_name_the_tensor():
    x = en.placeholder(en.float32, (None, 3), name="features")
    y = x * 2.0
    with en.Session() as s:
        with pytest.raises(en.errors.InvalidArgumentError,
                           match=r"Cannot feed value of shape \(2, 4\) for tensor 'features:0', which has shape"
                                 r" \(None, 3\)"):
            s.run(y, {x: np.zeros((2, 4), np.float32)})
        with pytest.raises(en.errors.InvalidArgumentError,
                           match=r"Cannot feed value of dtype float64 for tensor 'features:0', "
                                 r"which has dtype float32"):
            s.run(y, {x: np.zeros((2, 3), np.float64)})
        # Python values and safe casts are accepted
        assert s.run(y, {x: [[1, 2, 3]]}).dtype == np.float32


@pytest.mark.parametrize("given, dtype", [(np.array([True, False]), en.int64), (np.array([1, 0], np.int32), en.float64),
                                          (np.array([True]), en.float32), ([[1, 2, 3], [1, 2]], en.float32),
                                          ([["1.5"]], en.float32), ([[1 + 2j]], en.float32)])
def test_a_feed_of_another_kind_or_ragged_is_refused_naming_the_tensor(given, dtype):
    """A bool array fed to an index placeholder would gather rows 1 and 0: no array changes kind in a feed
    (Python lists of the wrong kind were already refused), and a ragged list says so."""
    x = en.placeholder(dtype, (None,) if not isinstance(given, list) else (None, None), name="fed")
    with en.Session() as s:
        with pytest.raises(en.errors.InvalidArgumentError, match=r"Cannot feed .* for tensor 'fed:0'"):
            s.run(x, {x: given})


def test_a_tensor_or_variable_fed_as_a_value_is_named_as_such():
    """Feeding a tensor (TensorFlow's 'The value of a feed cannot be a tf.Tensor object') said 'Cannot feed value
    of dtype object'."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    v = en.Variable(np.ones((1, 2), np.float32), name="v")
    with en.Session() as s:
        for value, name in ((en.constant([[1.0, 2.0]], name="c"), "Tensor 'c:0'"), (v, "Variable 'v:0'")):
            message = rf"Cannot feed <en.{name} .*> \(a feed is a value: run the tensor first\) for tensor 'x:0'"
            with pytest.raises(en.errors.InvalidArgumentError, match=message):
                s.run(x * 2.0, {x: value})


def test_a_string_or_complex_python_value_is_no_number():
    """``x + "3"`` was ``x + 3.0`` and ``x + 1j`` silently ``x + 1.0`` (NumPy parses strings, drops imaginaries)."""
    x = en.placeholder(en.float32, (None,), name="x")
    for value in ("3", 1j, ["3"]):
        with pytest.raises(TypeError, match="unsupported value"):
            x + value
        with pytest.raises(TypeError, match="unsupported value"):
            en.constant(value, dtype=en.float32)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix's own
@pytest.mark.parametrize("config", [en.SessionConfig(), en.SessionConfig(backend="reference")])
def test_an_ndarray_subclass_is_fed_as_an_ndarray(config):
    """An np.matrix went to the kernels as it was: a Numba TypingError from the fused Mul (pages of it), and
    'matrix.sum() got an unexpected keyword argument' from the reference Sum."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    fetches = [x * x, en.reduce_sum(x, axis=1)]
    with en.Session(config=config) as s:
        for got in (s.run(fetches, {x: np.matrix([[1, 2], [3, 4]], np.float32)}),
                    s.make_callable(fetches, [x])(np.matrix([[1, 2], [3, 4]], np.float32))):
            assert [type(g) for g in got] == [np.ndarray, np.ndarray]
            assert got[0].tolist() == [[1, 4], [9, 16]] and got[1].tolist() == [3, 7]


@pytest.mark.parametrize("config", [en.SessionConfig(), en.SessionConfig(backend="reference")])
def test_a_masked_array_is_fed_only_without_masked_values(config):
    """np.asarray takes a masked array's data under its mask: a masked -999 placeholder was fed as -999."""
    x = en.placeholder(en.float32, (None,), name="x")
    unmasked = np.ma.array([1, 2, 3], mask=[0, 0, 0], dtype=np.float32)
    masked = np.ma.array([1, -999, 3], mask=[0, 1, 0], dtype=np.float32)
    with en.Session(config=config) as s:
        call = s.make_callable([x * 2], [x])
        assert s.run(x * 2, {x: unmasked}).tolist() == [2, 4, 6] and call(unmasked)[0].tolist() == [2, 4, 6]
        for feed in (lambda v: s.run(x * 2, {x: v}), call):
            with pytest.raises(en.errors.InvalidArgumentError, match="masked array with 1 masked values.*filled"):
                feed(masked)
    with pytest.raises(TypeError, match="masked array with 1 masked values"):
        en.constant(masked)


def test_a_feed_widens_within_its_kind_exactly():
    x = en.placeholder(en.float64, (None,), name="wide")
    i = en.placeholder(en.int64, (None,), name="index")
    with en.Session() as s:
        got = s.run([x, i], {x: np.array([0.1], np.float32), i: np.array([7], np.uint8)})
    assert got[0].dtype == np.float64 and got[0][0] == np.float64(np.float32(0.1)) and got[1].tolist() == [7]


def test_uninitialized_variable_names_the_variable():
    with en.name_scope("dense"):
        v = en.Variable(np.zeros(2, np.float32), name="kernel")
    with en.Session() as s:
        with pytest.raises(en.errors.FailedPreconditionError, match="uninitialized value dense/kernel"):
            s.run(v + 1.0)


@pytest.mark.parametrize("config", [en.SessionConfig(), en.SessionConfig(backend="reference")])
def test_a_variable_made_from_another_ones_initial_value_shares_its_draw(config):
    """Variable(w * 2) reads w before w's initializer has run (as in TensorFlow); the error now says to use
    w.initial_value, which the engine's Variable lacked: one init run then gives both the same draw."""
    w = en.Variable(en.random_uniform((3,), seed=1), name="w")
    read_too_early = en.Variable(w * 2, name="v")
    doubled = en.Variable(w.initial_value * 2, name="u")
    with en.Session(config=config) as s:
        with pytest.raises(en.errors.FailedPreconditionError, match=r"uninitialized value w \(.*w.initial_value\)"):
            s.run(en.global_variables_initializer())
        s.run(en.variables_initializer([w, doubled]))
        got_w, got_doubled = s.run([w, doubled])
    np.testing.assert_array_equal(got_doubled, got_w * 2)
    assert read_too_early.initial_value.op.type == "Mul"


def test_check_numerics_raises_with_message_and_op_name():
    x = en.placeholder(en.float32, (2,))
    y = en.check_numerics(en.log(x), "log of the input", name="checked")
    with en.Session() as s:
        np.testing.assert_allclose(s.run(y, {x: [1.0, np.e]}), [0.0, 1.0], rtol=1e-6)
        message = r"log of the input : Tensor had NaN values \(op 'checked'\)"
        with pytest.raises(en.errors.InvalidArgumentError, match=message):
            s.run(y, {x: [1.0, -1.0]})



@pytest.mark.parametrize("backend", ["session", "reference", "compiled"])
def test_nan_and_infinities_propagate_without_numpy_warnings(backend):
    """Found by a probe: a served request with an extreme value, or training on a NaN, printed NumPy's
    'RuntimeWarning: invalid value encountered in cast/matmul/subtract/reduce' into logs. NaN and infinities
    propagate as computed (check_numerics catches them), silently, in every backend."""
    x = en.placeholder(en.float32, (2, 3))
    y = en.placeholder(en.float32, (3, 2))
    fetches = [en.cast(x, en.int32), en.matmul(x, y), en.nn.softmax(x), en.reduce_sum(x), en.reduce_mean(x, 0),
               en.add_n([x, x]), en.get_default_graph().create_op("SumToShape", [x, en.zeros((3,))]).outputs[0]]
    big = np.float32(3e38)
    feed = {x: np.array([[np.nan, np.inf, -np.inf], [big, big, 1.0]], np.float32),
            y: np.array([[np.inf, 1.0], [-np.inf, 2.0], [big, 0.0]], np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if backend == "compiled":
            got = compiler.CompiledPlan(en.Session(), fetches[:2], [x, y])(*feed.values())
        else:
            config = en.SessionConfig(optimize=False, backend="reference") if backend == "reference" else None
            got = en.Session(config=config).run(fetches, feed)
    assert np.isnan(got[1]).any() and np.isinf(got[1]).any()


def test_kernel_failure_names_the_op():
    p = en.Variable(np.zeros((3, 2), np.float32), name="table")
    ids = en.placeholder(en.int64, (None,), name="ids")
    rows = en.gather(p, ids, name="lookup")
    with en.Session() as s:
        s.run(p.initializer)
        message = r"GatherV2 op 'lookup' failed: index 7 .*range \[0, 3\)"
        with pytest.raises(en.errors.InvalidArgumentError, match=message):
            s.run(rows, {ids: [0, 7]})


def test_random_ops_are_seeded_and_advance_per_run():
    def draws():
        g = en.Graph()
        with g.as_default():
            en.set_random_seed(42)
            r = en.random_normal((3,))
            u = en.random_uniform((2,), 1.0, 2.0, seed=7)
            with en.Session() as s:
                return [s.run([r, u]) for _ in range(2)]

    first, second = draws(), draws()
    for (r1, u1), (r2, u2) in zip(first, second):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(u1, u2)
        assert ((u1 >= 1.0) & (u1 < 2.0)).all()
    assert not np.array_equal(first[0][0], first[1][0])  # the stream advances between runs


def test_integer_random_uniform_needs_whole_bounds_and_a_maxval():
    """[0.5, 2.5) as int32 drew 0s (bounds truncated to [0, 2)); with no maxval, [0, 1) drew only zeros."""
    for bounds in ((0.5, 2.5), (0, 2.5), (0,)):
        with pytest.raises(ValueError, match="random_uniform of int32 needs whole bounds"):
            en.random_uniform((3,), *bounds, dtype=en.int32)
    ints = en.random_uniform((100,), -2, 3.0, dtype=en.int64, seed=1)
    with en.Session() as s:
        assert set(s.run(ints).tolist()) == {-2, -1, 0, 1, 2}


def test_dropout_inference_and_training_flag():
    x = en.placeholder(en.float32, (4, 5))
    assert en.dropout(x, 0.5, training=False) is x
    training = en.placeholder_with_default(False, ())
    y = en.dropout(x, 0.5, training=training, seed=1)
    xv = np.ones((4, 5), np.float32)
    with en.Session() as s:
        np.testing.assert_array_equal(s.run(y, {x: xv}), xv)
        yt = s.run(y, {x: xv, training: True})
        assert set(np.unique(yt)) <= {0.0, 2.0} and (yt == 0).any()


def test_variable_load_and_closed_session():
    v = en.Variable(np.zeros(2, np.float32))
    s = en.Session()
    v.load([1.0, 2.0], s)
    np.testing.assert_array_equal(s.run(v), [1.0, 2.0])
    with pytest.raises(en.errors.InvalidArgumentError, match="cannot be loaded"):
        v.load([1.0], s)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.run(v)


def test_an_empty_numba_cache_dir_means_the_default_not_the_working_directory(tmp_path):
    """make and CI systems pass unset variables as empty: an empty NUMBA_CACHE_DIR put the kernel caches in the
    working directory (a dirty git tree), an empty NUMBA_NUM_THREADS stopped Numba. The default's base is this
    test's own (XDG_CACHE_HOME): under a HOME that cannot be written the engine rightly falls back from it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, NUMBA_CACHE_DIR="", NUMBA_NUM_THREADS="", XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = ("import os, engine; from engine.config import default_cache_dir; "
            "print(os.environ['NUMBA_CACHE_DIR'] == default_cache_dir(), os.environ['NUMBA_NUM_THREADS'])")
    shown = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                           capture_output=True, text=True, check=True)
    same, threads = shown.stdout.split()
    assert same == "True" and int(threads) >= 1


@pytest.mark.parametrize("config", [
    en.SessionConfig(), en.SessionConfig(optimize=False), en.SessionConfig(passes=frozenset({"cse", "fusion"})),
    en.SessionConfig(backend="reference", passes=frozenset())], ids=["default", "no-passes", "no-pruning", "reference"])
def test_a_fed_op_reached_by_a_control_edge_does_not_run_nor_need_its_inputs(config):
    """A fed tensor's op does not run; a control dependency on it does not bring back its ancestors
    (the placeholder, a stateful op), under every pass configuration and backend."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    counter = en.Variable(0, name="counter")
    bump = counter.assign_add(1)
    with en.control_dependencies([bump.op]):
        h = en.relu(x * 2.0, name="h")
    with en.control_dependencies([h.op]):
        o = en.identity(h) + 1.0
    with en.Session(config=config) as s:
        s.run(en.global_variables_initializer())
        np.testing.assert_array_equal(s.run(o, {h: np.float32([[1, -1]])}), [[2, 0]])
        s.run(h.op, {h: np.float32([[1, -1]])})
        assert s.run(counter) == 0


@pytest.mark.parametrize("config", [en.SessionConfig(), en.SessionConfig(backend="reference")],
                         ids=["kernels", "reference"])
def test_squeeze_without_axis_removes_only_the_statically_known_ones(config):
    """Its static shape holds at a batch of one: a dimension of unknown size stays, even when 1."""
    x = en.placeholder(en.float32, (None, 1, 3), name="x")
    s = en.squeeze(x)
    assert s.shape == (None, 3)
    c = en.concat([s, s], axis=0)
    anyrank = en.squeeze(en.placeholder_with_default(np.ones((1, 2, 1), np.float32), None, name="r"))
    assert anyrank.shape is None
    with en.Session(config=config) as sess:
        for rows in (3, 1):
            got, joined = sess.run([s, c], {x: np.ones((rows, 1, 3), np.float32)})
            assert got.shape == (rows, 3) and joined.shape == (2 * rows, 3)
        assert sess.run(anyrank).shape == (2,)  # unknown rank: every runtime 1 goes


def _run_engine_with_cache_dir(tmp_path, cache_dir: str):
    """A fresh process that imports the engine with NUMBA_CACHE_DIR=cache_dir and TMPDIR in tmp_path, and runs
    one kernel: (its completed process, its temporary directory)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, TMPDIR=str(temp))
    code = ("import numpy as np, os, engine as en; x = en.placeholder(en.float32, (None,), name='x'); "
            "print(en.Session().run(x + 1.0, {x: np.ones(2, np.float32)}).tolist(), os.environ['NUMBA_CACHE_DIR'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    return done, temp


def test_an_unwritable_numba_cache_dir_falls_back_to_a_private_temporary_one_and_says_so(tmp_path):
    """A read-only or missing HOME, or a NUMBA_CACHE_DIR the user cannot write, failed the first kernel with a
    PermissionError traceback from engine/generated.py: the engine now caches in this user's directory under the
    temporary one (mode 0700) and names the variable and both directories on stderr."""
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done, temp = _run_engine_with_cache_dir(tmp_path, str(blocker / "numba"))
    assert done.returncode == 0, done.stderr
    fallback = temp / f"shelfcast-numba-{os.getuid()}"
    assert done.stdout == f"[2.0, 2.0] {fallback}\n"  # the path whole: TMPDIR may hold a space
    assert f"NUMBA_CACHE_DIR={blocker / 'numba'}" in done.stderr and str(fallback) in done.stderr
    assert "Traceback" not in done.stderr
    assert fallback.is_dir() and fallback.stat().st_mode & 0o777 == 0o700


def test_a_temporary_cache_dir_another_user_holds_is_not_used(tmp_path):
    """Another user's ``shelfcast-numba-<uid>`` (a fixed name in a shared /tmp) is neither written nor trusted:
    the process takes a fresh directory of its own."""
    import os

    if os.getuid() != 0:
        pytest.skip("needs root, to make a directory another user owns")
    temp = tmp_path / "tmp"
    temp.mkdir()
    taken = temp / f"shelfcast-numba-{os.getuid()}"
    taken.mkdir(mode=0o777)
    os.chown(taken, 65534, 65534)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done, _ = _run_engine_with_cache_dir(tmp_path, str(blocker / "numba"))
    assert done.returncode == 0, done.stderr
    used = done.stdout.rstrip("\n").split(" ", 2)[-1]  # after the list's two items: the path whole
    assert used != str(taken) and os.path.dirname(used) == str(temp) and os.listdir(taken) == []


def test_the_reference_backend_keeps_a_negative_zero_where_the_kernels_do():
    """Found by a probe: the reference backend's AddN (np.sum of the stacked inputs) and SumToShape with nothing
    to sum (np.sum over no axes) added +0.0, so -0.0 + -0.0 gave 0.0 and a -0.0 gradient came back 0.0, where
    the kernels, a chain of Adds and IEEE 754 give -0.0."""
    z = np.full((2, 3), -0.0)
    a, b = en.placeholder(en.float64, (2, 3)), en.placeholder(en.float64, (2, 3))
    fetch = [en.add_n([a, b, a]), en.get_default_graph().create_op("SumToShape", [a, b]).outputs[0]]
    for config in (en.SessionConfig(optimize=False, backend="reference"), en.SessionConfig()):
        for got in en.Session(config=config).run(fetch, {a: z, b: z}):
            assert np.signbit(got).all(), f"{config}: {got}"


def test_the_reference_backend_sums_an_int32_broadcast_back_to_int32():
    """Found by a probe: SumToShape's reference (np.sum) returned int64 for int32, the kernel and the rule int32."""
    g, like = en.placeholder(en.int32, (3, 4)), en.placeholder(en.int32, (4,))
    summed = en.get_default_graph().create_op("SumToShape", [g, like]).outputs[0]
    feed = {g: np.arange(12, dtype=np.int32).reshape(3, 4), like: np.zeros(4, np.int32)}
    for config in (en.SessionConfig(optimize=False, backend="reference"), en.SessionConfig()):
        got = en.Session(config=config).run(summed, feed)
        assert got.dtype == np.int32 and got.tolist() == [12, 15, 18, 21], f"{config}: {got!r}"


@pytest.mark.parametrize("given", [{"options": object()}, {"run_metadata": object()}])
def test_run_options_and_metadata_are_refused_pointing_at_the_profiler(given):
    """TensorFlow users pass RunOptions/RunMetadata for per-op timings; run ignored them, so the metadata they
    read afterwards stayed empty without a word. The engine's per-op timings are engine.profiler's."""
    x = en.constant(1.0)
    with en.Session() as s:
        with pytest.raises(TypeError, match=rf"{next(iter(given))}.*engine\.profiler\.profile"):
            s.run(x, **given)
        assert s.run(x, options=None, run_metadata=None) == 1.0


@pytest.mark.parametrize("config", [en.SessionConfig(), en.SessionConfig(optimize=False, reuse_buffers=False),
                                    en.SessionConfig(backend="reference")], ids=["passes", "no passes", "reference"])
def test_an_op_of_two_outputs_runs_for_either_output_and_leaves_a_fed_one_alone(moments_op, config):
    """A plan gave an op one slot (its first output): fetching the second was a KeyError; the pruning pass kept a
    node for its first output only; a fed output of an op run for its other was overwritten by the kernel."""
    x = en.placeholder(en.float64, (None, 4))
    mean, var = moments_op(x)
    mean2, var2 = moments_op(x)  # the same op again: CSE merges it, both outputs renamed
    data = np.arange(8.0).reshape(2, 4) ** 2
    with en.Session(config=config) as s:
        np.testing.assert_array_equal(s.run(var, {x: data}), np.var(data, axis=1))
        got = s.run([var2, mean2 + var], {x: data})
        np.testing.assert_allclose(got[0], np.var(data, axis=1))
        np.testing.assert_allclose(got[1], np.mean(data, axis=1) + np.var(data, axis=1))
        assert s.run([mean, var], {x: data, mean: [7.0, 8.0]})[0].tolist() == [7.0, 8.0]
        np.testing.assert_allclose(s.run(var + mean, {x: data, mean: [7.0, 8.0]}), np.var(data, axis=1) + [7, 8])


def test_a_sparse_gradient_of_one_output_of_several_reaches_the_gradient_function_dense(moments_op):
    """Only an op flagged ``sparse_grad`` takes a gather's IndexedSlices: the densifying skipped ops of several
    outputs, whose gradient function got the IndexedSlices in its list."""
    x = en.placeholder(en.float64, (3, 4))
    mean, var = moments_op(x)
    y = en.reduce_sum(en.gather(var, np.array([2, 2, 0]))) + en.reduce_sum(mean)
    (g,) = en.gradients(y, [x])
    assert [type(d) for d in moments_op.grad_seen[0]] == [en.Tensor, en.Tensor]
    assert moments_op.grad_seen[0][1].shape == (3,)
    data = np.arange(12.0).reshape(3, 4) ** 2
    with en.Session() as s:
        want = 2 * (data - data.mean(1, keepdims=True)) / 4 * np.array([[1], [0], [2]]) + 0.25
        np.testing.assert_allclose(s.run(g, {x: data}), want)


def _numba_kernels_entered(monkeypatch) -> list:
    """Every Numba kernel of ``engine.kernels`` (each module's njit functions, through which every kernel and helper
    there reaches them) replaced by one that records its name and refuses: the names a run entered."""
    import importlib
    import pkgutil

    from numba.core.dispatcher import Dispatcher

    import engine.kernels

    entered = []
    for info in pkgutil.iter_modules(engine.kernels.__path__):
        module = importlib.import_module(f"engine.kernels.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher):
                def refuse(*args, _name=f"{module.__name__}.{name}", **kwargs):
                    entered.append(_name)
                    raise AssertionError(f"a Numba kernel ran: {_name}")
                monkeypatch.setattr(module, name, refuse)
    return entered


def test_the_reference_backend_enters_no_numba_kernel(monkeypatch):
    """Found by a probe: a reference session ran every op by its NumPy reference, yet a fetched IndexedSlices (an
    embedding's gradient) was densified by the Numba scatter kernel, and compile_callable ran its small batches as
    one generated Numba function: what the kernels are checked against went through them. Forward, a dense and a
    sparse gradient, Adam's dense and sparse updates, make_callable and compile_callable at 1 row now enter none."""
    x = en.placeholder(en.float64, (None, 4), name="x")
    ids = en.placeholder(en.int32, (None,), name="ids")
    table = en.Variable(np.arange(20.0).reshape(5, 4) / 10, name="table")
    w = en.Variable(np.linspace(-1, 1, 12).reshape(4, 3), name="w")
    h = en.tanh(en.matmul(x + en.gather(table, ids), w))
    loss = en.reduce_mean(en.reduce_sum(en.softmax(h) * 2.0 + en.sigmoid(h), axis=1))
    d_table, d_w = en.gradients(loss, [table, w])
    assert isinstance(d_table, en.IndexedSlices)
    step = en.train.AdamOptimizer(0.01).minimize(loss)
    init = en.global_variables_initializer()
    feed = {x: np.ones((3, 4)), ids: np.array([0, 1, 1], np.int32)}
    want = en.Session()
    want.run(init)
    expected = want.run([loss, d_table, d_w], feed)
    entered = _numba_kernels_entered(monkeypatch)
    sess = en.Session(config=en.SessionConfig(backend="reference"))
    sess.run(init)
    got = sess.run([loss, d_table, d_w], feed)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
    sess.run(step, feed)
    one = (np.ones((1, 4)), np.array([4], np.int32))
    np.testing.assert_array_equal(sess.make_callable(h, [x, ids])(*one), sess.run(h, dict(zip([x, ids], one))))
    fast = compiler.compile_callable(sess, h, [x, ids])
    np.testing.assert_array_equal(fast(*one), sess.run(h, dict(zip([x, ids], one))))
    assert not fast.uses_compiled and "reference" in fast.compile_error, fast.compile_error
    assert entered == []
