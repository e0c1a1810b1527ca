"""The baseline by hand; engine models (en.layers) learn, stop early, resume exactly, never predict negative sales."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline import models
from pipeline.features import CATEGORICAL_FIELDS, FeatureMatrix, FeatureRows, day_number
from pipeline.metrics import nwrmsle


def test_baseline_is_the_weekday_moving_average_by_hand():
    sales = np.zeros((1, 28), np.float32)
    # origin 2017-03-10 (Friday, column 27); target 2017-03-13 (Monday): Mondays are columns 23, 16, 9, 2
    for col, units in ((23, 3.0), (16, 1.0), (9, 7.0), (2, 100.0)):
        sales[0, col] = units
    rows = FeatureRows(sales=sales, promo=np.zeros_like(sales), origin_day=day_number(["2017-03-10"]),
                       horizon=np.array([3]), target_promo=np.zeros(1), holidays=np.zeros((1, 5)), categorical={})
    expected_2w = np.expm1((np.log1p(3.0) + np.log1p(1.0)) / 2)
    expected_3w = np.expm1((np.log1p(3.0) + np.log1p(1.0) + np.log1p(7.0)) / 3)
    assert models.baseline_predict(rows, 2)[0] == pytest.approx(expected_2w, rel=1e-6)
    assert models.baseline_predict(rows, 3)[0] == pytest.approx(expected_3w, rel=1e-6)
    with pytest.raises(ValueError, match="baseline_weeks"):
        models.baseline_predict(rows, 5)


def _problem(n, seed):
    """log1p(units) = 1 + x0 - 0.5 x1 + item effect; the models must find it."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    cats = np.ones((n, len(CATEGORICAL_FIELDS)), np.int32)
    cats[:, 1] = rng.integers(1, 6, n)
    effect = np.array([0, 0.0, 0.5, -0.5, 1.0, 0.2])[cats[:, 1]]
    log1p = np.maximum(1 + dense[:, 0] - 0.5 * dense[:, 1] + effect, 0)
    return FeatureMatrix(dense, cats), np.expm1(log1p).astype(np.float32), np.where(cats[:, 1] == 2, 1.25, 1.0)


def _config(kind, matrix):
    mean, std, constant = models.normalization(matrix.dense)
    return models.ModelConfig(kind=kind, dense_size=matrix.dense.shape[1],
                              vocab_sizes={f: 6 for f in CATEGORICAL_FIELDS},
                              embedding_dims={f: 2 for f in CATEGORICAL_FIELDS}, hidden_units=(16,),
                              dense_mean=mean, dense_std=std, dense_constant=constant, output_bias=1.0)


def _identity(run: str, **parts) -> models.CheckpointIdentity:
    """The identity of a run's checkpoints: ``run`` stands for its params (16 batches an epoch: 1000 rows of 64)."""
    data = {"data/split/train.parquet": "0" * 32, "data/prepared/holidays.parquet": "2" * 32}
    return models.CheckpointIdentity(**{"data": data, "params": {"train": {"run": run}},
                                        "code": "c" * 64, "libraries": {"numpy": "2.1.0"}, "batch_order": "held",
                                        "batches_per_epoch": 16, **parts})


def _train(kind, x, y, w, vx, vy, vw, *, seed, max_steps, eval_every, patience, batch_size, learning_rate, **kwargs):
    batches = models.in_memory_batches(x, y, w, batch_size, seed)
    return models.train(_config(kind, x), batches, vx, vy, vw, seed=seed, max_steps=max_steps, eval_every=eval_every,
                        patience=patience, learning_rate=learning_rate, **kwargs)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_models_learn_a_known_function(kind):
    x, y, w = _problem(4000, 0)
    vx, vy, vw = _problem(1000, 1)
    result = _train(kind, x, y, w, vx, vy, vw, seed=1, max_steps=1200, eval_every=100, patience=12, batch_size=128,
                    learning_rate=0.02)
    scores = [c["inner_validation_nwrmsle"] for c in result.curves]
    best = min(scores)
    constant = nwrmsle(vy, np.full_like(vy, np.expm1(1.0)), vw)
    assert best < 0.2 and constant > 1.0, (best, constant)  # the target clips at 0, which a linear output cannot
    assert result.curves[scores.index(best)]["step"] == result.best_step
    assert [c["step"] for c in result.curves] == list(range(100, result.steps_run + 1, 100))


