"""How an answer the app serves names a file of its host: never by the host's absolute path.

The pages, /api/v1/monitoring and /readyz reach whoever can reach the app (the compose proxy publishes them). An
absolute path tells such a reader the host's layout (the checkout's folder, a user's home, where the release
store and the logs are); an operator reads those in the server's log, which names them in full. So a served
answer names a file:

- under the app's root (the project folder, where `make serve` and the image run, or the working directory) by
  its path relative to that root: ``logs/predictions.jsonl``, ``models/production``;
- under a folder the app was configured with (the model folder and its release store, the prediction log's
  folder, the drift folder) but outside the root, by that folder's name and the rest: ``models/releases/1``;
- otherwise by its name alone.

A path set relative (the defaults) is shown as it was set. ``public_text`` does the same to the paths inside a
message (a refused bundle's reason, an unreadable log's error) by replacing each of those folders where it
stands in the text; a path under none of them is left as it is, so every folder a message can name must be
given.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterable

PROJECT = Path(__file__).resolve().parents[1]  # the folder holding app/, monitoring/, pipeline/ ...


def _forms(path: Path) -> set[str]:
    """The path as given and as the file system resolves it (symbolic links, /tmp -> /private/tmp), absolute."""
    forms = {os.path.normpath(os.path.abspath(path))}
    try:
        forms.add(str(path.resolve()))
    except (OSError, RuntimeError):  # a loop of links: the given form is all there is
        pass
    return {form for form in forms if form != os.sep}


class PublicPaths:
    """The names a served answer gives the files of one app: ``folders`` are the folders it was configured with
    (files or folders; relative ones are taken from the working directory); ``roots`` the app's roots."""

    def __init__(self, folders: Iterable[Path | str] = (), roots: Iterable[Path | str] | None = None):
        roots = [PROJECT, Path.cwd()] if roots is None else [Path(root) for root in roots]
        # (absolute form, what it is shown as): the roots first (their files are named relative to them, a root
        # itself is "."), then the folders; each the outermost first, so a file of the release store is named
        # from the store's name (models/production/weights.npz), whichever of its folders the app was given
        root_forms = sorted({form for root in roots for form in _forms(root)}, key=len)
        folder_forms = sorted({form for folder in folders for form in _forms(Path(folder))} - set(root_forms), key=len)
        self._prefixes = [(form, "") for form in root_forms] + \
                         [(form, PurePosixPath(form).name) for form in folder_forms]
        self._pattern = re.compile("|".join(
            # a folder where it stands in a text: not a longer name's start (/srv/app-old for /srv/app), not inside
            # another path (/x/srv/app), nor a URL's path; a sentence's full stop may follow it
            rf"(?<![\w.:/-]){re.escape(form)}(?=/|$|[^\w.-]|\.(?:\s|$))" for form, _ in self._prefixes) or r"(?!)")

    def path(self, path: Path | str) -> str:
        """How an answer names ``path``."""
        text = os.fspath(path)
        if not os.path.isabs(text):
            return PurePosixPath(Path(text)).as_posix()
        absolute = os.path.normpath(text)
        for form, shown in self._prefixes:
            if absolute == form or absolute.startswith(form.rstrip(os.sep) + os.sep):
                rest = absolute[len(form):].lstrip(os.sep)
                return "/".join(part for part in (shown, rest) if part) or "."
        return PurePosixPath(absolute).name or "."

    def text(self, text: str) -> str:
        """``text`` with each configured folder and root where it stands replaced by how an answer names it."""
        shown = dict(self._prefixes)
        out, last = [], 0
        for match in self._pattern.finditer(text):
            name, end = shown[match.group(0)], match.end()
            if not name:  # a root: its files are named relative to it ("/srv/shelfcast/logs/x": "logs/x")
                if text[end:end + 1] == "/":
                    end += 1
                else:
                    name = "."
            out += [text[last:match.start()], name]
            last = end
        out.append(text[last:])
        return "".join(out)


def public_paths(*folders: Path | str) -> PublicPaths:
    """``PublicPaths(folders)`` with the default roots, built once per set of folders and working directory: a
    build resolves each folder and root on the file system (~0.2 ms), and /readyz is probed every few seconds."""
    return _built(tuple(os.fspath(folder) for folder in folders), os.getcwd())


@functools.lru_cache(maxsize=64)
def _built(folders: tuple[str, ...], cwd: str) -> PublicPaths:
    return PublicPaths(folders, roots=[PROJECT, cwd])
