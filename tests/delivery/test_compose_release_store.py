"""The compose stack serves the host's release store: mounted where the app's settings read it, readable by its user.

No Docker engine here, so the config is checked against the code that uses it: the mount's
target must be the parent of the production directory ``app.config.AppSettings`` reads from
the app service's environment (app/__init__.py builds the release store and the canary/shadow
router on that parent), and its host source must default to the store `python -m pipeline.release`
(make deploy, make rollback) writes. The container runs as another user (Dockerfile USER), so
what the release store installs on the host must be readable by anyone.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path, PurePosixPath

import yaml

from app.config import AppSettings, DEFAULT_MODEL_DIR, ENV_MODEL_DIR
from pipeline import registry_fetch, tracking
from pipeline.bundle import CHECKSUMS_FILE, DATA_FILES, GRAPH_FILES, verify_bundle
from pipeline.release_store import CANARY, PRODUCTION, SHADOW, ReleaseStore

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml

REPO = Path(__file__).resolve().parents[2]


def app_service() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]["app"]


def test_compose_mounts_the_host_release_store_where_the_app_reads_it():
    app = app_service()
    settings = AppSettings.from_environment({k: str(v) for k, v in app["environment"].items()})
    binds = [v for v in app["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert len(binds) == 1, binds
    mount = binds[0]
    in_container = PurePosixPath(mount["target"])
    # the whole store, not production/ alone (installs swap directories by rename), and read-only
    assert PurePosixPath(settings.model_dir).parent == in_container and mount["read_only"] is True
    store = ReleaseStore(Path(in_container))
    for variant in (PRODUCTION, CANARY, SHADOW):
        assert PurePosixPath(store.variant_dir(variant)).parent == in_container
    assert PurePosixPath(store.variant_dir(PRODUCTION)) == PurePosixPath(settings.model_dir)
    # the image says the same, so the mount cannot drift from where the image's app looks
    image_env = re.search(rf"{ENV_MODEL_DIR}=(\S+)", (REPO / "Dockerfile").read_text(encoding="utf-8")).group(1)
    assert PurePosixPath(image_env) == PurePosixPath(settings.model_dir)
    # host side: ${SHELFCAST_MODELS_HOST:-<default>} defaults to the store the app and pipeline.release use here
    source = re.fullmatch(r"\$\{(\w+):-(.+)\}", mount["source"])
    assert source and Path(source.group(2)) == DEFAULT_MODEL_DIR.parent, mount["source"]
    recipes = (REPO / "monitoring" / "delivery.mk").read_text(encoding="utf-8")
    for target in ("deploy", "rollback", "release-sync"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", recipes, re.M).group(1)
        assert "pipeline.release" in recipe and "--models" not in recipe, target  # the default store: the mounted one


def test_what_the_store_installs_is_readable_by_the_containers_user(released, registry_env, tmp_path):
    user = re.search(r"^USER (\S+)", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.M).group(1)
    assert user.split(":")[0] not in ("0", "root")  # another uid than the host's: "others" permissions apply
    root, _, _ = released  # a real serving bundle: the store installs none the app would refuse
    client = tracking.client(root)
    version = client.get_model_version_by_alias(MODEL_NAME, PRODUCTION)
    source = Path(client.download_artifacts(version.run_id, version.tags[registry_fetch.TAG_ARTIFACT],
                                            str(tmp_path)))
    for name in GRAPH_FILES + DATA_FILES + (CHECKSUMS_FILE,):
        (source / name).chmod(0o600)  # e.g. a private download
    digest = verify_bundle(source)
    store = ReleaseStore(tmp_path / "models")
    assert store.add_release("3", source) == digest and store.install(PRODUCTION, "3") == digest
    for directory in (store.release_dir("3"), store.variant_dir(PRODUCTION)):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o005 == 0o005, directory
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o004, path
    assert [p.name for p in store.good_releases()] == ["3"]  # what the app falls back to, when production is refused