def test_models_are_built_from_the_engines_layers():
    import engine as en

    x, _, _ = _problem(10, 0)
    with en.Graph().as_default():
        model = models.Forecaster(_config("mlp", x), seed=0)
        assert isinstance(model.output, en.layers.Dense) and all(isinstance(h, en.layers.Dense) for h in model.hidden)
        assert all(isinstance(e, en.layers.Embedding) for e in model.embeddings.values())


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_feature_constant_in_training_does_not_move_a_forecast(kind):
    """A feature every training row has at one value (default data: no training target falls on a local holiday)
    gets no gradient; its random initial weights moved the forecast of a request where it differed (0.92-1.08x)."""
    def with_flag(matrix: FeatureMatrix, value: float) -> FeatureMatrix:  # a fourth feature, e.g. a holiday flag
        flag = np.full((matrix.dense.shape[0], 1), value, np.float32)
        return FeatureMatrix(np.hstack([matrix.dense, flag]), matrix.categorical)

    x, y, w = _problem(2000, 0)
    vx, vy, vw = _problem(500, 1)
    x, vx = with_flag(x, 0.0), with_flag(vx, 0.0)
    assert models.normalization(x.dense)[2].tolist() == [False, False, False, True]
    result = _train(kind, x, y, w, vx, vy, vw, seed=1, max_steps=200, eval_every=100, patience=5, batch_size=128,
                    learning_rate=0.02)
    config = _config(kind, x)
    off = models.predict_weights(config, result.weights, vx)
    on = models.predict_weights(config, result.weights, with_flag(FeatureMatrix(vx.dense[:, :3], vx.categorical), 1.0))
    np.testing.assert_array_equal(on, off)
    assert not result.weights["dense_0/kernel"][3].any()  # its row of the layer the features enter


def test_training_stops_early_and_runs_at_most_max_steps():
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    capped = _train("mlp", x, y, w, vx, vy, vw, seed=5, max_steps=30, eval_every=20, patience=50, batch_size=64,
                    learning_rate=0.01)
    assert capped.steps_run == 30 and [c["step"] for c in capped.curves] == [20, 30]
    # a learning rate this large diverges at once: no evaluation improves on the first, and patience ends the run
    stopped = _train("mlp", x, y, w, vx, vy, vw, seed=5, max_steps=10_000, eval_every=10, patience=2, batch_size=64,
                     learning_rate=50.0)
    assert stopped.steps_run < 10_000 and len(stopped.curves) - 1 - stopped.curves.index(
        min(stopped.curves, key=lambda c: c["inner_validation_nwrmsle"])) == 2


def test_training_is_seeded_and_reproducible():
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    runs = [_train("mlp", x, y, w, vx, vy, vw, seed=5, max_steps=40, eval_every=20, patience=3, batch_size=64,
                   learning_rate=0.01) for _ in range(2)]
    assert runs[0].curves == runs[1].curves
    for name in runs[0].weights:
        np.testing.assert_array_equal(runs[0].weights[name], runs[1].weights[name])
    other = _train("mlp", x, y, w, vx, vy, vw, seed=6, max_steps=20, eval_every=20, patience=1, batch_size=64,
                   learning_rate=0.01)
    assert other.curves[0] != runs[0].curves[0]


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    """In process: stop after 60 steps (max_steps), resume to 140 from the checkpoint; same as 140 straight."""
    x, y, w = _problem(1000, 0)  # 16 batches an epoch: checkpoints every 20 steps fall mid-epoch
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=140, **args)
    first = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    assert first.steps_run == 60 and (tmp_path / models.STATE_FILE).is_file()
    said = []  # the resume is announced when it happens, before the first evaluation, not after the whole fit
    resumed = _train("mlp", x, y, w, vx, vy, vw, max_steps=140, checkpoint_dir=tmp_path, identity=_identity("f"),
                     log=said.append, on_eval=lambda step, curve: said.append(step), **args)
    assert said[:2] == [f"train: resuming from the checkpoint at step 60 in {tmp_path}", 80]
    assert resumed.resumed_at_step == 60 and resumed.curves == straight.curves
    for name in straight.weights:
        np.testing.assert_array_equal(resumed.weights[name], straight.weights[name])
    # a checkpoint of another configuration is never resumed
    other = _train("mlp", x, y, w, vx, vy, vw, max_steps=20, checkpoint_dir=tmp_path, identity=_identity("g"), **args)
    assert other.resumed_at_step == 0 and len(other.curves) == 1


