"""The registered model's name unless --name: one place (model_params.model_named) for release, fetch-model and the
registry functions, which each used to repeat ``name = name or registered_model(root)``."""

from __future__ import annotations

import inspect
import re

import pytest
import yaml

from pipeline import registry_fetch, release, tracking
from pipeline.model_params import model_named, registered_model
from pipeline.params import ParamsError


@model_named
def _named(root, store=None, name: str | None = None, after: str = "after"):
    return name, store, after


def _project(tmp_path, model_name="acme-forecaster"):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"promote": {"model_name": model_name}}), encoding="utf-8")
    return tmp_path


def test_a_name_not_given_is_params_yamls_promote_model_name(tmp_path):
    root = _project(tmp_path)
    assert _named(root) == ("acme-forecaster", None, "after")
    assert _named(root, "store", None, after="x") == ("acme-forecaster", "store", "x")
    assert _named(root, name="") == ("acme-forecaster", None, "after")  # an empty --name is no name, as before
    assert registered_model(root) == "acme-forecaster"


def test_a_given_name_is_kept_and_params_yaml_not_read(tmp_path):
    assert _named(tmp_path, None, "other") == ("other", None, "after")  # no params.yaml there: never read
    assert _named(root=tmp_path, name="other", after="x") == ("other", None, "x")
    assert registered_model(tmp_path, "other") == "other"


def test_no_name_and_no_params_yaml_is_refused_naming_the_file_and_the_way_out(tmp_path):
    with pytest.raises(ParamsError, match=r"params\.yaml: not found: .*--name"):
        _named(tmp_path / "elsewhere")


def test_a_function_without_a_name_parameter_is_refused_when_decorated():
    with pytest.raises(TypeError, match="has no parameter 'name'"):
        model_named(lambda root: root)


@pytest.mark.parametrize("function", [release.aliases, release.ensure_release, release.install,
                                      release.install_candidate, release.sync, release.host_state,
                                      release.served_candidate, release.set_candidate, release.end_candidate,
                                      release.promote, release.follow_production, release.rollback, release.deploy,
                                      registry_fetch.resolve, registry_fetch.fetch, tracking.production_version,
                                      tracking.version_of_bundle, tracking.register_production])
def test_the_commands_functions_take_their_name_default_from_the_one_place(function):
    """Each keeps its signature (``name`` optional) and reads no params.yaml of its own: the source holds no
    ``name or registered_model`` fallback; model_named supplies it."""
    assert function.__wrapped__ is not None and "name" in inspect.signature(function).parameters
    assert not re.search(r"\bregistered_model\(", inspect.getsource(function.__wrapped__))


@pytest.mark.parametrize("name, refused", [("team/forecaster", "'/'"), ("acme:forecaster", "':'"),
                                           ("a/b:c", "'/' or ':'")])
def test_a_model_name_the_registry_refuses_is_refused_before_train_names_the_bundle(tmp_path, name, refused):
    """MLflow's registry refuses '/' and ':' in a model's name; promote.model_name: team/forecaster passed train and
    evaluate (the bundle named so) and failed only at promote's registration, in MLflow's words naming no param."""
    with pytest.raises(ParamsError) as error:
        registered_model(_project(tmp_path, name))
    assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: promote.model_name: may not contain {refused} "
                                       "(the MLflow registry refuses them in a model's name), got "), error.value
