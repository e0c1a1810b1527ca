"""Checkpoints and inference-graph export: bit-identical round trips and clear failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine as en
from tests.conftest import without_waiting


def _model(seed=0):
    ids = en.placeholder(en.int64, (None,), name="ids")
    dense = en.placeholder(en.float32, (None, 3), name="dense")
    emb = en.layers.Embedding(10, 4, seed=seed, name="emb")(ids)
    h = en.layers.Dense(8, activation="relu", seed=seed + 1, name="hidden")(en.concat([emb, dense], axis=1))
    h = en.dropout(h, 0.5, training=False)
    out = en.squeeze(en.layers.Dense(1, seed=seed + 2, name="out")(h), axis=1)
    return ids, dense, out


def _feed(ids, dense):
    rng = np.random.default_rng(3)
    return {ids: rng.integers(0, 10, size=7), dense: rng.normal(size=(7, 3)).astype(np.float32)}


def test_save_restore_is_bit_identical(tmp_path):
    ids, dense, out = _model()
    loss = en.reduce_mean(en.square(out))
    step = en.train.AdamOptimizer(0.1).minimize(loss)
    feed = _feed(ids, dense)
    saver = en.train.Saver()
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        s.run(step, feed)
        prefix = saver.save(s, str(tmp_path / "ckpt"), global_step=1)
        expected = s.run(out, feed)
        values = {v.op.name: s.run(v) for v in en.global_variables()}
    assert prefix.endswith("ckpt-1") and os.path.exists(prefix + ".npz") and os.path.exists(prefix + ".json")
    with en.Session() as s2:
        saver.restore(s2, prefix)
        np.testing.assert_array_equal(s2.run(out, feed), expected)
        for v in en.global_variables():  # slots and Adam's step too
            np.testing.assert_array_equal(s2.run(v), values[v.op.name])
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    assert leftovers == []


def test_restore_refuses_corrupt_missing_and_mismatched(tmp_path):
    v = en.Variable(np.arange(4, dtype=np.float32), name="v")
    with en.Session() as s:
        s.run(v.initializer)
        prefix = en.train.Saver().save(s, str(tmp_path / "model"))
    data = bytearray(open(prefix + ".npz", "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(tmp_path / "bad.npz", "wb").write(bytes(data))
    manifest = json.load(open(prefix + ".json"))
    manifest["data_file"] = "bad.npz"
    json.dump(manifest, open(tmp_path / "bad.json", "w"))
    with en.Session() as s, pytest.raises(en.errors.DataLossError, match=r"bad.npz is corrupt"):
        en.train.Saver().restore(s, str(tmp_path / "bad"))

    g = en.Graph()
    with g.as_default():
        other = en.Variable(np.zeros(4, np.float32), name="other")
        missing = r"variable other not found in checkpoint .*model.json"
        with en.Session() as s, pytest.raises(en.errors.NotFoundError, match=missing):
            en.train.Saver().restore(s, prefix)
        wrong = en.Variable(np.zeros(5, np.float32), name="v")
        with en.Session() as s, pytest.raises(en.errors.InvalidArgumentError,
                                              match=r"variable v: checkpoint .*model.json has shape \(4,\), "
                                                    r"the graph expects \(5,\)"):
            en.train.Saver([wrong]).restore(s, prefix)
        with en.Session() as s, pytest.raises(en.errors.NotFoundError, match="does not exist"):
            en.train.Saver([other]).restore(s, str(tmp_path / "absent"))
    open(tmp_path / "junk.json", "w").write("{not json")
    with en.Session() as s, pytest.raises(en.errors.DataLossError, match="not valid JSON"):
        en.train.Saver([v]).restore(s, str(tmp_path / "junk"))


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("data_file"), "data_file"), (lambda m: m.update(data_file="../model.npz"), "data_file"),
    (lambda m: m.update(variables=None), "variables"), (lambda m: m["variables"][0].pop("sha256"), r"variables\[0\]"),
    (lambda m: m["variables"][0].update(key=3), r"variables\[0\]"),
    (lambda m: m["variables"][0].update(shape=[2, 2]), r"variable v says shape \[2, 2\] float32, its data is \[4\]"),
    (lambda m: m["variables"][0].update(dtype="float64"), r"variable v says shape \[4\] float64, its data is \[4\] "
                                                           "float32")])
def test_a_malformed_manifest_is_data_loss_naming_the_field(tmp_path, change, field):
    """Valid JSON of the right format whose fields are missing or of another type (hand-edited, or another
    program's): a DataLossError naming the manifest and the field, not a KeyError; no file outside its folder."""
    v = en.Variable(np.arange(4, dtype=np.float32), name="v")
    with en.Session() as s:
        s.run(v.initializer)
        prefix = en.train.Saver().save(s, str(tmp_path / "model"))
    manifest = json.load(open(prefix + ".json"))
    change(manifest)
    json.dump(manifest, open(prefix + ".json", "w"))
    with en.Session() as s, pytest.raises(en.errors.DataLossError, match=rf"model.json is corrupt: {field}"):
        en.train.Saver([v]).restore(s, prefix)


def test_export_round_trip_is_bit_identical_in_a_fresh_process(tmp_path):
    ids, dense, out = _model(seed=5)
    feed = _feed(ids, dense)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        expected = s.run(out, feed)
        info = en.train.export_inference_graph(s, str(tmp_path / "export"), {"ids": ids, "dense": dense},
                                               {"prediction": out})
    doc = json.load(open(info["graph"]))
    assert doc["format"] == "shelfcast-engine-graph" and doc["version"] == 1
    types = {op["type"] for op in doc["ops"]}
    assert "VariableV2" not in types and "Assign" not in types and "RandomUniform" not in types
    # in this process
    model = en.train.import_inference_graph(str(tmp_path / "export"))
    got = model.run({"ids": feed[ids], "dense": feed[dense]})["prediction"]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # in a fresh process that has never seen the building code
    np.savez(tmp_path / "feed.npz", ids=feed[ids], dense=feed[dense])
    script = textwrap.dedent(f"""
        import numpy as np, engine as en
        model = en.train.import_inference_graph({str(tmp_path / 'export')!r})
        feed = dict(np.load({str(tmp_path / 'feed.npz')!r}))
        np.save({str(tmp_path / 'out.npy')!r}, model.run(feed)["prediction"])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=os.getcwd())
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_an_export_whose_inputs_share_a_tensor_is_refused_before_anything_is_written(tmp_path):
    """Two input names for one tensor were exported, and every import of the bundle failed ("a tensor is fed twice",
    a ValueError naming neither): a tensor is fed once, so an input is a tensor of its own. The session's refusal of
    a tensor fed twice names it."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    with en.Session() as s:
        with pytest.raises(ValueError, match=r"inputs: 'a', 'b' name one tensor, x:0"):
            en.train.export_inference_graph(s, str(tmp_path / "model"), {"a": x, "b": x}, {"y": x * 2.0})
        assert not (tmp_path / "model").exists()
        with pytest.raises(ValueError, match="a tensor is fed twice: x:0"):
            s.run(x * 2.0, {x: np.ones((1, 2), np.float32), "x:0": np.ones((1, 2), np.float32)})


def test_export_refuses_stateful_graphs_and_import_refuses_corruption(tmp_path):
    x = en.placeholder(en.float32, (None, 2), name="x")
    noisy = en.dropout(x, 0.5, training=True)
    with en.Session() as s:
        with pytest.raises(ValueError, match="RandomUniform"):
            en.train.export_inference_graph(s, str(tmp_path / "e1"), {"x": x}, {"y": noisy})
        with pytest.raises(ValueError, match="placeholder x is needed"):
            en.train.export_inference_graph(s, str(tmp_path / "e2"), {}, {"y": x * 2.0})
        en.train.export_inference_graph(s, str(tmp_path / "ok"), {"x": x}, {"y": x * 2.0})
    with open(tmp_path / "ok" / "weights.npz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(en.errors.DataLossError, match="weights.npz is corrupt"):
        en.train.import_inference_graph(str(tmp_path / "ok"))
    model_dir = tmp_path / "ok"
    with en.Session() as s:
        en.train.export_inference_graph(s, str(model_dir), {"x": x}, {"y": x * 2.0})
    model = en.train.import_inference_graph(str(model_dir))
    with pytest.raises(en.errors.InvalidArgumentError, match=r"missing inputs \['x'\]"):
        model.run({})


@pytest.mark.parametrize("change, field", [
    (lambda g: g.pop("weights"), "weights must be an object"),
    (lambda g: g["weights"].update(file="../weights.npz"), "weights.file"),
    (lambda g: g.pop("ops"), "ops must be a list"),
    (lambda g: g["ops"].append(3), r"ops\[\d+\]"),
    (lambda g: g["ops"][0].pop("attrs"), r"ops\[0\]"),
    (lambda g: g.update(outputs={"y": "ghost:0"}), "inputs or outputs name a tensor"),
    (lambda g: g.update(inputs=["x:0"]), "inputs must map"),
    (lambda g: g["inputs"].update(again="x:0"), "corrupt: inputs: 'x', 'again' name one tensor, x:0"),  # fed twice
    (lambda g: g["ops"][-1]["attrs"].update(T={"no such encoding": 1}), "cannot be rebuilt"),
    (lambda g: g["ops"][0]["attrs"].update(dtype="float32"), "cannot be rebuilt"),  # not {"dtype": ...}
    (lambda g: g["ops"][1]["attrs"].update(value=2.0), "cannot be rebuilt"),  # not {"tensor": ...}
    (lambda g: g["ops"].insert(1, {"name": "noise", "type": "RandomUniform", "inputs": ["x:0"], "control_inputs": [],
                                   "attrs": {"shape": [None, 2], "dtype": {"dtype": "float32"}, "seed": [0, 1],
                                             "minval": 0.0, "maxval": 1.0}}), "op 'noise' .* stateful or random"),
    (lambda g: g["ops"][-1].update(name=g["ops"][-1]["name"] + "\n"), "invalid op name"),  # regex $ passed it
    (lambda g: g["ops"].insert(1, {"name": "w", "type": "VariableV2", "inputs": [], "control_inputs": [],
                                   "attrs": {"shape": [2], "dtype": {"dtype": "float32"}}}), "op 'w' .* stateful"),
])
def test_a_malformed_inference_graph_is_data_loss_naming_the_field(tmp_path, change, field):
    """graph.json that parses but has a field missing, of another type or pointing elsewhere: a DataLossError
    naming the file and the field, not a KeyError or AttributeError; no weights file outside its folder."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    with en.Session() as s:
        en.train.export_inference_graph(s, str(tmp_path / "model"), {"x": x}, {"y": x * 2.0})
    path = tmp_path / "model" / "graph.json"
    graph = json.load(open(path))
    change(graph)
    json.dump(graph, open(path, "w"))
    with pytest.raises(en.errors.DataLossError, match=rf"graph.json.*{field}"):
        en.train.import_inference_graph(str(tmp_path / "model"))


@pytest.mark.parametrize("op", ["y", "x"])  # a reshape's target; a placeholder's declared shape
@pytest.mark.parametrize("escape", [
    "2))\n{code}\ndef _pad():\n    return ((1",  # out of the plan's body: a module-level statement
    '""";{code};"""',  # out of the plan's docstring (the header lists every op's shape)
])
def test_an_imported_graph_cannot_run_code_through_a_shape(tmp_path, op, escape):
    """A shape in graph.json is a list of whole numbers: a string there was copied into the compiled plan's source
    and ran when the plan was imported (the load's warm-up), whatever the file's checksums said."""
    marker = tmp_path / "ran"
    x = en.placeholder(en.float32, (None, 2), name="x")
    y = en.reshape(x * 2.0, (-1, 2), name="y")
    with en.Session() as s:
        en.train.export_inference_graph(s, str(tmp_path / "model"), {"x": x}, {"y": y})
    path = tmp_path / "model" / "graph.json"
    graph = json.load(open(path))
    (rec,) = [r for r in graph["ops"] if r["name"] == op]
    rec["attrs"]["shape"] = [-1 if op == "y" else None, escape.format(code=f"open({str(marker)!r}, 'w').close()")]
    json.dump(graph, open(path, "w"))
    with pytest.raises(en.errors.DataLossError, match=rf"op '{op}' cannot be rebuilt: .* is not a shape"):
        en.train.import_inference_graph(str(tmp_path / "model")).warm_up()
    assert not marker.exists()


@pytest.mark.parametrize("manifest", ["graph", "checkpoint"])
def test_a_manifest_nested_too_deep_is_data_loss(tmp_path, manifest):
    """JSON nested deeper than the parser recurses raised RecursionError, no DataLossError naming the file."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    v = en.Variable(np.float32([1, 2]), name="v")
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        en.train.export_inference_graph(s, str(tmp_path / "model"), {"x": x}, {"y": x * 2.0})
        saver = en.train.Saver([v])
        saver.save(s, str(tmp_path / "ckpt"))
        path = tmp_path / ("model/graph.json" if manifest == "graph" else "ckpt.json")
        path.write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(en.errors.DataLossError, match=rf"{path.name} is not valid JSON: .*recursion"):
            if manifest == "graph":
                en.train.import_inference_graph(str(tmp_path / "model"))
            else:
                saver.restore(s, str(tmp_path / "ckpt"))


@pytest.mark.parametrize("pad, said", [
    (lambda text: text[:-1] + " " * (16 << 20) + "}", r"is \d+ bytes; at most 16777216 are read"),
    (lambda text: json.dumps({**json.loads(text), "ops": json.loads(text)["ops"] + [
        {"name": f"junk{i}", "type": "Relu", "inputs": ["x:0"], "control_inputs": [], "attrs": {}}
        for i in range(3)]}), r"is corrupt: 3 op\(s\) needed by no output \(e.g. 'junk0'\)"),
], ids=["over 16 MiB", "ops no output needs"])
def test_a_padded_graph_is_refused(tmp_path, pad, said):
    """Found by a probe: a graph.json padded with 10^6 ops no output needs (95 MB) took 76 s and a 1.5 GB peak RSS to
    load, and then served; an export writes only what its outputs need, in a few hundred bytes an op (the size is
    checked before the file is parsed)."""
    x = en.placeholder(en.float32, (None, 2), name="x")
    unused = en.placeholder(en.float32, (None, 2), name="unused")  # an input no output needs is still written
    with en.Session() as s:
        en.train.export_inference_graph(s, str(tmp_path / "model"), {"x": x, "unused": unused}, {"y": x * 2.0})
    en.train.import_inference_graph(str(tmp_path / "model"))
    path = tmp_path / "model" / "graph.json"
    path.write_text(pad(path.read_text()))
    with pytest.raises(en.errors.DataLossError, match=rf"graph.json {said}"):
        en.train.import_inference_graph(str(tmp_path / "model"))


def _npz_of(members: dict, compression: int) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _npy(array=None, header_shape=None, data=b"", pickle=False) -> bytes:
    import io

    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, array, allow_pickle=pickle)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + data


@pytest.mark.parametrize("npz, said", [
    # 64 MiB of zeros deflated to 64 KiB: np.load allocated and inflated whatever the zip said (a 20 MB bomb is 20 GB)
    (lambda: _npz_of({"c0.npy": _npy(np.zeros(1 << 24, np.float32))}, 8), r"member c0.npy is compressed"),
    # a header declaring 4 TB before 64 bytes: read as far as the data went, after an allocation of what it declared
    (lambda: _npz_of({"c0.npy": _npy(header_shape=(10**6, 10**6), data=bytes(64))}, 0),
     r"member c0.npy declares shape \(1000000, 1000000\) float32 \(4000000000128 bytes with its header\), "
     r"it holds 192"),
    # a pickled object array: np.load(allow_pickle=False) refuses it too, the member named as what it is
    (lambda: _npz_of({"c0.npy": _npy(np.array([{"a": 1}], dtype=object), pickle=True)}, 0),
     r"member c0.npy holds Python objects \(dtype object\): a pickle, which is never loaded"),
], ids=["zip bomb", "header larger than its data", "pickled objects"])
def test_an_npz_is_read_within_its_own_size(tmp_path, npz, said):
    """Found by a probe: a bundle's 2.2 MB history.npz inflated to a 2.2 GB peak RSS before it was refused (and a
    larger one killed the worker); every member must be stored uncompressed, as the engine and the bundle write it,
    and hold exactly the bytes its .npy header declares."""
    import hashlib

    x = en.placeholder(en.float32, (None, 2), name="x")
    with en.Session() as s:
        en.train.export_inference_graph(s, str(tmp_path / "model"), {"x": x}, {"y": x * 2.0})
    data = npz()
    (tmp_path / "model" / "weights.npz").write_bytes(data)
    path = tmp_path / "model" / "graph.json"
    graph = json.load(open(path))
    graph["weights"]["sha256"] = hashlib.sha256(data).hexdigest()  # rewritten with it: the checksum matches
    json.dump(graph, open(path, "w"))
    with pytest.raises(en.errors.DataLossError, match=rf"weights.npz is unreadable: {said}"):
        en.train.import_inference_graph(str(tmp_path / "model"))


def test_save_takes_an_integer_global_step_only(tmp_path):
    """A float step tensor was cut (7.5 saved as model-7); a Python float failed with 'cannot fetch 7.5'."""
    w = en.Variable(np.ones(3, np.float32), name="w")
    step = en.Variable(np.int64(4), name="step", trainable=False)
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        saver = en.train.Saver([w])
        for bad in (7.5, en.constant(7.5), "7", en.constant([1, 2])):
            with pytest.raises(TypeError, match="global_step must be an integer"):
                saver.save(s, str(tmp_path / "model"), global_step=bad)
        assert not os.listdir(tmp_path)
        assert saver.save(s, str(tmp_path / "model"), global_step=step).endswith("model-4")
        assert saver.save(s, str(tmp_path / "model"), global_step=np.int32(5)).endswith("model-5")


def test_saver_refuses_what_is_not_a_variable():
    """A tensor in var_list was taken: its save then said 'cannot save uninitialized variable Mul'."""
    w = en.Variable(np.ones(3, np.float32), name="w")
    for var_list in ([w, w * 2.0], {"w": w, "doubled": w * 2.0}):
        with pytest.raises(TypeError, match=r"Saver: <en.Tensor 'Mul_?\d*:0' .*> is not a variable"):
            en.train.Saver(var_list)


def test_saver_refuses_a_session_of_another_graph(tmp_path):
    with en.Graph().as_default():
        w = en.Variable(np.ones(3, np.float32), name="w")
        saver = en.train.Saver()
    with en.Graph().as_default():
        other = en.Variable(np.zeros(5, np.float32), name="w")  # same name, another graph
        sess = en.Session()
        sess.run(other.initializer)
        for act in (lambda: saver.save(sess, str(tmp_path / "m")), lambda: saver.restore(sess, str(tmp_path / "m")),
                    lambda: w.load(np.ones(3, np.float32), sess)):  # (load replaced the other graph's w)
            with pytest.raises(ValueError, match="another graph"):
                act()
        assert sess.run(other).shape == (5,) and not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="different graphs"):
        en.train.Saver({"a": w, "b": other})
    # nor does the export: it froze another graph's same-named variable (here of another shape) silently
    with pytest.raises(ValueError, match="w:0 is not in the session's graph"):
        en.train.export_inference_graph(sess, str(tmp_path / "model"), {}, {"w": w.value()})
    assert not os.listdir(tmp_path)


_OVERWRITE = textwrap.dedent('''
    import os, sys, numpy as np, engine as en, engine.saver as S
    with en.Graph().as_default():
        w = en.Variable(np.full(3, float(sys.argv[2]), np.float32), name="w")
        s = en.Session(); s.run(w.initializer)
        if sys.argv[3] == "manifest":  # killed as the manifest is written: the old checkpoint stands
            real_write = S.atomic_write_bytes
            S.atomic_write_bytes = lambda p, b: os.kill(os.getpid(), 9) if p.endswith(".json") else real_write(p, b)
        if sys.argv[3] == "rename":  # killed after the manifest, before the staged data is renamed: the new one
            real_replace = os.replace
            os.replace = lambda a, b: os.kill(os.getpid(), 9) if b.endswith(".npz") else real_replace(a, b)
        en.train.Saver().save(s, sys.argv[1])
''')


@pytest.mark.parametrize("kill_at,restored", [("manifest", 1.0), ("rename", 2.0)])
def test_a_save_killed_while_overwriting_leaves_one_restorable_checkpoint(tmp_path, kill_at, restored):
    prefix = str(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", _OVERWRITE, prefix, "1", "ok"], env=env, check=True)
    assert subprocess.run([sys.executable, "-c", _OVERWRITE, prefix, "2", kill_at], env=env).returncode == -9
    w = en.Variable(np.zeros(3, np.float32), name="w")
    sess = en.Session()
    en.train.Saver().restore(sess, prefix)
    np.testing.assert_array_equal(sess.run(w), np.full(3, restored, np.float32))
    subprocess.run([sys.executable, "-c", _OVERWRITE, prefix, "3", "ok"], env=env, check=True)
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.npz"]  # the killed save's staged data is gone
    en.train.Saver().restore(sess, prefix)
    np.testing.assert_array_equal(sess.run(w), np.full(3, 3.0, np.float32))


_FULL_DISK = textwrap.dedent('''
    import resource, signal, sys, numpy as np, engine as en
    with en.Graph().as_default():
        w = en.Variable(np.ones(1 << 20, np.float32), name="w")  # 4 MB of checkpoint data
        s = en.Session(); s.run(w.initializer)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
        try:
            en.train.Saver().save(s, sys.argv[1], global_step=7)
        except OSError as exc:
            print(exc.filename, "|", exc.strerror)
''')


def test_a_write_that_fails_for_room_names_the_checkpoint_file(tmp_path):
    """A full disk while saving said only "No space left on device": a write's OSError names no file, and the
    temporary or staged name it was under means nothing to a user. The error names the output."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    said = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "last"), str(1 << 20)], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    filename, _, reason = said.partition(" | ")
    assert filename == str(tmp_path / "last-7.npz") and reason == os.strerror(27)  # EFBIG: File too large
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_a_save_leaves_a_users_files_beside_the_checkpoint_alone(tmp_path):
    """The sweep of staged data left by killed saves removed any '<prefix>.npz-' + 16 characters, e.g. a backup
    'm.npz-2026-12-03T1'; it takes only the staged names (16 hex digits of the data's sha256)."""
    g = en.Graph()
    with g.as_default():
        en.Variable(np.ones(3, np.float32), name="w")
        with en.Session() as sess:
            sess.run(en.global_variables_initializer())
            saver = en.train.Saver()
            prefix = str(tmp_path / "m")
            saver.save(sess, prefix)
            backup = tmp_path / "m.npz-2026-12-03T1"
            staged = tmp_path / "m.npz-0123456789abcdef"
            backup.write_bytes(b"mine")
            staged.write_bytes(b"left by a killed save")
            saver.save(sess, prefix)
    assert backup.read_bytes() == b"mine" and not staged.exists()


def test_export_freezes_a_variable_read_and_a_control_edge_to_a_fed_op(tmp_path):
    x = en.placeholder(en.float32, (None, 2), name="x")
    v = en.Variable(np.float32([[1, 2], [3, 4]]), name="v")
    h = en.relu(en.matmul(x, v.read_value()), name="h")
    with en.control_dependencies([h.op]):
        o = en.identity(h) + 1.0
    feeds = {"x": np.float32([[1, 2]]), "h": np.float32([[1, -1]])}
    with en.Session() as s:
        s.run(en.global_variables_initializer())
        want_read = s.run(h, {x: feeds["x"]})
        want_fed = s.run(o, {h: feeds["h"]})
        en.train.export_inference_graph(s, str(tmp_path / "read"), {"x": x}, {"h": h})
        en.train.export_inference_graph(s, str(tmp_path / "fed"), {"h": h}, {"o": o})
        s.run(v.assign(np.zeros((2, 2), np.float32)))  # the export froze the value it had
    np.testing.assert_array_equal(en.train.import_inference_graph(str(tmp_path / "read")).run(
        {"x": feeds["x"]})["h"], want_read)
    np.testing.assert_array_equal(en.train.import_inference_graph(str(tmp_path / "fed")).run(
        {"h": feeds["h"]})["o"], want_fed)


def _zip_headers(data: bytes) -> list[tuple]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, i.date_time, i.extract_version, i.compress_type, i.extra) for i in archive.infolist()]


def test_npz_bytes_depend_on_the_arrays_alone_and_load_as_saved():
    """np.savez stamps the time and writes zip64 headers from CPython 3.11.4 on: the same weights had another
    digest on another patch release (a fresh runner's `make run` left dvc.lock changed)."""
    import io

    from engine.saver import npz_bytes

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.array([1, 2]), "e": np.zeros((0, 2))}
    data = npz_bytes(arrays)
    assert _zip_headers(data) == [(f"{name}.npy", (1980, 1, 1, 0, 0, 0), 20, 0, b"") for name in arrays]
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        assert loaded.files == list(arrays)
        assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())