OTHER_INPUTS = {  # a part changed between the kill and the rerun -> what the rerun says of the checkpoint
    "params": ({"params": {"features": {"horizon": 16}, "train": {"learning_rate": 0.02, "seed": 4}}},
               "params (train.learning_rate 0.01 -> 0.02)"),
    "a param added, one nested": ({"params": {"features": {"horizon": 16, "yearly": False},
                                              "train": {"learning_rate": 0.01, "seed": 4, "dims": {"item": 4}}}},
                                  "params (features.yearly none -> false, train.dims.item none -> 4)"),
    "data": ({"data": {"data/split/train.parquet": "1" * 32, "data/prepared/holidays.parquet": "2" * 32}},
             "data (data/split/train.parquet)"),  # a digest is not shown
    "code": ({"code": "d" * 64}, "code"),
    "libraries": ({"libraries": {"numpy": "2.2.1", "numba": "0.61.0", "python": "3.11.9", "blas_kernels": "Haswell"}},
                  "libraries (numpy 2.1.0 -> 2.2.1)"),
    "the BLAS kernels": ({"libraries": {"numpy": "2.1.0", "numba": "0.61.0", "python": "3.11.9",
                                        "blas_kernels": "SkylakeX"}},
                         "libraries (blas_kernels Haswell -> SkylakeX)"),
    "batch order": ({"batch_order": "streamed from shards"}, "batch order (held -> streamed from shards)"),
    "two parts": ({"params": {"features": {"horizon": 16}, "train": {"learning_rate": 0.02, "seed": 4}},
                   "libraries": {"numpy": "2.2.1", "numba": "0.61.0", "python": "3.11.9", "blas_kernels": "Haswell"}},
                  "params (train.learning_rate 0.01 -> 0.02) and libraries (numpy 2.1.0 -> 2.2.1)"),
    "many params": ({"params": {"features": {"horizon": 8}, "train": {"learning_rate": 0.02, "seed": 5, "x": 1,
                                                                      "hidden_units": [256, 128, 64, 32, 16, 8]}}},
                    "params (features.horizon 16 -> 8, train.hidden_units, train.learning_rate 0.01 -> 0.02, 2 more)"),
}


@pytest.mark.parametrize("case", OTHER_INPUTS)
def test_a_checkpoint_of_other_inputs_names_the_parts_that_differ_and_starts_over(tmp_path, case):
    """It said only `is of other data, params, code or libraries`: a user could not tell which had changed since
    the kill. The checkpoint now records its identity part by part, and the rerun names the parts (and the params
    and libraries by name) that differ; it starts over, to the model an uninterrupted run makes."""
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    parts = {"params": {"features": {"horizon": 16}, "train": {"learning_rate": 0.01, "seed": 4}},
             "libraries": {"numpy": "2.1.0", "numba": "0.61.0", "python": "3.11.9", "blas_kernels": "Haswell"}}
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("", **parts), **args)
    changed, named = OTHER_INPUTS[case]
    said = []
    again = _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path,
                   identity=_identity("", **{**parts, **changed}), log=said.append, **args)
    assert said == [f"train: the checkpoint in {tmp_path} is of other {named}; starting over"]
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=40, **args)
    assert again.resumed_at_step == 0 and again.curves == straight.curves


@pytest.mark.parametrize("with_checksum", [True, False], ids=["checksummed", "before-checksums"])
def test_a_checkpoint_of_an_older_train_that_kept_one_hash_is_started_over_saying_so(tmp_path, with_checksum):
    """A state.json written before checkpoints kept their parts (version 1: one ``fingerprint``) cannot say what it
    was made of: the rerun says it predates that and starts over, to the model an uninterrupted run makes. A train
    before 2026-12-04 wrote version 1 without a checksum (and its curves' ``validation_nwrmsle``): the same line,
    not "its checksum does not match its fields (edited by hand, or damaged)" (what an upgrade said before)."""
    import json

    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    path = tmp_path / models.STATE_FILE
    doc = json.loads(path.read_text())
    fields = {"fingerprint": "e" * 64, **{k: v for k, v in doc.items()
                                          if k not in ("format", "version", "checksum", "identity")}}
    if not with_checksum:  # as pipeline/models.py at 907d910 wrote it
        fields = {k: v for k, v in fields.items() if k != "checkpoint_digests"}
        fields["curves"] = [{"validation_nwrmsle" if k == "inner_validation_nwrmsle" else k: v for k, v in c.items()}
                            for c in fields["curves"]]
    checksum = {"checksum": models._state_checksum(fields)} if with_checksum else {}
    path.write_text(json.dumps({"format": models.STATE_FORMAT, "version": 1, **fields, **checksum}, indent=1))
    said = []
    again = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"),
                   log=said.append, **args)
    assert said == [f"train: the checkpoint in {tmp_path} predates checkpoints that record their data, params, code, "
                    "libraries, batch order and batches per epoch apart (an older train wrote it); starting over"]
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, **args)
    assert again.resumed_at_step == 0 and again.curves == straight.curves
    assert json.loads(path.read_text())["version"] == models.STATE_VERSION  # its own checkpoint replaced it


