"""The serving host's release store: the last N good model versions on disk, and the served variants.

Layout under the models directory (default ``models/``)::

    releases/<version>/   verified bundles of registry versions fetched to this host (newest N kept, and
                          the one production replaced last, named in releases/.rollback)
    production/           what the app answers with (a verified copy of one release)
    canary/  shadow/      candidates the app routes a share of traffic to / mirrors every request to
    release.json          {"canary_share": 0.1} — read by the app's variant router
    .serving-host         this store's id (SERVING_HOST_FILE), named in every prediction event the app logs

A release is marked good (``releases/<version>/.good``, a dotfile the bundle checksums
ignore) once it has served as production, and unmarked when production is rolled back from
it; the app falls back to the newest good release
when the production directory cannot be loaded, so a worker never starts or stays without a
model while a good one is on disk. Every install is atomic (pipeline/bundle.copy_bundle), of a bundle that passed
the app's own check that it can serve (pipeline/bundle_checks.py). Standard library + pipeline.bundle and
bundle_checks only: the app imports this module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from pipeline.atomic import discard, file_digest, open_regular_file, write_text_atomic
from pipeline.bundle import CHECKSUMS_FILE, BundleError, copy_bundle, verify_bundle
from pipeline.bundle_checks import load_servable

PRODUCTION, CANARY, SHADOW = "production", "canary", "shadow"
VARIANTS = (PRODUCTION, CANARY, SHADOW)
RELEASES = "releases"
RELEASE_FILE = "release.json"
GOOD_MARK = ".good"
ROLLBACK_FILE = ".rollback"  # in releases/: the version production replaced last (kept by prune)
KEEP_RELEASES = 5
# The serving host's id: drawn once by the release commands (draw_serving_host), read by the app, which names it in
# each prediction event (``serving_host``), so a decision reading indices several hosts write judges its own host's.
# Not secret (0644, every event shows it): it marks which host answered, written by the app, never by a client.
SERVING_HOST_FILE = ".serving-host"
SERVING_HOST_HEX = 16


def _version_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (-1, path.name)


def bundle_name(path: Path) -> str | None:
    """The registered model's name ``path``'s bundle.json carries (``name``); None when it cannot be read."""
    try:
        name = json.loads((path / "bundle.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError, RecursionError):  # a JSON array or scalar; nested too deep
        return None
    return name if isinstance(name, str) else None


def _another_models(path: Path, name: str | None) -> bool:
    """Whether release ``path`` is a version of a model other than ``name`` (promote.model_name renamed: the new
    name's versions count from 1 again, so its numbers clash with the former model's releases)."""
    carried = None if name is None else bundle_name(path)
    return carried is not None and carried != name


def _manifest_digest(path: Path) -> str | None:
    """The digest ``path``'s checksums.json claims (bundle.verify_bundle's result once every file checks); None
    without one."""
    try:
        return file_digest(path / CHECKSUMS_FILE)
    except OSError:
        return None


class ReleaseStore:
    """One host's models directory (see the module docstring for the layout)."""

    def __init__(self, models_dir: Path | str, keep: int = KEEP_RELEASES):
        if keep < 2:
            raise ValueError(f"keep: at least 2 releases (production and the one to roll back to), got {keep}")
        self.root = Path(models_dir)
        self.keep = keep
        self._servable: dict[str, str] = {}  # release -> the digest this process found servable (add_release)

    def variant_dir(self, variant: str) -> Path:
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
        return self.root / variant

    def release_dir(self, version: str | int) -> Path:
        return self.root / RELEASES / str(version)

    def releases(self) -> list[Path]:
        """Release directories, newest version first."""
        base = self.root / RELEASES
        if not base.is_dir():
            return []
        return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=_version_key, reverse=True)

    def has_release(self, version: str | int, digest: str | None = None) -> bool:
        try:
            return digest is None or verify_bundle(self.release_dir(version)) == digest
        except BundleError:
            return False

    def add_release(self, version: str | int, bundle_dir: Path, servable: bool = False, name: str | None = None) -> str:
        """Install a verified copy of ``bundle_dir`` as release ``version``; returns its digest. ``servable``: the
        caller has run ``load_servable`` on it (registry_fetch.download_version does), so installing it as a variant
        in this process does not load it again (a second full load and sample forecast, per release step). ``name``:
        the registered model's (prune's)."""
        digest = copy_bundle(bundle_dir, self.release_dir(version))
        if servable:
            self._servable[str(version)] = digest
        self.prune(name)
        return digest

    def install(self, variant: str, version: str | int, name: str | None = None) -> str:
        """Serve release ``version`` as ``variant`` (atomic swap the app's hot reload picks up). A variant that
        serves that very bundle already is left as it is: its install time is when the candidate went live (the
        traffic ``release decide`` judges starts there), and the workers keep the model they hold. Production's
        install records the release it replaces (``releases/.rollback``), which ``prune`` then keeps. ``name``: the
        registered model's; once production serves it, releases of another model (the name before a rename) that
        serve nothing are deleted, so none is taken for a version of this one (the app's fallback, the rollback
        record, ``release status``), and a rollback record made while production was another model's is removed:
        its number is the other model's, and would keep this model's release of that number as the rollback's."""
        source, target = self.release_dir(version), self.variant_dir(variant)
        leaving = self.claimed_version(PRODUCTION, name) if variant == PRODUCTION else None
        replacing_another_model = variant == PRODUCTION and _another_models(target, name)
        claimed = _manifest_digest(source)  # cheap: the whole check only when the two claim the same bundle
        if claimed is not None and claimed == _manifest_digest(target) and self.served_digest(variant) == claimed \
                and verify_bundle(source) == claimed:
            digest = claimed
        else:
            if claimed is None or self._servable.get(str(version)) != claimed:  # checked when added, else now
                load_servable(source)  # a release the app would refuse is never served (one an older fetch kept)
            digest = copy_bundle(source, target)
        if variant == PRODUCTION:
            (self.release_dir(version) / GOOD_MARK).touch()
            if leaving is not None and leaving != str(version):
                write_text_atomic(self.root / RELEASES / ROLLBACK_FILE, leaving + "\n")
            elif replacing_another_model:  # its record names the other model's number: no version of this one
                (self.root / RELEASES / ROLLBACK_FILE).unlink(missing_ok=True)
            if name is not None:
                self.prune(name)
        return digest

    def withdraw(self, version: str | int) -> None:
        """Release ``version`` is no longer good (production was rolled back from it): no fallback until it serves as
        production again (a second rollback, or a promote, returns to it)."""
        (self.release_dir(version) / GOOD_MARK).unlink(missing_ok=True)

    def installed_at(self, variant: str) -> float | None:
        """When ``variant``'s bundle was installed (epoch seconds; None: not installed): its directory's mtime,
        set by the last file the install copied in (a bundle is never changed in place afterwards)."""
        try:
            return self.variant_dir(variant).stat().st_mtime
        except OSError:
            return None

    def remove(self, variant: str) -> None:
        """Stop serving a candidate variant (production is never removed, only replaced)."""
        if variant == PRODUCTION:
            raise ValueError("production is replaced by another release, never removed")
        directory = self.variant_dir(variant)
        # renamed away first: a worker verifying it sees the whole bundle or nothing, never a half-deleted one
        # (which it would refuse, logging an error, as a release ended the candidate)
        # a symbolic link (a deploy tool's ``canary -> releases/4``) is renamed away and deleted alone, what it named
        # left as it was: rmtree refuses a link, and each removal left one (.canary.removed-<pid>) beside it
        leaving = directory.with_name(f".{directory.name}.removed-{os.getpid()}")
        discard(leaving)  # this process's earlier removal's, if its deletion failed
        try:
            os.replace(directory, leaving)
        except FileNotFoundError:
            return
        except OSError:
            leaving = directory
        discard(leaving)

    def good_releases(self) -> list[Path]:
        """Releases that have served as production and still verify, newest first."""
        good = []
        for path in self.releases():
            if (path / GOOD_MARK).exists():
                try:
                    verify_bundle(path)
                except BundleError:
                    continue
                good.append(path)
        return good

    def rollback_release(self) -> str | None:
        """The release production last replaced on this host (what ``make rollback`` returns to), if recorded."""
        try:
            return (self.root / RELEASES / ROLLBACK_FILE).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def claimed_version(self, variant: str, name: str | None = None) -> str | None:
        """The release whose manifest the variant's claims (no file hashed: a bundle is verified when loaded); with
        ``name``, only a release of that model."""
        claimed = _manifest_digest(self.variant_dir(variant))
        if claimed is None:
            return None
        return next((path.name for path in self.releases() if _manifest_digest(path) == claimed
                     and not _another_models(path, name)), None)

    def prune(self, name: str | None = None) -> list[Path]:
        """Keep the newest ``keep`` releases plus whatever production/canary/shadow currently serve and the release
        production replaced (the rollback's: newer candidates installed and ended since, a daily canary each, no
        longer push it out, so a rollback still installs it from disk). With ``name`` (the registered model's),
        another model's releases are kept only while a variant serves them."""
        serving = {self.served_digest(v) for v in VARIANTS} - {None}
        rollback = self.rollback_release()
        removed = []
        releases = self.releases()
        others = [path for path in releases if _another_models(path, name)]
        for path in others + [path for path in releases if path not in others][self.keep:]:
            if (path.name == rollback and path not in others) or self._digest(path) in serving:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def _digest(self, path: Path) -> str | None:
        try:
            return verify_bundle(path)
        except BundleError:
            return None

    def served_digest(self, variant: str) -> str | None:
        """The digest of the bundle this host serves as ``variant``; None if none (or not a valid bundle)."""
        return self._digest(self.variant_dir(variant))

    def served_version(self, variant: str, name: str | None = None) -> str | None:
        """The release (version) whose bundle this host serves as ``variant``; None if none on disk has its digest.
        With ``name``, a version of that model only: another's number (the name before a rename) is not its."""
        served = self.served_digest(variant)
        if served is None:
            return None
        return next((path.name for path in self.releases() if self._digest(path) == served
                     and not _another_models(path, name)), None)

    def canary_share(self) -> float:
        return read_canary_share(self.root)

    def set_canary_share(self, share: float) -> None:
        write_text_atomic(self.root / RELEASE_FILE, json.dumps({"canary_share": check_share(share)}) + "\n")


