"""params.yaml as typed, validated settings: a bad value names its key.

Each stage reads only its own section (``data``, ``prepare``, ``split``), so the
DVC ``params:`` declared per stage in dvc.yaml are exactly what it depends on.
Unknown keys in these sections are errors: a typo must not silently fall back
to a default.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from pipeline.names import probably_meant

DEFAULT_PARAMS_PATH = Path("params.yaml")
# params.yaml's top-level sections Shelfcast reads (each read by its own module, this list says which exist): a
# section of another name is one of a team's own stages, left alone, unless its name looks like one of these.
SECTIONS = ("cluster", "data", "prepare", "split", "features", "train", "evaluate", "sweep", "promote", "prune",
            "drift")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # the one date form params.yaml takes: YYYY-MM-DD


class ParamsError(ValueError):
    """A missing, unknown or invalid value in params.yaml."""


class ParamsFile(dict):
    """The top-level mapping of a params file (what ``load_yaml`` returns), remembering the file (``path``): a refusal
    of one of its values then names the file as well as the param (``names_file``). A plain dict (a test's, a sweep
    candidate's) has no file, and its refusals name the param alone."""

    def __init__(self, values: Mapping[str, Any], path: Path):
        super().__init__(values)
        self.path = path


# yaml.safe_dump writes one as the mapping it is (PyYAML's safe representers match a type exactly: a dict subclass
# was a RepresenterError)
yaml.SafeDumper.add_representer(ParamsFile, yaml.SafeDumper.represent_dict)


Reader = TypeVar("Reader", bound=Callable[..., Any])


def names_file(reader: Reader) -> Reader:
    """``reader`` (a section's reader, given the loaded params first) whose ParamsError names the params file the
    values came from, ``params.yaml: train.batch_size: must be >= 1, got 0``: the one line a stage prints said the
    param but not which file, though ``--root``, a sweep's candidate folder and a second project make it a question.
    Said once, by the outermost reader, however readers nest."""
    @functools.wraps(reader)
    def read(raw, *args, **kwargs):
        try:
            return reader(raw, *args, **kwargs)
        except ParamsError as exc:
            path = getattr(raw, "path", None)
            if path is None or getattr(exc, "file", None) is not None:
                raise
            located = ParamsError(f"{path}: {exc}")
            located.file = path
            raise located from None

    return read  # type: ignore[return-value]


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema, as DVC (ruamel) reads params.yaml, not YAML 1.1's: ``1e-07``
    and ``2e-3`` (what ``dvc exp run -S`` writes) are floats, ``010`` is ten, ``yes``/``on`` and ``1:20`` are text."""

    yaml_implicit_resolvers: dict = {}

    def construct_document(self, node):
        _refuse_duplicate_keys(node)
        return super().construct_document(node)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of params.yaml that names one key twice."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_duplicate_keys(node: yaml.Node, path: str = "", seen: set[int] | None = None) -> None:
    """DuplicateKeyError for a key written twice in one mapping, naming it dotted and both lines. PyYAML keeps the last
    silently; DVC (ruamel) refuses the whole file, so a stage run alone would have read a value DVC never tracked.
    Keys a merge (``<<: *anchor``) brings in may be overridden: that is what a merge is for."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: the anchored node was checked where it was written
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                _refuse_duplicate_keys(value_node, path, seen)
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            dotted = f"{path}.{key}" if path else key
            if key in lines:
                raise DuplicateKeyError(f"{dotted}: written twice (lines {lines[key]} and {line}); keep one (DVC "
                                        "refuses such a file, and only the last would be read here)")
            lines[key] = line
            _refuse_duplicate_keys(value_node, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{index}]", seen)


def _core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    if digits[:2] in ("0o", "0x", "0b"):
        return sign * int(digits[2:], {"o": 8, "x": 16, "b": 2}[digits[1]])
    return sign * int(digits)  # a leading zero is decimal in YAML 1.2


for _tag, _pattern, _first in (
        ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
        ("int", r"[-+]?0b[0-1_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+", "-+0123456789"),
        ("float", r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                  r"|[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+.0123456789"),
        ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
        # `<<: *anchor` merges the anchored mapping, as DVC's reader does (not a key named '<<')
        ("merge", r"<<", "<")):
    ParamsLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(rf"^(?:{_pattern})$"), list(_first))