def _newest(directory, pattern):
    return max(directory.glob(pattern), key=lambda path: int(path.name.split("-")[1].split(".")[0]))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_state(directory, **fields):
    """Edit state.json's fields and its checksum with them (a tool's bug, say: the checks after the checksum's)."""
    import json

    path = directory / models.STATE_FILE
    doc = {**json.loads(path.read_text()), **fields}
    doc["checksum"] = models._state_checksum({k: v for k, v in doc.items()
                                              if k not in ("format", "version", "checksum")})
    path.write_text(json.dumps(doc))  # NaN is written as JSON's NaN


def _another_runs_checkpoint(directory, prefix):
    """Replace the state's ``prefix`` checkpoint (best or last) by another run's of the same name and step."""
    import json
    import shutil

    name = json.loads((directory / models.STATE_FILE).read_text())[f"{prefix}_checkpoint"]
    other = directory.parent / f"other-{prefix}"
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=other, identity=_identity("g"), seed=5,
           eval_every=20, patience=50, batch_size=64, learning_rate=0.02)
    step = name.rsplit("-", 1)[1]
    for suffix in (".npz", ".json"):  # the other run's checkpoint of that step, under this run's name
        source = next(p for p in other.glob(f"{prefix}-*{suffix}") if p.name.startswith(f"{prefix}-"))
        shutil.copy(source, directory / f"{prefix}-{step}{suffix}")


def _swap_names_in_manifest(directory, a, b):
    """Swap the names of two variables of one shape in the last checkpoint's manifest (its data as it was)."""
    import json

    path = _newest(directory, "last-*.json")
    manifest = json.loads(path.read_text())
    entries = {e["name"]: e for e in manifest["variables"]}
    entries[a]["name"], entries[b]["name"] = b, a
    path.write_text(json.dumps(manifest, indent=1))


