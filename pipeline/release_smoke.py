"""Which prediction events answered a release's own smoke test, and so are no user's request.

The smoke test's requests show that a candidate answers; a canary is judged on users' requests only. They were told
apart by an ``X-Request-ID`` starting SMOKE_REQUEST_PREFIX, which any client can send: its answers were then left out
of the canary's counts, so a client (or a load tester replaying logged ids) could starve a canary of judged requests
or hide its answers. Now a smoke id is signed with a secret nonce drawn at the candidate's install and kept in the
host's models directory (NONCE_FILE), which only the release commands read; an id signed otherwise is a user's.
A nonce counts while its candidate is installed; the next install of that variant draws a new one. The id carries
an HMAC of its run and number, never the nonce: every id is logged (the event log, Kibana, the app's error lines),
and one that carried the nonce let whoever read it mint ids left out without end. A logged id replayed is left out
once per variant (SmokeAnswers), where its own request was: replays are users' requests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from pipeline.atomic import write_text_atomic
from pipeline.release_store import CANARY, SHADOW, ReleaseStore

SMOKE_REQUEST_PREFIX = "release-smoke."
NONCE_FILE = ".smoke-nonce-{variant}"  # in the models directory, beside the candidate it was drawn for
NONCE_MODE = 0o600  # the release commands' user's alone: whoever reads the nonce can sign smoke ids
NONCE_BYTES = 8  # 16 hex digits
SIGNATURE_HEX = 16  # an id's HMAC-SHA256 under the nonce, cut to 64 bits: the app keeps ids of [A-Za-z0-9._:-]{1,64}


def _nonce_path(store: ReleaseStore, variant: str) -> Path:
    return store.root / NONCE_FILE.format(variant=variant)


def recorded_nonce(store: ReleaseStore, variant: str) -> str | None:
    """The nonce drawn at ``variant``'s install, or None (none recorded, or unreadable)."""
    try:
        text = _nonce_path(store, variant).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return text if len(text) == 2 * NONCE_BYTES and all(c in "0123456789abcdef" for c in text) else None


def nonce_private(store: ReleaseStore, variant: str) -> bool:
    """Whether ``variant``'s nonce file is readable by its owner alone (NONCE_MODE's bits, none for group or
    others). One written 0644, before nonces were private, may have been read: an install redraws it."""
    try:
        return _nonce_path(store, variant).stat().st_mode & 0o077 == 0
    except OSError:
        return False


def draw_nonce(store: ReleaseStore, variant: str) -> str:
    """A new nonce for ``variant``'s new install, recorded (atomically, NONCE_MODE from its first byte) before any
    smoke request can carry it. Before, it was written 0644 like the store's other files: any user with a shell on
    the host could read it and sign ids left out of the canary's judgement."""
    nonce = secrets.token_hex(NONCE_BYTES)
    write_text_atomic(_nonce_path(store, variant), nonce + "\n", NONCE_MODE)
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
    """The ``n``-th request id of smoke run ``run`` (hex), signed under ``nonce``, which it does not show."""
    signed = f"{run}.{n}"
    return f"{SMOKE_REQUEST_PREFIX}{signed}.{_signature(nonce, signed)}"


def _signature(nonce: str, signed: str) -> str:
    return hmac.new(bytes.fromhex(nonce), signed.encode("ascii"), hashlib.sha256).hexdigest()[:SIGNATURE_HEX]


def is_smoke_request(event: dict, nonces: frozenset[str]) -> bool:
    """Whether ``event``'s request id is a smoke id signed under one of ``nonces`` (an installed candidate's). Any
    other id, ``release-smoke.`` ones included, is a user's."""
    request_id = event.get("request_id")
    if not (isinstance(request_id, str) and request_id.startswith(SMOKE_REQUEST_PREFIX) and request_id.isascii()):
        return False
    signed, _, signature = request_id[len(SMOKE_REQUEST_PREFIX):].rpartition(".")
    return bool(signed) and len(signature) == SIGNATURE_HEX and any(
        hmac.compare_digest(_signature(nonce, signed), signature) for nonce in nonces)


class SmokeAnswers:
    """Which events of one read answered the smoke test: a signed id's first event per variant (a smoke request is
    one row, answered once by each variant); the same id again is a replay of a logged id, a user's request."""

    def __init__(self, nonces: frozenset[str]):
        self.nonces, self._seen = nonces, set()

    def left_out(self, event: dict, variant: str) -> bool:
        if not is_smoke_request(event, self.nonces):
            return False
        key = (variant, event["request_id"])
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