ParamsLoader.add_constructor("tag:yaml.org,2002:int", _core_int)


def params_text(path: Path) -> str:
    """The text of a params file, which DVC reads as UTF-8: one saved in another encoding (a Windows editor's
    Latin-1 'Año' in a comment) is an error naming the line, not a UnicodeDecodeError traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ParamsError(f"{path}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as "
                          "UTF-8") from None


def yaml_error_line(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's error as one line: where (line, column), what, while doing what, and the line as written. PyYAML's
    own text took four to eight lines, drew a caret under a copy of the line and named the file "<unicode string>"."""
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return " ".join(str(exc).split())
    said = exc.problem or "not YAML"
    if exc.context:
        context_mark = exc.context_mark
        started = "" if context_mark is None or context_mark.line == mark.line else \
            f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
        said += f" ({exc.context}{started})"
    lines = text.splitlines()
    written = f": {lines[mark.line]!r}" if mark.line < len(lines) else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {said}{written}"


def load_yaml(path: Path | str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    path = Path(path)
    try:
        text = params_text(path)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found in {path.absolute().parent} (the stages read the project's "
                          "params.yaml: run them in the project's root folder, or pass --root PROJECT)") from None
    try:
        loaded = yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {yaml_error_line(exc, text)}") from None
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    for section in loaded:
        if section not in SECTIONS and (known := probably_meant(str(section), list(SECTIONS))):
            raise ParamsError(f"{path}: section '{section}': not one Shelfcast reads; is '{known}' meant? (its "
                              f"values would be ignored: rename it '{known}', or a section of your own stage to a "
                              "name less like it)")
    return ParamsFile(loaded, path)


class _Section:
    """Reads one mapping, remembering the dotted key for error messages."""

    def __init__(self, values: Any, key: str, known: tuple[str, ...], written: bool = True):
        if values is None and not written:
            raise ParamsError(f"{key}: missing (a section of params.yaml)")
        if values is None:  # `train:` with every line under it deleted or commented out: YAML reads it as null
            raise ParamsError(f"{key}: written with nothing under it (its keys deleted or commented out?); it needs "
                              f"{', '.join(known)}")
        if not isinstance(values, Mapping):
            raise ParamsError(f"{key}: expected a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ParamsError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(known)})")
        self.values, self.key = values, key

    @classmethod
    def of(cls, raw: Mapping[str, Any], name: str, known: tuple[str, ...]) -> "_Section":
        """The top-level section ``name`` of the loaded params ``raw``: absent and written empty are told apart."""
        return cls(raw.get(name), name, known, written=name in raw)

    def _get(self, name: str) -> Any:
        if name not in self.values:
            raise ParamsError(f"{self.key}.{name}: missing (a params.yaml from an older Shelfcast lacks the params "
                              "added since: copy them, with their comments, from this Shelfcast's params.yaml)")
        return self.values[name]

    def sub(self, name: str, known: tuple[str, ...]) -> "_Section":
        return _Section(self._get(name), f"{self.key}.{name}", known)

    def integer(self, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            # 1e4 and 1024.0 are read as numbers with a fraction (YAML 1.2, as DVC reads them): say how to write it
            whole = isinstance(value, float) and value.is_integer() and abs(value) < 1e18
            hint = f" (a whole number is written without a point or exponent: {int(value)})" if whole else ""
            raise ParamsError(f"{self.key}.{name}: expected an integer, got {value!r}{hint}")
        if minimum is not None and value < minimum:
            raise ParamsError(f"{self.key}.{name}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ParamsError(f"{self.key}.{name}: must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{self.key}.{name}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan passes every `<` check: a NaN bound would pass every model
            raise ParamsError(f"{self.key}.{name}: expected a finite number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ParamsError(f"{self.key}.{name}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ParamsError(f"{self.key}.{name}: must be <= {maximum}, got {value}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self._get(name)
        if value not in choices:
            raise ParamsError(f"{self.key}.{name}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value.strip():
            raise ParamsError(f"{self.key}.{name}: expected a non-empty string, got {value!r}")
        return value.strip()

    def date(self, name: str) -> dt.date:
        """A date written YYYY-MM-DD (YAML reads it as a date; quoted, it is a string of that form). Only that form:
        Python 3.11's date.fromisoformat also took 20160101 (an integer here) and ISO week dates (2016-W01-1)."""
        value = self._get(name)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        try:
            if not isinstance(value, str) or not _ISO_DATE.fullmatch(value.strip()):
                raise ValueError(value)
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ParamsError(f"{self.key}.{name}: expected a date YYYY-MM-DD, got {value!r}") from None

    def hex_digests(self, name: str) -> dict[str, str]:
        value = self._get(name) or {}
        if not isinstance(value, Mapping):
            raise ParamsError(f"{self.key}.{name}: expected a mapping of file name -> sha256")
        digests = {}
        for file_name, digest in value.items():
            text = str(digest).lower()
            if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
                raise ParamsError(f"{self.key}.{name}.{file_name}: not a sha256 hex digest: {digest!r}")
            digests[str(file_name)] = text
        return digests


# Stores the generator makes: Favorita's 54, then further stores in the same cities (pipeline/synthetic.py);
# the download stage holds a month of [days, stores, items] draws: ~5 MB a store at 4,100 items.
MAX_SYNTHETIC_STORES = 1000
# A socket's timeout: a day is more than any server is worth waiting for (1e12 s overflowed the socket's time_t)
MAX_TIMEOUT_S = 86_400


@dataclass(frozen=True)
class SyntheticParams:
    seed: int
    stores: int
    items: int
    start_date: dt.date
    end_date: dt.date
    test_days: int
    compression: str  # "gzip" | "none"


@dataclass(frozen=True)
class DownloadParams:
    retries: int
    timeout_s: float


@dataclass(frozen=True)
class DataParams:
    source: str
    sha256: dict[str, str]
    download: DownloadParams
    synthetic: SyntheticParams


@dataclass(frozen=True)
class PrepareParams:
    returns: str  # "zero" | "keep"
    grid: str  # "from_first_sale" | "full"
    closed_after_days: int  # a store with no row on train.csv's last this many sales days has closed


@dataclass(frozen=True)
class SplitParams:
    validation_days: int


@names_file
def data_params(raw: Mapping[str, Any]) -> DataParams:
    section = _Section.of(raw, "data", ("source", "sha256", "download", "synthetic"))
    dl = section.sub("download", ("retries", "timeout_s"))
    syn = section.sub("synthetic", ("seed", "stores", "items", "start_date", "end_date", "test_days", "compression"))
    synthetic = SyntheticParams(
        seed=syn.integer("seed", 0, 2**63 - 1),
        stores=syn.integer("stores", 1, MAX_SYNTHETIC_STORES),
        items=syn.integer("items", 33, 100_000),
        start_date=syn.date("start_date"),
        end_date=syn.date("end_date"),
        test_days=syn.integer("test_days", 0, 366),
        compression=syn.choice("compression", ("gzip", "none")),
    )
    if synthetic.end_date < synthetic.start_date:
        raise ParamsError(f"data.synthetic.end_date: {synthetic.end_date} is before start_date {synthetic.start_date}")
    if synthetic.start_date < dt.date(2012, 1, 1) or synthetic.end_date > dt.date(2030, 12, 31):
        raise ParamsError("data.synthetic.start_date/end_date: must lie within 2012-01-01 ... 2030-12-31")
    return DataParams(
        source=section.text("source"),
        sha256=section.hex_digests("sha256"),
        download=DownloadParams(retries=dl.integer("retries", 1, 100),
                                timeout_s=dl.number("timeout_s", 1, MAX_TIMEOUT_S)),
        synthetic=synthetic,
    )


@names_file
def prepare_params(raw: Mapping[str, Any]) -> PrepareParams:
    section = _Section.of(raw, "prepare", ("returns", "grid", "closed_after_days"))
    return PrepareParams(
        returns=section.choice("returns", ("zero", "keep")),
        grid=section.choice("grid", ("from_first_sale", "full")),
        closed_after_days=section.integer("closed_after_days", 1, 3650),
    )


@names_file
def split_params(raw: Mapping[str, Any]) -> SplitParams:
    section = _Section.of(raw, "split", ("validation_days",))
    return SplitParams(validation_days=section.integer("validation_days", 1, 3650))