def _without_a_member(path):
    """Rewrite a checkpoint's .npz without its first array (a zip member deleted: `zip -d`)."""
    import io
    import zipfile

    with zipfile.ZipFile(path) as whole:
        members = [(info, whole.read(info)) for info in whole.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as cut:
        for info, data in members[1:]:
            cut.writestr(info, data)
    path.write_bytes(out.getvalue())


CHECKPOINT_DAMAGE = {
    "the last checkpoint cut short": lambda d: _newest(d, "last-*.npz").write_bytes(
        _newest(d, "last-*.npz").read_bytes()[:100]),
    "a byte flipped in the last checkpoint": lambda d: _flip_a_byte(_newest(d, "last-*.npz")),
    "a member deleted from the last checkpoint": lambda d: _without_a_member(_newest(d, "last-*.npz")),
    "a member deleted from the best checkpoint": lambda d: _without_a_member(_newest(d, "best-*.npz")),
    "a byte flipped in the best checkpoint": lambda d: _flip_a_byte(_newest(d, "best-*.npz")),
    "the last checkpoint's manifest deleted": lambda d: _newest(d, "last-*.json").unlink(),
    "the manifest cut short": lambda d: _newest(d, "last-*.json").write_text('{"format": "shelfc'),
    "the state file cut short": lambda d: (d / models.STATE_FILE).write_text(
        (d / models.STATE_FILE).read_text()[:40]),
    "a state field of the wrong type": lambda d: (d / models.STATE_FILE).write_text(
        (d / models.STATE_FILE).read_text().replace('"step": 40', '"step": "40"')),
    # well-typed but out of range: an islice error on every rerun, a resume at step -50, the wrong weights kept
    "a negative batch": lambda d: _set_state(d, batch=-1),
    "a negative step": lambda d: _set_state(d, step=-50),
    "a best score that is not a number": lambda d: _set_state(d, best_score=float("nan")),
    "an infinite best score": lambda d: _set_state(d, best_score=float("inf")),
    "a best step after the step": lambda d: _set_state(d, best_step=400),
    "a step other than the last evaluation's": lambda d: _set_state(d, step=4_000_000),
    "more evaluations since the best than were made": lambda d: _set_state(d, evals_since_best=9),
    # a position other than the step's (16 batches an epoch: step 40 is epoch 2, batch 8): resumed, the run skipped
    # the rest of epoch 2 without a word (at its end) or said so only after resuming and starting over (past it)
    "a batch at its epoch's end, though the step is not": lambda d: _set_state(d, batch=16),
    "a batch past its epoch's end": lambda d: _set_state(d, batch=30),
    "an epoch other than the step's": lambda d: _set_state(d, epoch=1),
    # found by a probe: resumed silently, to another model (a kill between another run's checkpoint and its state
    # left that run's files under this state; a hand edit; a file copied in)
    "a field edited by hand (its checksum not)": lambda d: (d / models.STATE_FILE).write_text(
        (d / models.STATE_FILE).read_text().replace('"best_step": 40', '"best_step": 20')),
    "another run's best checkpoint under its name": lambda d: _another_runs_checkpoint(d, "best"),
    "another run's last checkpoint under its name": lambda d: _another_runs_checkpoint(d, "last"),
    # found by a probe: the state recorded a checkpoint's data, not its manifest, so an edited manifest was resumed:
    # these two swapped, another model silently; Adam's two slots swapped, a traceback (NaN scores) on every rerun
    "two variables' names swapped in a manifest": lambda d: _swap_names_in_manifest(
        d, "embedding_city/embeddings", "embedding_family/embeddings"),
    "Adam's two slots swapped in a manifest": lambda d: _swap_names_in_manifest(
        d, "dense_0/kernel/Adam", "dense_0/kernel/Adam_1"),
    # found by a probe: "starting over", then the same error on every rerun (the files could not be deleted)
    "a folder where the state file should be": lambda d: ((d / models.STATE_FILE).unlink(),
                                                          (d / models.STATE_FILE / "x").mkdir(parents=True)),
    "a folder where the last checkpoint should be": lambda d: (_newest(d, "last-*.npz").unlink(),
                                                               (d / _newest(d, "last-*.json").stem).with_suffix(
                                                                   ".npz").mkdir()),
}


def _same_model(result, straight):
    assert result.curves == straight.curves
    for name in straight.weights:
        np.testing.assert_array_equal(result.weights[name], straight.weights[name])


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before_it(tmp_path, damage):
    """Damage after a kill (a disk error, a hand edit) to the newest checkpoint (state.json or a file it names): the
    run says which it skipped and why, resumes from the evaluation before it (kept with it), and ends on the bytes
    of an uninterrupted run. Before, it started over from step 0 although that older checkpoint was intact."""
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, **args)
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    assert {p.name for p in tmp_path.iterdir()} == {models.STATE_FILE, models.PREVIOUS_STATE_FILE, "best-20.json",
                                                   "best-20.npz", "best-40.json", "best-40.npz", "last-20.json",
                                                   "last-20.npz", "last-40.json", "last-40.npz"}
    CHECKPOINT_DAMAGE[damage](tmp_path)
    said = []
    again = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"),
                   log=said.append, **args)
    assert len(said) == 2, said
    assert said[0].startswith("train: the newest checkpoint ") and f"in {tmp_path} cannot be resumed (" in said[0]
    assert said[0].endswith("); skipped for the one before it, at step 20")
    assert said[1] == f"train: resuming from the checkpoint at step 20 in {tmp_path}"
    assert again.resumed_at_step == 20
    _same_model(again, straight)
    # the damaged files are gone: the next rerun resumes from the new checkpoints without a word about damage
    said.clear()
    resumed = _train("mlp", x, y, w, vx, vy, vw, max_steps=80, checkpoint_dir=tmp_path, identity=_identity("f"),
                     log=said.append, **args)
    assert resumed.resumed_at_step == 60 and said == [f"train: resuming from the checkpoint at step 60 in {tmp_path}"]
    _same_model(resumed, _train("mlp", x, y, w, vx, vy, vw, max_steps=80, **args))


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_with_none_intact_before_it_is_reported_and_training_starts_over(tmp_path, damage):
    """The newest damaged and no evaluation before it (a run's first, or its state deleted): one line names the
    folder, and the run starts over to the model an uninterrupted run makes, not a traceback on every rerun."""
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, **args)
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    CHECKPOINT_DAMAGE[damage](tmp_path)
    (tmp_path / models.PREVIOUS_STATE_FILE).unlink(missing_ok=True)
    said = []
    again = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"),
                   log=said.append, **args)
    assert len(said) == 1 and said[0].startswith(f"train: the checkpoint in {tmp_path} cannot be resumed (")
    assert said[0].endswith("); starting over")
    assert again.resumed_at_step == 0
    _same_model(again, straight)
    # the damaged files are gone: the next rerun resumes from the new checkpoints without a word about damage
    said.clear()
    resumed = _train("mlp", x, y, w, vx, vy, vw, max_steps=80, checkpoint_dir=tmp_path, identity=_identity("f"),
                     log=said.append, **args)
    assert resumed.resumed_at_step == 60 and said == [f"train: resuming from the checkpoint at step 60 in {tmp_path}"]


