"""A POSTed form's fields read from its body strictly: a field that cannot be read is named, never dropped.

Werkzeug's form parser (``request.form``) is lenient where the form must not be: a urlencoded body that is not
UTF-8 (raw Latin-1 bytes) gives no fields at all, its UnicodeDecodeError swallowed; a %-escape that is not UTF-8
(``store=%FF``) stays in the value as its literal text; a multipart text part that is not in its charset has its
bytes replaced by U+FFFD; a field sent as a multipart file part (``curl -F store=@file``) is filed under
``request.files``, where the form never looks; and a multipart body that does not parse gives no fields. Each was
then shown, or forecast, as a field left empty or mistyped.

Here the body is read for the form's own fields (FORM_FIELDS, the first part of each name): a value that is not
text in its charset (UTF-8, or a multipart part's declared one), one sent as a file, or a field sent more than
once (which value was meant?) is an error keyed by its field, for the page to show beside it. A file is refused,
not read as the value: the form has no file input, so a file part is a client's mistake, a file is not held
to the form's field size limit (Werkzeug spools a large one to disk), and the form takes nothing it would
have to guess at. A multipart body that does not parse is InputError(400). Other fields are skipped unread, as
the form ignores them. Werkzeug's multipart decoder does the parsing, with the app's form limits (MAX_FORM_PARTS,
MAX_FORM_MEMORY_SIZE: over them it raises RequestEntityTooLarge, as ``request.form`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping
from urllib.parse import unquote_to_bytes

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from app.validation import FORM_FIELDS, MULTIPART, URLENCODED, FieldError, InputError, shorten

CHUNK = 64 * 1024  # fed to the multipart decoder at a time, as Werkzeug's parser does (its size limit is per feed)


@dataclass
class PostedForm:
    """The form's fields as sent, and why any of them could not be read (keyed by field, worded for the page)."""

    values: dict[str, str] = field(default_factory=dict)  # an unreadable value as best decoded (U+FFFD), to show
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Part:
    name: str
    charset: str
    data: bytes
    filename: str | None = None  # a file part's (its data is not kept)


def read_form(body: bytes, mimetype: str, options: Mapping[str, str], max_parts: int | None,
              max_field_bytes: int | None) -> PostedForm:
    """The form fields of a POST body of ``mimetype`` (``options``: its Content-Type parameters); any other type
    (check_form_type has refused those with a body) is an empty form."""
    if mimetype == URLENCODED:
        parts: Iterator[_Part] = urlencoded_parts(body, max_parts)
    elif mimetype == MULTIPART:
        parts = _multipart(body, options.get("boundary", ""), max_parts, max_field_bytes)
    else:
        parts = iter(())
    form = PostedForm()
    for part in parts:
        if part.name not in FORM_FIELDS:
            continue
        if part.name in form.values:
            form.errors[part.name] = repeated_field(part.name)
            continue
        if part.filename is not None:
            form.values[part.name] = ""
            form.errors[part.name] = (f"The field {part.name!r} was sent as a file ({shorten(part.filename)!r}), "
                                      "not as text, so it was not read; send it as a plain form field.")
            continue
        try:
            form.values[part.name] = part.data.decode(part.charset)
        except UnicodeDecodeError as exc:
            form.values[part.name] = part.data.decode(part.charset, "replace")
            form.errors[part.name] = (f"The field {part.name!r} is not {part.charset} text (byte "
                                      f"0x{part.data[exc.start]:02x} at position {exc.start} of its value), so it "
                                      "could not be read; send the form encoded as UTF-8.")
    return form


def repeated_field(name: str) -> str:
    """The form page's error for a field sent more than once (the page sends each once: a script's mistake)."""
    return f"The field {name!r} was sent more than once, so it was not read; send it once."


def urlencoded_parts(body: bytes, max_parts: int | None = None) -> Iterator[_Part]:
    """name=value pairs of a urlencoded body or query string as urllib's parse_qsl splits them (``&``, a pair
    without ``=`` has an empty value), each decoded only from its %-escapes and ``+``: the text is decoded by the
    caller, strictly. More than ``max_parts`` pairs is RequestEntityTooLarge before any is decoded, as a multipart
    body's parts are counted (Werkzeug counts only those): 350,000 empty fields within the 1 MiB body limit took
    0.44 s of the worker's one-at-a-time turn to read, five 1,000-instance forecasts' time."""
    pairs = [pair for pair in body.split(b"&") if pair]
    if max_parts is not None and len(pairs) > max_parts:
        raise RequestEntityTooLarge()
    for pair in pairs:
        name, _, value = pair.partition(b"=")
        yield _Part(_unquote(name).decode("utf-8", "replace"), "utf-8", _unquote(value))


def _unquote(text: bytes) -> bytes:
    return unquote_to_bytes(text.replace(b"+", b" "))


def _multipart(body: bytes, boundary: str, max_parts: int | None, max_field_bytes: int | None) -> Iterator[_Part]:
    """The parts of a multipart body, text parts with their data, file parts with their filename (Werkzeug's
    decoder, fed and limited as its form parser does); a body that does not parse is InputError(400) naming it."""
    if not boundary:
        raise InputError(400, "invalid_request", "the form's body cannot be read",
                         [FieldError("Content-Type", "multipart/form-data without a boundary")])
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_field_bytes, max_parts=max_parts)
    parts: list[_Part] = []
    current: Field | File | None = None
    data = bytearray()
    try:
        for start in [*range(0, len(body), CHUNK), None]:
            decoder.receive_data(None if start is None else body[start:start + CHUNK])
            event = decoder.next_event()
            while not isinstance(event, (Epilogue, NeedData)):
                if isinstance(event, (Field, File)):
                    current, data = event, bytearray()
                    if isinstance(event, File):
                        parts.append(_Part(event.name, "", b"", event.filename))
                elif isinstance(event, Data) and isinstance(current, Field):
                    data += event.data
                    if max_field_bytes is not None and len(data) > max_field_bytes:
                        raise RequestEntityTooLarge()
                    if not event.more_data:
                        parts.append(_Part(current.name, _charset(current), bytes(data)))
                event = decoder.next_event()
    except ValueError as exc:  # a UnicodeDecodeError too: a part's headers are read as UTF-8
        raise InputError(400, "invalid_request", "the form's body cannot be read",
                         [FieldError("body", f"not multipart/form-data as its Content-Type declares: "
                                             f"{shorten(str(exc), 120)}")]) from None
    return iter(parts)


def _charset(part: Field) -> str:
    """A text part's charset as Werkzeug's form parser takes it (declared ascii, us-ascii, utf-8 or iso-8859-1;
    otherwise utf-8)."""
    return MultiPartParser().get_part_charset(part.headers)
