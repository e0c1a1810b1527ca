"""Which prediction events answered a release's own smoke test, and so are no user's request.

The smoke test's requests show that a candidate answers; a canary is judged on users' requests only. They were told
apart by an ``X-Request-ID`` starting SMOKE_REQUEST_PREFIX, which any client can send: its answers were then left out
of the canary's counts, so a client (or a load tester replaying logged ids) could starve a canary of judged requests
or hide its answers. Now a smoke id also carries a secret nonce drawn at the candidate's install and kept in the
host's models directory (NONCE_FILE), which only the release commands read; an id with another nonce is a user's.
A nonce counts while its candidate is installed; the next install of that variant draws a new one.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pipeline.atomic import write_text_atomic
from pipeline.release_store import CANARY, SHADOW, ReleaseStore

SMOKE_REQUEST_PREFIX = "release-smoke."
NONCE_FILE = ".smoke-nonce-{variant}"  # in the models directory, beside the candidate it was drawn for
NONCE_BYTES = 8  # 16 hex digits: the app keeps request ids of [A-Za-z0-9._:-]{1,64}


def _nonce_path(store: ReleaseStore, variant: str) -> Path:
    return store.root / NONCE_FILE.format(variant=variant)


def recorded_nonce(store: ReleaseStore, variant: str) -> str | None:
    """The nonce drawn at ``variant``'s install, or None (none recorded, or unreadable)."""
    try:
        text = _nonce_path(store, variant).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return text if len(text) == 2 * NONCE_BYTES and all(c in "0123456789abcdef" for c in text) else None


def draw_nonce(store: ReleaseStore, variant: str) -> str:
    """A new nonce for ``variant``'s new install, recorded (atomically) before any smoke request can carry it."""
    nonce = secrets.token_hex(NONCE_BYTES)
    write_text_atomic(_nonce_path(store, variant), nonce + "\n")
    return nonce


def installed_nonces(store: ReleaseStore) -> frozenset[str]:
    """The nonces of the candidates installed now: the smoke ids a decision leaves out (a shadow mirrors the smoke
    requests a canary's nonce marks, so both count for either)."""
    recorded = (recorded_nonce(store, v) for v in (CANARY, SHADOW) if store.installed_at(v) is not None)
    return frozenset(n for n in recorded if n is not None)


def smoke_nonce(store: ReleaseStore) -> str | None:
    """The nonce a smoke test's ids carry: the canary's, else the shadow's (the candidate judged next); None when no
    installed candidate has one."""
    for variant in (CANARY, SHADOW):
        nonce = recorded_nonce(store, variant) if store.installed_at(variant) is not None else None
        if nonce is not None:
            return nonce
    return None


def smoke_request_id(nonce: str, run: str, n: int) -> str:
    """The ``n``-th request id of smoke run ``run`` under ``nonce``."""
    return f"{SMOKE_REQUEST_PREFIX}{nonce}.{run}.{n}"


def is_smoke_request(event: dict, nonces: frozenset[str]) -> bool:
    """Whether ``event`` answered a smoke test of an installed candidate: its request id is SMOKE_REQUEST_PREFIX and
    one of ``nonces``. Any other id, ``release-smoke.`` ones included, is a user's."""
    request_id = event.get("request_id")
    if not (isinstance(request_id, str) and request_id.startswith(SMOKE_REQUEST_PREFIX)):
        return False
    return request_id[len(SMOKE_REQUEST_PREFIX):].split(".", 1)[0] in nonces