def test_both_kept_checkpoints_damaged_are_reported_and_training_starts_over(tmp_path):
    """The newest and the one before it both unreadable: one line gives both reasons, and the run starts over."""
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    _flip_a_byte(tmp_path / "last-40.npz")
    _without_a_member(tmp_path / "last-20.npz")
    said = []
    again = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"),
                   log=said.append, **args)
    assert len(said) == 1 and said[0].startswith(f"train: the checkpoint in {tmp_path} cannot be resumed (")
    assert "last-40" in said[0] and "), nor the one before it (" in said[0] and "last-20" in said[0]
    assert said[0].endswith("); starting over")
    assert again.resumed_at_step == 0
    _same_model(again, _train("mlp", x, y, w, vx, vy, vw, max_steps=60, **args))


def test_a_run_keeps_the_checkpoints_of_its_last_two_evaluations_only(tmp_path):
    """Every evaluation's clean-up deletes what neither state.json nor previous-state.json names."""
    import json

    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    _train("mlp", x, y, w, vx, vy, vw, max_steps=100, checkpoint_dir=tmp_path, identity=_identity("f"), seed=4,
           eval_every=20, patience=50, batch_size=64, learning_rate=0.01)
    states = [json.loads((tmp_path / name).read_text()) for name in (models.STATE_FILE, models.PREVIOUS_STATE_FILE)]
    assert [state["step"] for state in states] == [100, 80]
    named = {state[k] for state in states for k in ("last_checkpoint", "best_checkpoint")}
    assert {p.name for p in tmp_path.iterdir()} == {models.STATE_FILE, models.PREVIOUS_STATE_FILE} | {
        f"{name}{suffix}" for name in named for suffix in (".json", ".npz")}


def test_the_partial_copy_a_kill_leaves_mid_write_is_deleted_by_the_next_checkpoint(tmp_path):
    """Found by a probe: SIGKILL while a checkpoint's data was being written (engine/saver.py atomic_write_bytes)
    left its temporary copy, ``.tmp-<random>``, up to a whole checkpoint's size; no later checkpoint deleted it
    (only staged data, ``<name>.npz-<digest>``, was), so every such kill added one until the run finished."""
    import tempfile

    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    fd, partial = tempfile.mkstemp(prefix=".tmp-", dir=tmp_path)  # the name the killed write had, half its bytes
    with open(fd, "wb") as f:
        f.write(_newest(tmp_path, "last-*.npz").read_bytes()[:1000])
    said = []
    resumed = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path, identity=_identity("f"),
                     log=said.append, **args)
    assert resumed.resumed_at_step == 40 and said == [f"train: resuming from the checkpoint at step 40 in {tmp_path}"]
    assert not os.path.exists(partial)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_training_set_of_another_size_is_another_identity_and_training_starts_over(tmp_path):
    """Half the rows, 8 batches an epoch where the checkpoint counted 16: its place (epoch 2, batch 8 at step 40) is
    the end of epoch 2 in the smaller set, and an identity without the count resumed there without a word, having
    skipped the rest of that epoch. The count is a part of the identity: the rerun names it and starts over."""
    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    half = FeatureMatrix(x.dense[:500], x.categorical[:500]), y[:500], w[:500]
    said = []
    again = _train("mlp", *half, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path,
                   identity=_identity("f", batches_per_epoch=8), log=said.append, **args)
    assert said == [f"train: the checkpoint in {tmp_path} is of other batches per epoch (16 -> 8); starting over"]
    _same_model(again, _train("mlp", *half, vx, vy, vw, max_steps=60, **args))


