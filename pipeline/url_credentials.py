"""The user and password a URL may carry (``http://user:password@host``), and the token its query may carry
(``?sv=...&sig=...``), kept out of what is shown.

One definition for the URLs the project is given with credentials in them: MLflow's tracking URI
(pipeline/tracking.py: its messages, MLflow's own errors), the Elasticsearch URL drift, release and setup read
events from (pipeline/event_sources.py: its error lines, and the login it sends) and the data source
(pipeline/source.py, pipeline/download.py: their lines, the partial download's name and data/source.json, and
the login their requests send; pipeline/versions.py: what a run records). Standard library only: the serving app
imports event_sources.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
import urllib.request

# The user and password of any URL in a text: MLflow's own errors name the request's whole URL ("API request to
# http://user:password@host/api/2.0/... failed"), credentials included, when MLFLOW_TRACKING_URI carries them.
# Up to the last `@` before the host's end (`/`, `?`, `#`), as urlsplit reads it: a password may hold a raw `@` or
# quote (stopped at the first, "http://u:p@ss@host" was shown as "http://ss@host").
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@")


def without_credentials(text: str) -> str:
    """``text`` with the user and password taken out of every URL in it (``http://host/...``)."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def refused_url_shown(url: str) -> str:
    """A URL refused as malformed, as its error line may show it: ``without_credentials``, and nothing before its
    last ``@`` when one is left. Without ``scheme://`` (``user:password@host:9200``, ``http:/user:password@host``)
    neither urlsplit nor the pattern above finds the login, and the line showed the password."""
    shown = without_credentials(url)
    return shown.rpartition("@")[2] if "@" in shown else shown


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(``url`` without its user and password, the user, the password), the last two percent-decoded, None where
    the URL has none."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    unquoted = [None if part is None else urllib.parse.unquote(part) for part in (parts.username, parts.password)]
    return bare, unquoted[0], unquoted[1]


def basic_authorization(username: str | None, password: str | None) -> dict[str, str]:
    """The Authorization header of HTTP basic auth, or none without a username."""
    if username is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")}


def login_request(url: str, method: str | None = None, headers: dict[str, str] | None = None
                  ) -> urllib.request.Request:
    """A request for ``url`` that sends the login it carries (``https://user:password@host/...``) as HTTP basic
    auth, to that host only: urllib took ``user:password@host`` for the host's name (a failed DNS lookup, or an
    InvalidURL naming the password). Unredirected: a redirect elsewhere (a CDN, a bucket) does not get it; opened
    with ``open_login_request``, one within its origin does."""
    bare, username, password = split_credentials(url)
    request = urllib.request.Request(bare, method=method, headers=headers or {})
    for name, value in basic_authorization(username, password).items():
        request.add_unredirected_header(name, value)
    return request


def open_login_request(request: urllib.request.Request, timeout: float):
    """``urllib.request.urlopen(request, timeout=...)`` for a ``login_request``, whose login also follows a redirect
    within its origin (``same_origin``): dropped there too, an http:// URL the server moves to https://, or a
    folder moved on the same host, was refused with 401 and said to be a wrong password."""
    return _LOGIN_OPENER.open(request, timeout=timeout)


DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(url: str, redirected: str) -> bool:
    """Whether ``redirected`` is on the host and port ``url`` names, in its scheme or upgraded from http to https
    (both on their default ports), the redirects a login is sent on to, as the requests library does."""
    old, new = urllib.parse.urlsplit(url), urllib.parse.urlsplit(redirected)
    try:
        ports = (old.port or DEFAULT_PORTS.get(old.scheme.lower()), new.port or DEFAULT_PORTS.get(new.scheme.lower()))
    except ValueError:  # a port that is none
        return False
    schemes = (old.scheme.lower(), new.scheme.lower())
    if old.hostname is None or old.hostname != new.hostname:
        return False
    return (schemes[0] == schemes[1] and ports[0] == ports[1]) or (schemes == ("http", "https") and ports == (80, 443))



class _LoginOnWithinItsOrigin(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, a login (an unredirected Authorization header) carried on where ``same_origin``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        login = req.unredirected_hdrs.get("Authorization")
        if redirected is not None and login is not None and same_origin(req.full_url, redirected.full_url):
            redirected.add_unredirected_header("Authorization", login)
        return redirected


_LOGIN_OPENER = urllib.request.build_opener(_LoginOnWithinItsOrigin)


def shown_url(url: str) -> str:
    """An http(s) URL as a line, a progress bar or a record may show it: without its user and password, query and
    fragment. A folder's query is its token (an Azure SAS ``?sv=...&sig=...``, an S3 presigned
    ``?X-Amz-Signature=...``), and each file's URL carries it: printed, it reached terminals and CI logs. Anything
    else (a path, which may hold a ``?``) is returned as it is."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return url
    host = parts.netloc.rpartition("@")[2]  # an IPv6 host keeps its brackets
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


# Query keys that carry a credential, not a choice of data: a token minted anew (each CI run mints one) must not make
# the same file another source. Azure SAS (https://learn.microsoft.com/rest/api/storageservices/create-service-sas),
# the older S3 and GCS query signatures, and the generic names of a bearer token or key. Matched without case.
CREDENTIAL_QUERY_KEYS = frozenset({
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "si", "sdd", "ses", "skoid", "sktid", "skt", "ske",
    "sks", "skv", "saoid", "suoid", "scid",  # Azure SAS
    "awsaccesskeyid", "googleaccessid", "signature", "expires",  # S3 and GCS signatures before v4
    "token", "access_token", "api_key", "apikey", "key",
})
# S3 (SigV4: X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, ...) and GCS (X-Goog-Signature, ...).
CREDENTIAL_QUERY_PREFIXES = ("x-amz-", "x-goog-")


def is_credential_key(key: str) -> bool:
    """Whether a query key carries a credential (``CREDENTIAL_QUERY_KEYS``) rather than selecting data
    (``?version=2``, S3's ``versionId``)."""
    folded = key.strip().lower()
    return folded in CREDENTIAL_QUERY_KEYS or folded.startswith(CREDENTIAL_QUERY_PREFIXES)


def source_identity(url: str) -> str:
    """What identifies an http(s) source across runs: the URL without its user and password, credential query keys
    (``is_credential_key``; fields split by `&` or `;`) and fragment; the other query fields are kept as written,
    in their order, as they may select the data. A rotated SAS or presigned token thus leaves the partial download's
    name (pipeline/download.py) and data/source.json (pipeline/source.py) as they were, and the token is not written
    to disk. Anything else (a path, a file:// URL) is returned as it is."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return url
    query = ""
    for separator, field in _query_fields(parts.query):  # as written: re-encoding could change what the server reads
        if field and not is_credential_key(urllib.parse.unquote_plus(field.partition("=")[0])):
            query += (separator if query else "") + field
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


# What separates a query's fields: `&`, or `;` (the older form HTML 4 recommended, which servers still accept:
# ``?sp=r;sig=...``). Split on `&` alone, ``sp=r;sig=SECRET`` was one field, kept whole, the token with it.
_QUERY_SEPARATOR = re.compile(r"([&;])")


def _query_fields(query: str) -> list[tuple[str, str]]:
    """(the separator before it, "" for the first; the field as written) for each field of ``query``."""
    pieces = _QUERY_SEPARATOR.split(query)
    return [("" if index == 0 else pieces[index - 1], pieces[index]) for index in range(0, len(pieces), 2)]
