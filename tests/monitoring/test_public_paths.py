"""monitoring/public_paths.py: how a served answer names a file of the host, never by its absolute path."""

from __future__ import annotations

from pathlib import Path

from monitoring.public_paths import PROJECT, PublicPaths


def test_a_file_is_named_from_the_root_or_its_outermost_configured_folder_else_by_its_name():
    paths = PublicPaths(["/var/lib/shop/models/production", "/var/lib/shop/models", "/data/logs/p.jsonl"],
                        roots=["/srv/app"])
    assert paths.path("/srv/app/logs/predictions.jsonl") == "logs/predictions.jsonl"
    assert paths.path("/srv/app") == "."
    assert paths.path("/var/lib/shop/models/production/weights.npz") == "models/production/weights.npz"
    assert paths.path("/var/lib/shop/models/releases/3") == "models/releases/3"
    assert paths.path("/data/logs/p.jsonl") == "p.jsonl"
    assert paths.path("/etc/shelfcast/secret.env") == "secret.env"  # under nothing known: its name
    assert paths.path("/srv/app-old/x.json") == "x.json"  # /srv/app is not a prefix of /srv/app-old
    assert paths.path("logs/predictions.jsonl") == "logs/predictions.jsonl"  # set relative: shown as set


def test_a_message_has_each_known_folder_replaced_where_it_stands():
    paths = PublicPaths(["/var/lib/shop/models/production", "/var/lib/shop/models"], roots=["/srv/app"])
    assert paths.text("refusing /var/lib/shop/models/production/weights.npz: checksum mismatch") == \
        "refusing models/production/weights.npz: checksum mismatch"
    assert paths.text("/srv/app/logs/drift/drift.json: not valid JSON; cwd /srv/app.") == \
        "logs/drift/drift.json: not valid JSON; cwd .."
    # another folder that starts alike, a path inside another, a URL's path: left as they are
    untouched = "/srv/app-old/x and /opt/srv/app/y and http://host/srv/app/z"
    assert paths.text(untouched) == untouched


def test_the_project_and_the_working_directory_are_the_default_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = PublicPaths()
    assert paths.path(PROJECT / "logs" / "predictions.jsonl") == "logs/predictions.jsonl"
    assert paths.path(tmp_path / "models" / "production") == "models/production"
    assert paths.text(f"from {Path.cwd()}/models/production") == "from models/production"


def test_the_built_names_are_kept_per_folders_and_working_directory(tmp_path, monkeypatch):
    from monitoring.public_paths import public_paths

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    assert public_paths("/elsewhere/logs").path(tmp_path / "a" / "x") == "a/x"
    assert public_paths("/elsewhere/logs") is public_paths("/elsewhere/logs")  # built once
    monkeypatch.chdir(tmp_path / "a")  # another working directory: another root
    assert public_paths("/elsewhere/logs").path(tmp_path / "a" / "x") == "x"
    assert public_paths("/elsewhere/logs").path("/elsewhere/logs/p.jsonl") == "logs/p.jsonl"