def test_a_batch_source_that_gives_other_than_the_identitys_count_is_an_error(tmp_path):
    """The identity's count is checked at every epoch's end: a caller that counted wrong gets an error naming both
    numbers, not checkpoints whose places skip or repeat batches when resumed."""
    x, y, w = _problem(500, 0)  # 8 batches an epoch
    vx, vy, vw = _problem(300, 1)
    with pytest.raises(ValueError, match=r"^train: epoch 0 gave 8 batches, not the 16 of the checkpoint identity's "
                                         r"batches_per_epoch$"):
        _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), seed=4,
               eval_every=20, patience=50, batch_size=64, learning_rate=0.01)


def test_expected_units_sum_to_the_actual_units_where_the_factor_was_fitted():
    x, y, w = _problem(2000, 0)
    vx, vy, vw = _problem(500, 1)
    result = _train("mlp", x, y, w, vx, vy, vw, seed=2, max_steps=200, eval_every=50, patience=4, batch_size=128,
                    learning_rate=0.02)
    config = _config("mlp", x)
    median = models.predict_weights(config, result.weights, vx)
    factor = models.expected_units_factor(vy, median)
    expected = models.predict_weights(config, result.weights, vx, factor)
    assert expected.sum() == pytest.approx(vy.sum(), rel=1e-4)
    np.testing.assert_allclose(expected, np.maximum(factor * (median + 1) - 1, 0), rtol=1e-5, atol=1e-5)


def test_predictions_are_clipped_at_zero(tmp_path):
    from engine import saver

    x, y, w = _problem(50, 0)
    config = _config("linear", x)
    config.output_bias = -20.0  # the raw output is far below zero
    result = _train("linear", x, y, w, x, y, w, seed=0, max_steps=1, eval_every=1, patience=1, batch_size=64,
                    learning_rate=1e-6)
    models.export_model(config, result.weights, tmp_path, expected_factor=1.5)
    model = saver.import_inference_graph(str(tmp_path))
    feed = {"dense": x.dense, **{f"categorical_{f}": np.ascontiguousarray(x.categorical[:, j])
                                 for j, f in enumerate(CATEGORICAL_FIELDS)}}
    out = model.run(feed)
    assert (out["log1p_sales"] < 0).all() and (out["prediction"] == 0).all()
    np.testing.assert_allclose(out["expected_units"], 0.5)  # 1.5 * (0 + 1) - 1


def test_unknown_model_kind_is_refused():
    with pytest.raises(ValueError, match="train.model"):
        models.ModelConfig(kind="forest", dense_size=1, vocab_sizes={}, embedding_dims={}, hidden_units=())


@pytest.mark.parametrize("name", ["state.json", "last-40.json", "last-40.npz", "best-40.npz"])
def test_a_named_pipe_under_a_checkpoints_name_is_skipped_not_waited_on(tmp_path, name):
    """Found by a probe: a named pipe where the newest state, manifest or data file was (a foreign file in the
    folder) made the rerun wait in ``open`` for a writer forever, on every rerun. It is unreadable, at once: the run
    skips that checkpoint for the one before it, says so, and ends on the bytes of an uninterrupted run."""
    from tests.conftest import without_waiting

    x, y, w = _problem(1000, 0)
    vx, vy, vw = _problem(300, 1)
    args = {"seed": 4, "eval_every": 20, "patience": 50, "batch_size": 64, "learning_rate": 0.01}
    straight = _train("mlp", x, y, w, vx, vy, vw, max_steps=60, **args)
    _train("mlp", x, y, w, vx, vy, vw, max_steps=40, checkpoint_dir=tmp_path, identity=_identity("f"), **args)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    said = []
    again = without_waiting(lambda: _train("mlp", x, y, w, vx, vy, vw, max_steps=60, checkpoint_dir=tmp_path,
                                           identity=_identity("f"), log=said.append, **args), tmp_path / name)
    assert len(said) == 2 and f"{tmp_path / name}" in said[0] and "not a regular file" in said[0], said
    assert said[0].endswith("); skipped for the one before it, at step 20")
    assert again.resumed_at_step == 20
    _same_model(again, straight)
