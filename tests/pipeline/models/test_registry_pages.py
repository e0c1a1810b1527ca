"""Every page of the registry's model versions is read (tracking.model_versions), against a real sqlite store.

MlflowClient.search_model_versions returns one page (a PagedList whose ``token`` names the next). Before, prune, the
lookup of a bundle's version (promote, register_production) and point_alias's move records read the first page only:
with more versions than a page, a version beyond it was never pruned, its DVC entry not kept from `dvc gc`, and its
bundle registered a second time. The tests ask for pages of 2 (tracking.VERSIONS_PAGE, or the helper's page_size) so
that seven versions span four pages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import prune, tracking
from pipeline.params import load_yaml

NAME = "shelfcast-forecaster"  # promote.model_name of the repository's params.yaml
VERSIONS = 7


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A project (the repository's params.yaml) whose registry holds VERSIONS versions of one run, each its own
    bundle digest, registered as promote registers them; production the newest."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(Path(__file__).resolve().parents[3] / "params.yaml", tmp_path / "params.yaml")
    with tracking.TrainingRun(tmp_path, "train", {}) as run:
        pass
    for n in range(1, VERSIONS + 1):
        tracking.register_production(tmp_path, run.run_id, f"digest-{n}", {})
    return tmp_path


def test_model_versions_reads_every_page(registry):
    client = tracking.client(registry)
    first = client.search_model_versions(f"name='{NAME}'", max_results=2)
    assert len(first) == 2 and first.token  # one call is one page: the rest is behind the token
    found = tracking.model_versions(client, f"name='{NAME}'", page_size=2)
    assert sorted(int(v.version) for v in found) == list(range(1, VERSIONS + 1))


def test_the_products_lookups_read_past_the_first_page(registry, monkeypatch):
    """With the product's own page size made 2: each bundle's version is found wherever its page is (before, a
    bundle beyond the first page had no version, and promote registered it again), and prune plans for every
    version (before, those beyond the first page were neither kept nor deleted)."""
    monkeypatch.setattr(tracking, "VERSIONS_PAGE", 2)
    for n in range(1, VERSIONS + 1):
        assert str(tracking.version_of_bundle(registry, f"digest-{n}").version) == str(n)
    with tracking.TrainingRun(registry, "train", {}) as run:
        pass
    again, created = tracking.register_production(registry, run.run_id, "digest-1", {})  # the oldest bundle
    assert not created and str(again.version) == "1"
    raw = load_yaml(registry / "params.yaml")
    params = prune.PruneParams(**{**vars(prune.prune_params(raw)), "keep_versions": 0})
    planned = prune.plan(registry, params, NAME, [registry / "models"])
    assert sorted(planned.kept_versions) == ["1", str(VERSIONS)]  # production, and the one it replaced
    assert sorted(planned.versions, key=int) == [str(n) for n in range(2, VERSIONS)]