def serving_host(models_dir: Path | str) -> str | None:
    """The id ``draw_serving_host`` recorded in this release store, or None (none drawn yet, or unreadable).

    The app reads it in a request's thread every reload interval: so only a regular file, opened without waiting
    (a FIFO put there hung the request), and only as many bytes as an id and its line end take (a file of another
    kind's is no id, however long)."""
    try:
        with open_regular_file(Path(models_dir) / SERVING_HOST_FILE) as handle:
            head = handle.read(SERVING_HOST_HEX + 3)
    except OSError:
        return None
    text = head.decode("ascii", errors="replace").strip()
    return text if len(text) == SERVING_HOST_HEX and all(c in "0123456789abcdef" for c in text) else None


def draw_serving_host(models_dir: Path | str) -> str:
    """This store's id: the one recorded, or one drawn now and recorded (atomically) for good."""
    found = serving_host(models_dir)
    if found is None:
        found = secrets.token_hex(SERVING_HOST_HEX // 2)
        write_text_atomic(Path(models_dir) / SERVING_HOST_FILE, found + "\n")
    return found


def check_share(share: float) -> float:
    """``share`` when it is a canary share (a number 0..1), else ValueError naming the field."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"canary_share: expected a number 0..1, got {share!r}")
    return float(share)


def read_canary_share(models_dir: Path) -> float:
    """The configured canary share (0 when release.json is absent); ValueError naming the file when it is
    malformed or cannot be read, or is no file (a directory, a FIFO, a dangling link: before, read as absent, so
    `release status` showed a share of 0 with no error and a write failed naming a temporary file)."""
    path = Path(models_dir) / RELEASE_FILE
    if not path.is_file():
        if not os.path.lexists(path):
            return 0.0
        raise ValueError(f"{path}: is no regular file; expected one holding {{\"canary_share\": 0..1}}")
    try:
        share = json.loads(path.read_text(encoding="utf-8"))["canary_share"]
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected {{\"canary_share\": 0..1}} ({exc})") from None
    try:
        return check_share(share)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