def test_checkpoints_and_exports_are_written_with_fixed_headers(tmp_path):
    ids, dense, out = _model()
    with en.Session() as sess:
        sess.run(en.global_variables_initializer())
        prefix = en.train.Saver().save(sess, str(tmp_path / "ckpt"))
        en.train.export_inference_graph(sess, str(tmp_path / "export"), {"ids": ids, "dense": dense}, {"out": out})
    for path in (prefix + ".npz", tmp_path / "export" / "weights.npz"):
        assert {header[1:4] for header in _zip_headers(open(path, "rb").read())} == {((1980, 1, 1, 0, 0, 0), 20, 0)}


def test_checkpoint_and_export_files_honour_the_umask(tmp_path):
    """Checkpoints were written 0600 (mkstemp's mode) where every other file the pipeline writes follows the
    umask, as an open() would: another user (the serving container's) could not read them."""
    old = os.umask(0o022)
    try:
        g = en.Graph()
        with g.as_default():
            x = en.placeholder(en.float32, (None,), name="x")
            w = en.Variable(np.ones(3, np.float32), name="w")
            with en.Session() as sess:
                sess.run(en.global_variables_initializer())
                prefix = en.train.Saver().save(sess, str(tmp_path / "ckpt" / "m"))
                en.saver.export_inference_graph(sess, str(tmp_path / "export"), {"x": x}, {"y": x * w})
        os.umask(0o077)
        en.saver.atomic_write_bytes(str(tmp_path / "private"), b"x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for d in ("ckpt", "export") for p in (tmp_path / d).iterdir()}
    assert modes == {"m.json": 0o644, "m.npz": 0o644, "graph.json": 0o644, "weights.npz": 0o644}
    assert prefix == str(tmp_path / "ckpt" / "m") and (tmp_path / "private").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("suffix", [".json", ".npz"])
@pytest.mark.parametrize("kind", ["a named pipe", "a directory"])
def test_a_checkpoint_file_that_is_no_regular_file_is_data_loss_at_once(tmp_path, suffix, kind):
    """Found by a probe: a named pipe under a checkpoint's manifest or data name made ``restore`` wait for a writer
    forever (every rerun of a train resuming that folder hung), and a directory there was a bare IsADirectoryError.
    Both are a DataLossError naming the file, at once; an inference graph's files are read the same way."""
    v = en.Variable(np.arange(4, dtype=np.float32), name="v")
    with en.Session() as s:
        s.run(v.initializer)
        prefix = en.train.Saver().save(s, str(tmp_path / "model"))
        en.train.export_inference_graph(s, str(tmp_path / "export"), {}, {"y": v * 2.0})
    targets = [prefix + suffix, str(tmp_path / "export" / ("graph.json" if suffix == ".json" else "weights.npz"))]
    for target in targets:
        os.unlink(target)
        os.mkfifo(target) if kind == "a named pipe" else os.mkdir(target)
    with en.Session() as s, pytest.raises(en.errors.DataLossError, match=rf"{targets[0]} cannot be read"):
        without_waiting(lambda: en.train.Saver([v]).restore(s, prefix), targets[0])
    with pytest.raises(en.errors.DataLossError, match=rf"{targets[1]} cannot be read"):
        without_waiting(lambda: en.train.import_inference_graph(str(tmp_path / "export")), targets[1])


def test_a_named_pipe_under_the_staged_data_name_is_passed_over(tmp_path):
    """A restore looks for the staged data a killed save left (``<prefix>.npz-<sha256[:16]>``); something there that
    is no regular file is not it: the checkpoint restores from its data file, without waiting on a pipe."""
    v = en.Variable(np.arange(4, dtype=np.float32), name="v")
    with en.Session() as s:
        s.run(v.initializer)
        prefix = en.train.Saver().save(s, str(tmp_path / "model"))
    staged = f"{prefix}.npz-{json.load(open(prefix + '.json'))['data_sha256'][:16]}"
    os.mkfifo(staged)
    with en.Session() as s:
        without_waiting(lambda: en.train.Saver([v]).restore(s, prefix), staged)
        np.testing.assert_array_equal(s.run(v), np.arange(4, dtype=np.float32))


def _dropout_training(seed=3):
    """A graph whose train step draws (dropout): (graph, x, y, train_op, init, saver)."""
    graph = en.Graph()
    with graph.as_default():
        en.set_random_seed(seed)
        x, y = en.placeholder(en.float32, (None, 4), name="x"), en.placeholder(en.float32, (None, 1), name="y")
        hidden = en.dropout(en.layers.Dense(8, activation="relu", seed=1)(x), 0.5, training=True)
        loss = en.reduce_mean(en.square(en.layers.Dense(1, seed=2)(hidden) - y))
        train_op = en.train.AdamOptimizer(0.01).minimize(loss)
        return graph, x, y, train_op, en.global_variables_initializer(), en.train.Saver()


def test_a_run_with_dropout_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    """Found by a probe: a checkpoint kept the variables only, and a new Session starts every random stream at its
    seed, so a run with dropout resumed after 10 of 20 steps drew its first 10 masks again and ended on other
    weights (max difference 0.23). The checkpoint keeps each random op's stream position; restored, the run draws on
    from there and ends bit for bit as the uninterrupted one."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(32, 4)).astype(np.float32)

    def feed(x, y):
        return {x: xs, y: xs.sum(1, keepdims=True)}

    graph, x, y, train_op, init, _ = _dropout_training()
    with en.Session(graph) as sess:
        sess.run(init)
        for _ in range(20):
            sess.run(train_op, feed(x, y))
        straight = dict(sess.state)
    graph, x, y, train_op, init, saver = _dropout_training()
    with en.Session(graph) as sess:
        sess.run(init)
        for _ in range(10):
            sess.run(train_op, feed(x, y))
        prefix = saver.save(sess, str(tmp_path / "ck"))
    graph, x, y, train_op, init, saver = _dropout_training()
    with en.Session(graph) as sess:
        saver.restore(sess, prefix)
        for _ in range(10):
            sess.run(train_op, feed(x, y))
        resumed = dict(sess.state)
    assert sorted(resumed) == sorted(straight)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)

    other, *_, other_saver = _dropout_training(seed=4)  # the same variables, its dropout of other seeds: refused
    with en.Session(other) as sess, pytest.raises(en.errors.InvalidArgumentError, match=r"random op .*dropout.* seeds"):
        other_saver.restore(sess, prefix)
    manifest = json.load(open(prefix + ".json"))
    manifest["random_streams"][0]["state"] = {"bit_generator": "MT19937"}
    json.dump(manifest, open(prefix + ".json", "w"))
    with en.Session(graph) as sess, pytest.raises(en.errors.DataLossError, match=r"random_streams\[0\]"):
        saver.restore(sess, prefix)


def test_an_npz_that_is_no_archive_is_a_value_error_naming_it(tmp_path):
    """Found by a probe: of 308 damaged copies of an .npz (cut short, 1-3 bytes changed), read_npz raised
    zipfile.BadZipFile for 270, OSError "[Errno 22] Invalid argument" (no file named) for 4, NotImplementedError for 3
    and RuntimeError for 1: its callers catch ValueError and OSError (pipeline/bundle.py's load of a bundle whose
    checksums were rewritten with its files), so those escaped as tracebacks. Each is a ValueError naming the file."""
    good = en.saver.npz_bytes({"a": np.arange(10.0), "b": np.ones((3, 4), np.float32)})
    rng = np.random.default_rng(0)
    damaged = [good[:n] for n in (0, 1, 10, 100, len(good) // 2, len(good) - 1)] + [b"not a zip", b"PK\x03\x04" * 50]
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        damaged.append(bytes(data))
    path = tmp_path / "x.npz"
    refused = 0
    for data in damaged:
        path.write_bytes(data)
        try:  # a change the archive cannot see (in a value, a member's name) reads: its checksums are the callers'
            en.saver.read_npz(str(path))
        except ValueError as e:
            assert str(path) in str(e) or str(e).startswith("member "), e
            refused += 1
    assert refused > 250
