"""params.yaml loads into typed settings; a bad value names its key."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import replace

import pytest
import yaml

from pipeline.params import SECTIONS, ParamsError, data_params, load_yaml, prepare_params, split_params

from .conftest import REPO, default_params


def test_default_params_load():
    raw = load_yaml(REPO / "params.yaml")
    data = data_params(raw)
    assert data.source == "synthetic"
    assert data.synthetic.end_date == dt.date(2017, 8, 15)
    assert (data.synthetic.end_date - data.synthetic.start_date).days > 365
    assert prepare_params(raw).grid == "from_first_sale"
    assert split_params(raw).validation_days == 16


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("split", "validation_days", 0, "split.validation_days: must be >= 1"),
        ("split", "validation_days", "16", "split.validation_days: expected an integer"),
        # 1e4 / 16.0 are floats to YAML 1.2 (and DVC): the refusal says how to write the whole number
        ("split", "validation_days", 16.0, "split.validation_days: expected an integer, got 16.0 (a whole number is "
                                           "written without a point or exponent: 16)"),
        ("synthetic", "items", 1e4, "data.synthetic.items: expected an integer, got 10000.0 (a whole number is "
                                    "written without a point or exponent: 10000)"),
        ("prepare", "returns", "clip", "prepare.returns: must be one of zero, keep"),
        ("prepare", "grid", None, "prepare.grid: must be one of"),
        ("synthetic", "stores", 1001, "data.synthetic.stores: must be <= 1000"),
        ("synthetic", "start_date", "2016-02-30", "data.synthetic.start_date: expected a date"),
        # Python 3.11's date.fromisoformat took these as dates although the message asks for YYYY-MM-DD
        ("synthetic", "start_date", 20160101, "data.synthetic.start_date: expected a date YYYY-MM-DD, got 20160101"),
        ("synthetic", "start_date", "2016-W01-1", "data.synthetic.start_date: expected a date YYYY-MM-DD"),
        ("synthetic", "end_date", "20170815", "data.synthetic.end_date: expected a date YYYY-MM-DD"),
        ("synthetic", "end_date", "2012-06-01", "data.synthetic.end_date: 2012-06-01 is before start_date"),
        ("synthetic", "compression", "zip", "data.synthetic.compression: must be one of gzip, none"),
        ("synthetic", "seed", True, "data.synthetic.seed: expected an integer"),
        ("data", "sha256", {"train.csv": "abc"}, "data.sha256.train.csv: not a sha256"),
        ("data", "source", "", "data.source: expected a non-empty string"),
        # an http source's socket refused it with a traceback: "OverflowError: timestamp out of range for time_t"
        ("download", "timeout_s", 1e12, "data.download.timeout_s: must be <= 86400, got 1000000000000.0"),
    ],
)
def test_bad_value_names_its_key(section, key, value, message):
    raw = default_params()
    target = raw["data"][section] if section in ("synthetic", "download") else raw[section]
    target[key] = value
    loader = {"split": split_params, "prepare": prepare_params}.get(section, data_params)
    with pytest.raises(ParamsError) as error:
        loader(raw)
    assert str(error.value).startswith(message)


def test_unknown_and_missing_keys_are_errors():
    raw = default_params()
    raw["split"]["validaton_days"] = 3
    with pytest.raises(ParamsError, match=r"split.validaton_days: unknown key"):
        split_params(raw)
    raw = default_params()
    del raw["prepare"]["grid"]
    with pytest.raises(ParamsError, match=r"prepare.grid: missing \(a params.yaml from an older Shelfcast lacks"):
        prepare_params(raw)
    with pytest.raises(ParamsError, match=r"^split: missing"):
        split_params({})


def test_the_sections_shelfcast_reads_are_the_shipped_params_sections():
    assert set(SECTIONS) == set(load_yaml(REPO / "params.yaml"))


@pytest.mark.parametrize("section", ["trian", "Train", "evalute", "data-", "drfit"])
def test_a_section_named_like_one_shelfcast_reads_is_refused(tmp_path, section):
    """A second block under a misspelt name (`trian:` beside `train:`, meant as an override) was skipped without a
    word: the run used the values it was meant to change."""
    text = (REPO / "params.yaml").read_text(encoding="utf-8") + f"\n{section}:\n  max_steps: 10\n"
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match=rf"section '{section}': not one Shelfcast reads; is '[a-z]+' meant\?"):
        load_yaml(tmp_path / "params.yaml")


def test_a_section_of_a_teams_own_stage_is_left_alone(tmp_path):
    text = (REPO / "params.yaml").read_text(encoding="utf-8") + "\nmy_report:\n  top_n: 10\nxgb:\n  depth: 6\n"
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    assert load_yaml(tmp_path / "params.yaml")["my_report"] == {"top_n": 10}


def test_unreadable_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_yaml(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_a_params_file_not_saved_as_utf8_is_an_error_naming_its_line(tmp_path):
    """A comment typed in a Latin-1 editor ("# A\xf1o fiscal") made every stage (and monitoring.drift) die with a
    UnicodeDecodeError traceback."""
    from monitoring.drift_params import DriftParamsError, load_drift_params

    path = tmp_path / "params.yaml"
    path.write_bytes((REPO / "params.yaml").read_bytes() + "# A\u00f1o fiscal\n".encode("latin-1"))
    line = len(path.read_bytes().splitlines())
    message = rf"params.yaml: line {line}: not UTF-8 text \(byte 0xf1\); save the file as UTF-8"
    with pytest.raises(ParamsError, match=message):
        load_yaml(path)
    with pytest.raises(DriftParamsError, match=message):
        load_drift_params(path)


def test_numbers_in_exponent_notation_are_read_as_dvc_reads_them(tmp_path):
    """`dvc exp run -S train.learning_rate=0.0000001` writes 1e-07, which YAML 1.1 (PyYAML) read as text: refused as
    "expected a number"; and 2e-3 written for 0.002 left promote refusing ("params changed") while DVC saw no change."""
    from pipeline.model_params import train_params

    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    default = load_yaml(REPO / "params.yaml")
    rate = default["train"]["learning_rate"]
    for written, value in ((f"{rate:.0e}".replace("e-0", "e-"), rate), ("1e-07", 1e-07), ("1E-5", 1e-05)):
        changed = re.sub(r"(?m)^(  learning_rate:) *[^ #\n]+", rf"\g<1> {written}", text)
        assert changed != text
        (tmp_path / "params.yaml").write_text(changed, encoding="utf-8")
        raw = load_yaml(tmp_path / "params.yaml")
        assert train_params(raw).learning_rate == value, written
    (tmp_path / "params.yaml").write_text(re.sub(r"(?m)^(  learning_rate:) *[^ #\n]+", rf"\g<1> {rate:.0e}", text),
                                          encoding="utf-8")
    assert load_yaml(tmp_path / "params.yaml") == default  # so the same params_version: what promote compares
    # YAML 1.2's core schema throughout, as DVC reads it (`dvc params diff` and MLflow must show the value trained)
    import yaml

    from pipeline.params import ParamsLoader

    for written, value in (("010", 10), ("yes", "yes"), ("on", "on"), ("1:20", "1:20"), ("0o10", 8), ("0x10", 16),
                           (".5e1", ".5e1"), ("1_000", 1000), ("+1e3", 1000.0), ("true", True), ("~", None)):
        assert yaml.load(f"x: {written}", Loader=ParamsLoader) == {"x": value}, written


@pytest.mark.parametrize("path", ["evaluate.max_nwrmsle", "evaluate.slice.max_nwrmsle", "evaluate.min_improvement",
                                  "evaluate.confidence", "train.learning_rate", "data.download.timeout_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_number_is_refused_at_load_naming_its_key(path, value):
    """YAML's .nan passed every `<` check: a NaN bound made the threshold test pass any model, and promote shipped
    it; a NaN learning rate trained for minutes before failing on its predictions."""
    from pipeline.model_params import evaluate_params, train_params

    raw = default_params()
    *parents, key = path.split(".")
    section = raw
    for name in parents:
        section = section[name]
    section[key] = value
    loader = {"evaluate": evaluate_params, "train": train_params, "data": data_params}[parents[0]]
    with pytest.raises(ParamsError, match=rf"^{re.escape(path)}: expected a finite number, got {value!r}"):
        loader(raw)


@pytest.mark.parametrize("value", [1, 5, 1.0, 12.5])
def test_a_required_improvement_no_model_can_reach_is_refused_at_load(value):
    """`evaluate.min_improvement: 5` (meant: 5 %) was accepted: the improvement 1 - NWRMSLE/baseline's is below 1,
    so every candidate trained for minutes and then failed the gate ("does not clear the required 500.00%")."""
    from pipeline.model_params import evaluate_params

    raw = default_params()
    raw["evaluate"]["min_improvement"] = value
    with pytest.raises(ParamsError, match=r"^evaluate\.min_improvement: must be below 1, a share \(0\.05: 5 % better"):
        evaluate_params(raw)
    raw["evaluate"]["min_improvement"] = 0.99
    assert evaluate_params(raw).min_improvement == 0.99


def test_the_gate_fails_a_score_that_is_not_a_number():
    """Bounds are checked as `not score <= bound`, so a NaN score (or bound) can never pass."""
    from pipeline.evaluate import threshold_failures
    from pipeline.model_params import evaluate_params

    params = evaluate_params(default_params())
    interval = type("Interval", (), {"low": 0.5, "high": 0.6, "estimate": 0.55, "confidence": 0.95, "series": 90})()
    pooled = {"candidate_nwrmsle": float("nan"), "baseline_nwrmsle": 0.6}
    slices = {"candidate": {"by_family": {"DAIRY": float("nan")}, "by_store": {}},
              "rows": {"by_family": {"DAIRY": 10_000}, "by_store": {}}}
    failures = threshold_failures(pooled, interval, slices, replace(params, max_nwrmsle=1.0))
    assert [f.split(":")[0] for f in failures] == ["evaluate.max_nwrmsle", "evaluate.slice.max_nwrmsle"]


def test_too_few_held_examples_to_stop_training_on_is_refused():
    """features.in_memory_examples: 1 fitted early stopping and the expected-units factor on 16 rows, silently."""
    from pipeline.model_params import feature_params

    raw = default_params()
    raw["features"]["in_memory_examples"] = 999
    with pytest.raises(ParamsError, match=r"^features.in_memory_examples: must be >= 1000, got 999"):
        feature_params(raw)


@pytest.mark.parametrize("windows, message", [
    ({"mean_windows": [3, 7, 7]}, "features.mean_windows: 7 is listed twice"),
    ({"promo_windows": [14, 14]}, "features.promo_windows: 14 is listed twice"),
    ({"mean_windows": [], "dow_weeks": [], "promo_windows": []}, "features: mean_windows, dow_weeks and promo_windows "
                                                                  "are all empty"),
])
def test_windows_that_give_no_feature_or_one_twice_are_refused(windows, message):
    """A repeated window trained the same feature column twice; no window at all crashed on max() of nothing."""
    from pipeline.model_params import feature_params

    raw = default_params()
    raw["features"].update(windows)
    with pytest.raises(ParamsError, match=rf"^{re.escape(message)}"):
        feature_params(raw)


def test_yaml_merge_keys_are_merged_as_dvc_merges_them(tmp_path):
    """`<<: *anchor` (YAML's merge key, which DVC's reader merges) was read as a key named '<<': train refused
    "train.embedding_dims.<<: unknown key" for a params.yaml that `dvc params diff` and `dvc repro` read fine."""
    from pipeline.model_params import train_params

    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    default = load_yaml(REPO / "params.yaml")
    dims = default["train"]["embedding_dims"]
    merged = re.sub(r"(?m)^  embedding_dims: .*$",
                    "  embedding_dims:\n    <<: *shop_dims\n    item_nbr: 24", text)
    merged = "shop_dims: &shop_dims " + json.dumps(dims) + "\n" + merged  # a top-level key no stage reads
    (tmp_path / "params.yaml").write_text(merged, encoding="utf-8")
    raw = load_yaml(tmp_path / "params.yaml")
    assert raw["train"]["embedding_dims"] == {**dims, "item_nbr": 24}
    assert train_params(raw).embedding_dims == {**dims, "item_nbr": 24}
    assert "<<" not in raw["train"]["embedding_dims"]


@pytest.mark.parametrize("section, line", [("train", "  learning_rate: 0.01"), ("evaluate", "  min_improvement: -1"),
                                           ("drift", "  psi_alert: 9")])
def test_a_key_written_twice_is_refused_naming_it_and_its_line(tmp_path, section, line):
    """A key written twice in a section (a pasted line) is refused by DVC ("YAML file structure is corrupted"), but
    a stage run alone (python -m pipeline.train, monitoring.drift, the sweep) silently read the last value: a model
    trained, gated or alarmed on a value the user may not have meant."""
    from monitoring.drift_params import DriftParamsError, load_drift_params

    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    edited = re.sub(rf"(?m)^{section}:.*$", lambda m: f"{m.group(0)}\n{line}", text, count=1)
    assert edited != text
    path = tmp_path / "params.yaml"
    path.write_text(edited, encoding="utf-8")
    number = edited.splitlines().index(line) + 1
    key = line.split(":")[0].strip()
    with pytest.raises(ParamsError) as error:
        load_yaml(path)
    message = str(error.value)
    lines = re.search(rf"{section}\.{key}: written twice \(lines (\d+) and (\d+)\)", message)
    assert lines is not None and number in map(int, lines.groups()), message
    with pytest.raises(DriftParamsError, match=rf"{section}\.{key}.*twice"):
        load_drift_params(path)


def test_a_merged_key_may_be_overridden_without_counting_as_twice(tmp_path):
    (tmp_path / "params.yaml").write_text("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n", encoding="utf-8")
    assert load_yaml(tmp_path / "params.yaml")["x"] == {"a": 3, "b": 2}


def test_a_refused_value_of_a_params_file_names_the_file_as_well_as_the_param(tmp_path, capsys):
    """A stage's one line said `split: error: split.validation_days: must be >= 1, got 0`: the param, not the file,
    though --root, a sweep's candidate folder or a second project make "which params.yaml?" a real question. The
    file is named once, however the readers nest (validation_within_horizon reads split's and features' sections);
    a mapping not read from a file (a test's, a sweep candidate's) still names the param alone."""
    from pipeline import split
    from pipeline.model_params import validation_within_horizon

    raw = default_params()
    raw["split"]["validation_days"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert split.main(["--root", str(tmp_path), "--quiet"]) == 1
    assert capsys.readouterr().err == f"split: error: {path}: split.validation_days: must be >= 1, got 0\n"
    with pytest.raises(ParamsError) as nested:
        validation_within_horizon(load_yaml(path))
    assert str(nested.value) == f"{path}: split.validation_days: must be >= 1, got 0"
    with pytest.raises(ParamsError) as plain:
        split_params(raw)
    assert str(plain.value) == "split.validation_days: must be >= 1, got 0"
    assert yaml.safe_load(yaml.safe_dump(load_yaml(path))) == raw  # written back as the mapping it is


@pytest.mark.parametrize("text, message", [
    ("split:\n#  validation_days: 16\n",
     "split: written with nothing under it (its keys deleted or commented out?); it needs validation_days"),
    ("data: {}\n", "split: missing (a section of params.yaml)"),
])
def test_a_section_written_empty_is_told_apart_from_a_missing_one(tmp_path, text, message):
    """`split:` with its lines commented out is read as null by YAML: it was refused as "split: missing", though the
    section is there for anyone to see."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as error:
        split_params(load_yaml(path))
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("text, said", [
    ("train:\n  model: mlp\n\tseed: 42\n",
     "line 3, column 1: found character '\\t' that cannot start any token (while scanning for the next token): "
     "'\\tseed: 42'"),
    ("train:\n  hidden_units: [128, 64\n  seed: 42\n",
     "line 3, column 7: expected ',' or ']', but got ':' (while parsing a flow sequence started at line 2, column "
     "17): '  seed: 42'"),
    ("train:\n  model: *mlp\n", "line 2, column 10: found undefined alias 'mlp': '  model: *mlp'"),
])
def test_a_file_that_is_not_yaml_is_one_line_naming_the_file_line_and_column(tmp_path, text, said):
    """PyYAML's own message took four to eight lines, with a caret drawn under a copy of the line, and named the file
    "<unicode string>": a stage's refusal was no longer one line."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as error:
        load_yaml(path)
    assert str(error.value) == f"{path}: not valid YAML: {said}"
