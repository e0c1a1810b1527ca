"""Checkpoints (``Saver``) and the frozen inference-graph export the model bundle ships; no pickle anywhere.

Checkpoint: ``<prefix>.npz`` (the variables' arrays) + the ``<prefix>.json`` manifest::

    {"format": "shelfcast-engine-checkpoint", "version": 1, "data_file": "<prefix>.npz",
     "data_sha256": "...", "variables": [{"name": "dense/kernel", "key": "v0", "dtype": "float32",
                                           "shape": [20, 256], "sha256": "..."}],
     "random_streams": [{"op": "RandomUniform", "seed": [0, 5], "state": {<its bit generator's state>}}]}

``random_streams``: where each random op that has drawn stands, so a restored session draws on from there (a run with
dropout resumed ends as an uninterrupted one); a graph's random op it does not name starts at its seed.

Inference graph: a directory of ``weights.npz`` and ``graph.json``::

    {"format": "shelfcast-engine-graph", "version": 1,
     "inputs":  {"<input name>": "<tensor name, e.g. features:0>"}, "outputs": {"<output name>": "<tensor name>"},
     "weights": {"file": "weights.npz", "sha256": "<hex of the file>"},
     "ops": [{"name": "dense/MatMul", "type": "MatMul", "inputs": ["features:0", "dense/kernel:0"],
              "control_inputs": [], "attrs": {"transpose_a": false, "transpose_b": false}}, ...]}

``ops`` are in creation order (each input an earlier op's output); attribute values are JSON scalars, lists (read back
as tuples), ``{"dtype": "float32"}`` or ``{"tensor": "<key in weights.npz>"}``. Variables and their reads are frozen
into ``Const`` ops of the same name, the graph is pruned to what the outputs need (inputs become placeholders) and
other stateful or random ops are refused. Loading needs only ``engine`` (op types are looked up in the registry): the
same kernels on the same constants give bit-identical outputs.

Files are written to a temporary name and renamed into place, the manifest last: an overwritten checkpoint switches
over at its manifest (its data staged as ``<prefix>.npz-<sha256[:16]>``, renamed after it), and ``restore`` reads the
staged file while ``<prefix>.npz`` still holds the old data (a save killed between the two renames).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
import zipfile
from functools import partial
from typing import Mapping

import numpy as np

from engine import dtypes
from engine.errors import DataLossError, InvalidArgumentError, NotFoundError
from engine.compiler import compile_callable
from engine.graph import Graph, Operation, Tensor, convert_to_tensor, is_tensor_like, ops_needed
from engine.ops.state import check_variables, global_variables
from engine.session import Session

CHECKPOINT_FORMAT = "shelfcast-engine-checkpoint"
GRAPH_FORMAT = "shelfcast-engine-graph"
FORMAT_VERSION = 1


def open_regular(path: str):
    """``path`` opened for binary reading where it is a regular file (a symlink is followed), else an OSError naming
    it, at once: a named pipe's ``open`` waited for a writer forever (a FIFO under a checkpoint's name hung every
    rerun of train) and a device (/dev/zero) never ends a read. pipeline/atomic.py's ``open_regular_file`` is the
    same step: the engine imports nothing of the pipeline's."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    handle = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return handle


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename. An OSError names ``path``:
    a full disk's (ENOSPC) names no file at all, and the temporary file's name means nothing to its reader. The file's
    mode is the umask's, as an ``open`` would make it (mkstemp's 0600 kept checkpoints from other users)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(directory)  # the rename itself is on disk: a power cut cannot undo it
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            raise _named(exc, path) from exc
        raise


def _fsync_directory(directory: str) -> None:
    """Flush ``directory``'s entries (a rename is a change of its directory, which the file's fsync does not write);
    a platform where a directory cannot be opened (Windows) or flushed (EINVAL on some file systems) has no such step.
    pipeline/atomic.py's ``fsync_directory`` is the same step: the engine imports nothing of the pipeline's."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` (same type and errno) with ``path`` as its file name."""
    return type(exc)(exc.errno, exc.strerror or str(exc), path)


NPZ_MEMBER_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: the bytes never record when they were written


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` whose bytes depend on the arrays alone: ``np.savez`` stamps each member with the time and writes
    zip headers as the running CPython does (zip64 ones from 3.11.4), so the same weights got another digest on
    another patch release. Members are ``.npy`` (no pickle), stored uncompressed, in order, with fixed attributes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_MEMBER_TIME)
            info.create_system, info.external_attr = 3, 0o644 << 16  # Unix, rw-r--r-- (ZipInfo's default by OS)
            archive.writestr(info, member.getvalue())
    return buf.getvalue()


def read_npz(path: str) -> dict:
    """The arrays of the ``.npz`` at ``path`` (no pickle), reading no more bytes than the file holds. ``np.load``
    trusts each member's headers: a member inflating to GBs (a zip bomb), or a header declaring more data than follows,
    killed a worker for memory. Every ``.npz`` the engine and the bundle write is stored uncompressed (``np.savez``
    too), so a member must be stored and hold exactly the bytes its header declares: ValueError naming it otherwise.
    A file that is no such archive (cut short, a byte changed) is a ValueError naming ``path`` too: zipfile's own
    errors (BadZipFile, NotImplementedError, RuntimeError, EOFError) escaped the bundle's load as a traceback, and an
    offset past the file's start was a bare "[Errno 22] Invalid argument"."""
    with open_regular(path) as file:
        try:
            with zipfile.ZipFile(file) as archive:
                _check_members(archive)
            file.seek(0)
            with np.load(file, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e})") from None


def _check_members(archive: zipfile.ZipFile) -> None:
    """ValueError naming the first member of ``archive`` that is compressed, of Python objects, or not the size its
    ``.npy`` header declares."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {info.filename} is compressed ({info.file_size} bytes from "
                             f"{info.compress_size}); arrays are stored uncompressed")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {info.filename} has .npy format version {version}; expected 1.0 or 2.0")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects (dtype {dtype}): a pickle, which "
                                 "is never loaded")
            declared = member.tell() + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if declared != info.file_size:
            raise ValueError(f"member {info.filename} declares shape {shape} {dtype} ({declared} bytes with its "
                             f"header), it holds {info.file_size}")


def _verified_npz(path: str, sha: str, manifest_path: str, what: str) -> dict:
    """The arrays of the ``.npz`` at ``path`` once its sha256 is ``sha``, the one ``manifest_path`` names."""
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise NotFoundError(f"{what} file {path} does not exist") from None
    except OSError as e:  # a directory, a named pipe, a device, no permission: named, never waited on
        raise DataLossError(f"{what} file {path} cannot be read ({e.strerror})") from None
    if digest != sha:
        raise DataLossError(f"{what} file {path} is corrupt (sha256 does not match {manifest_path})")
    try:
        return read_npz(path)
    except FileNotFoundError:
        raise NotFoundError(f"{what} file {path} does not exist") from None
    except Exception as e:  # noqa: BLE001  (zip/npy format errors of any kind: the file is unreadable)
        raise DataLossError(f"{what} file {path} is unreadable: {e}") from None


def _load_json(path: str, what: str, fmt: str, max_bytes: int | None = None) -> dict:
    try:
        size = os.path.getsize(path)
        if max_bytes is not None and size > max_bytes:
            raise DataLossError(f"{what} {path} is {size} bytes; at most {max_bytes} are read (its structure only: "
                                "the constants are in the weights file)")
        with open_regular(path) as f:
            doc = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"{what} manifest {path} does not exist") from None
    except OSError as e:  # a directory, a named pipe, a device, no permission: named, never waited on
        raise DataLossError(f"{what} manifest {path} cannot be read ({e.strerror})") from None
    except (ValueError, RecursionError) as e:  # JSON, UTF-8, a number over int's digit limit; RecursionError: nested
        raise DataLossError(f"{what} manifest {path} is not valid JSON: {e}") from None  # too deep
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise DataLossError(f"{path} is not a {fmt} file")
    if doc.get("version") != FORMAT_VERSION:
        raise DataLossError(f"{path} has {fmt} version {doc.get('version')}; "
                            f"this engine reads version {FORMAT_VERSION}")
    return doc


def _array_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(arr, order="C").tobytes()).hexdigest()


class Saver:
    """Saves and restores variables' values (all global variables by default)."""

    def __init__(self, var_list=None):
        var_list = global_variables() if var_list is None else var_list
        self._vars = dict(var_list) if isinstance(var_list, dict) else {v.op.name: v for v in var_list}
        if not self._vars:
            raise ValueError("Saver: no variables to save")
        check_variables(self._vars.values(), "Saver")
        graphs = {id(v.graph): v.graph for v in self._vars.values()}
        if len(graphs) > 1:
            raise ValueError("Saver: the variables belong to different graphs")
        (self._graph,) = graphs.values()

    def _check_session(self, sess, doing: str) -> None:
        """Its state is keyed by variable name: another graph's same-named variables are not these."""
        if sess.graph is not self._graph:
            raise ValueError(f"Saver: cannot {doing} a session of another graph than the saver's variables'")

    def save(self, sess, save_path: str, global_step=None) -> str:
        """Write the checkpoint; returns its prefix (``save_path`` or ``save_path-<step>``)."""
        self._check_session(sess, "save")
        prefix = str(save_path)
        if global_step is not None:  # a number, or the tensor or variable holding it
            step = global_step if isinstance(global_step, (int, np.integer)) else (
                sess.run(global_step) if is_tensor_like(global_step) else None)
            if np.ndim(step) or np.asarray(step).dtype.kind not in "iu":  # a float's step was cut: 7.5 saved as -7
                raise TypeError(f"Saver.save: global_step must be an integer or an integer scalar tensor, got "
                                f"{global_step!r}" + ("" if step is global_step else f" (its value: {step!r})"))
            prefix += f"-{int(step)}"
        arrays, entries = {}, []
        for i, (name, var) in enumerate(sorted(self._vars.items())):
            if var.op.name not in sess.state:
                raise InvalidArgumentError(f"cannot save uninitialized variable {var.op.name}", var.op.name)
            arr = np.asarray(sess.state[var.op.name], order="C")
            key = f"v{i}"
            arrays[key] = arr
            entries.append({"name": name, "key": key, "dtype": str(arr.dtype), "shape": list(arr.shape),
                            "sha256": _array_sha(arr)})
        data = npz_bytes(arrays)
        data_file, sha = prefix + ".npz", hashlib.sha256(data).hexdigest()
        try:
            atomic_write_bytes(_staged(data_file, sha), data)
        except OSError as exc:
            if exc.filename != _staged(data_file, sha):
                raise
            raise _named(exc, data_file) from exc  # the file it is written for, not its staged name
        manifest = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION,
                    "data_file": os.path.basename(data_file), "data_sha256": sha, "variables": entries,
                    "random_streams": _random_streams(sess)}
        atomic_write_bytes(prefix + ".json", json.dumps(manifest, indent=1).encode())  # the switch-over
        os.replace(_staged(data_file, sha), data_file)
        directory, stem = os.path.split(os.path.abspath(data_file))
        for name in os.listdir(directory):  # staged data of earlier saves killed before their manifest
            if name.startswith(stem + "-") and re.fullmatch(r"[0-9a-f]{16}", name[len(stem) + 1:]):
                os.unlink(os.path.join(directory, name))
        return prefix

    def restore(self, sess, save_path: str) -> None:
        """Load every saver variable from the checkpoint, verifying checksums, names and shapes."""
        self._check_session(sess, "restore into")
        manifest_path = str(save_path) + ".json"
        manifest = _checked_manifest(_load_json(manifest_path, "checkpoint", CHECKPOINT_FORMAT), manifest_path)
        data_file = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), manifest["data_file"])
        staged = _staged(data_file, manifest["data_sha256"])
        if _holds(staged, manifest["data_sha256"]):
            data_file = staged  # its save was killed before renaming it to data_file
        arrays = _verified_npz(data_file, manifest["data_sha256"], manifest_path, "checkpoint data")
        entries = {e["name"]: e for e in manifest["variables"]}
        loaded = {}
        for name, var in self._vars.items():
            entry = entries.get(name)
            if entry is None:
                raise NotFoundError(f"variable {name} not found in checkpoint {manifest_path}")
            arr = arrays.get(entry["key"])
            if arr is None or _array_sha(arr) != entry["sha256"]:
                raise DataLossError(f"variable {name} in checkpoint {data_file} is corrupt")
            if entry.get("shape") != list(arr.shape) or entry.get("dtype") != str(arr.dtype):
                raise DataLossError(f"checkpoint manifest {manifest_path} is corrupt: variable {name} says shape "
                                    f"{entry.get('shape')} {entry.get('dtype')}, its data is {list(arr.shape)} "
                                    f"{arr.dtype}")
            if tuple(arr.shape) != tuple(var.shape):
                raise InvalidArgumentError(f"variable {name}: checkpoint {manifest_path} has shape {tuple(arr.shape)},"
                                           f" the graph expects {tuple(var.shape)}", var.op.name)
            if arr.dtype != var.dtype.np:
                raise InvalidArgumentError(f"variable {name}: checkpoint {manifest_path} has dtype {arr.dtype},"
                                           f" the graph expects {var.dtype.name}", var.op.name)
            loaded[var.op.name] = np.array(arr, copy=True, order="C")
        streams = _checked_streams(manifest, manifest_path, self._graph)
        sess.state.update(loaded)  # all or nothing: nothing is changed when any variable or stream fails
        sess.set_random_state(streams)


def _random_streams(sess) -> list:
    """Where each random op's stream stands (ops that have drawn): a restored session draws on from there, so a run
    resumed from the checkpoint draws the dropout masks an uninterrupted run would (a new Session starts every stream
    at its seed: resumed, a run with dropout repeated its first masks and ended on other weights)."""
    graph_ops = {op.name: op for op in sess.graph.get_operations()}
    return [{"op": name, "seed": [int(s) for s in graph_ops[name].attrs["seed"]], "state": state}
            for name, state in sorted(sess.random_state().items()) if name in graph_ops]


def _checked_streams(manifest: dict, path: str, graph) -> dict:
    """{op name: stream state} of the checkpoint's ``random_streams`` (absent in a checkpoint of an engine that kept
    none: every stream starts at its seed); DataLossError naming an entry that is malformed or not a stream,
    InvalidArgumentError for a random op of the graph whose seeds are not those its stream was drawn with."""
    need = partial(_need, f"checkpoint manifest {path}")
    entries = manifest.get("random_streams", [])
    need(isinstance(entries, list), f"random_streams must be a list, got {type(entries).__name__}")
    streams = {}
    for k, entry in enumerate(entries):
        need(isinstance(entry, dict) and isinstance(entry.get("op"), str) and isinstance(entry.get("state"), dict)
             and isinstance(entry.get("seed"), list), f"random_streams[{k}] must have the string op, the list seed "
             "and the object state")
        try:
            np.random.default_rng(0).bit_generator.state = entry["state"]  # tried on a scratch generator first
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise DataLossError(f"checkpoint manifest {path} is corrupt: random_streams[{k}] ({entry['op']}) is not a "
                                f"stream's state: {e}") from None
        try:
            op = graph.get_operation_by_name(entry["op"])
        except NotFoundError:
            continue  # a random op this graph does not have: its stream is not restored, as a variable is not
        if not op.op_def.random:
            continue
        if [int(s) for s in op.attrs["seed"]] != entry["seed"]:
            raise InvalidArgumentError(f"random op {op.name}: checkpoint {path} holds its stream of seeds "
                                       f"{entry['seed']}, the graph's are {list(op.attrs['seed'])}", op.name)
        streams[op.name] = entry["state"]
    return streams


def _staged(data_file: str, sha: str) -> str:
    return f"{data_file}-{sha[:16]}"


def _holds(path: str, sha: str) -> bool:
    """``path`` is a readable regular file whose sha256 is ``sha`` (anything else there is not a staged save)."""
    try:
        return sha256_file(path) == sha
    except OSError:
        return False


def _need(what: str, ok: bool, field: str) -> None:
    """DataLossError saying ``what`` is corrupt, naming ``field``, unless ``ok``."""
    if not ok:
        raise DataLossError(f"{what} is corrupt: {field}")


def _is_file_name(name) -> bool:
    """A plain file name: a data file is read beside its manifest, never from a path the manifest gives."""
    return isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name


def _checked_manifest(manifest: dict, path: str) -> dict:
    """The manifest's fields ``restore`` reads, each of its type, or a DataLossError naming the first that is not."""
    need = partial(_need, f"checkpoint manifest {path}")
    data_file, entries = manifest.get("data_file"), manifest.get("variables")
    need(_is_file_name(data_file), f"data_file must be a file name beside it, got {data_file!r}")
    need(isinstance(manifest.get("data_sha256"), str), "data_sha256 must be a string")
    need(isinstance(entries, list), f"variables must be a list, got {type(entries).__name__}")
    for k, entry in enumerate(entries):
        need(isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in ("name", "key", "sha256")),
             f"variables[{k}] must have the strings name, key and sha256")
    return manifest


def _checked_graph_doc(doc: dict, path: str) -> dict:
    """The graph.json fields ``import_inference_graph`` reads, each of its type, or a DataLossError naming one."""
    need = partial(_need, f"inference graph {path}")
    weights = doc.get("weights")
    need(isinstance(weights, dict), "weights must be an object")
    need(_is_file_name(weights.get("file")), f"weights.file must be a file name beside it, got {weights.get('file')!r}")
    need(isinstance(weights.get("sha256"), str), "weights.sha256 must be a string")
    need(isinstance(doc.get("ops"), list), "ops must be a list")
    for k, rec in enumerate(doc["ops"]):
        need(isinstance(rec, dict) and isinstance(rec.get("name"), str) and isinstance(rec.get("type"), str)
             and isinstance(rec.get("inputs"), list) and isinstance(rec.get("control_inputs"), list)
             and isinstance(rec.get("attrs"), dict),
             f"ops[{k}] must have the string name and type, the lists inputs and control_inputs, and attrs")
    for field in ("inputs", "outputs"):
        need(isinstance(doc.get(field), dict) and all(isinstance(v, str) for v in doc[field].values()),
             f"{field} must map names to tensor names")
    return doc


def _encode_attr(value, weights: dict, owner: str):
    if isinstance(value, dtypes.DType):
        return {"dtype": value.name}
    if isinstance(value, np.ndarray):
        key = f"c{len(weights)}"
        weights[key] = np.asarray(value, order="C")
        return {"tensor": key}
    if isinstance(value, (tuple, list)):
        return [_encode_attr(v, weights, owner) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"op {owner}: attribute value {value!r} cannot be exported")


def _decode_attr(value, weights: dict):
    if isinstance(value, dict):
        if "dtype" in value:
            return dtypes.as_dtype(value["dtype"])
        if "tensor" in value:
            arr = np.array(weights[value["tensor"]], copy=True, order="C")
            arr.flags.writeable = False
            return arr
        raise DataLossError(f"unknown attribute encoding {value!r}")
    if isinstance(value, list):
        return tuple(_decode_attr(v, weights) for v in value)
    return value


def _as_named(tensors) -> dict:
    if isinstance(tensors, dict):
        return {str(k): convert_to_tensor(v) for k, v in tensors.items()}
    named = [convert_to_tensor(t) for t in (tensors if isinstance(tensors, (list, tuple)) else [tensors])]
    return {t.op.name: t for t in named}


def _check_inputs_distinct(inputs: dict, what: str, error) -> None:
    """``error`` naming the input names that share a tensor: a tensor is fed once (Session.plan), so a bundle whose
    inputs did was written, and every import of it failed with "a tensor is fed twice"."""
    by_tensor: dict = {}
    for name, t in inputs.items():
        by_tensor.setdefault(t, []).append(name)
    shared = [f"{', '.join(map(repr, names))} name one tensor, {t.name}" for t, names in by_tensor.items()
              if len(names) > 1]
    if shared:
        raise error(f"{what}: {'; '.join(shared)}; each input must be a tensor of its own (one name per tensor)")


def export_inference_graph(sess, export_dir: str, inputs, outputs) -> dict:
    """Freeze and prune the graph of ``sess`` to ``outputs`` ({name: tensor}, or a list named by op) fed ``inputs``,
    write it to ``export_dir``; returns ``{"graph": path, "weights": path, "weights_sha256": hex}``."""
    inputs, outputs = _as_named(inputs), _as_named(outputs)
    _check_inputs_distinct(inputs, "export_inference_graph: inputs", ValueError)
    for t in [*inputs.values(), *outputs.values()]:  # variables are frozen from the session's state, by name
        if t.graph is not sess.graph:
            raise ValueError(f"export_inference_graph: {t.name} is not in the session's graph")
    fed = set(inputs.values())
    needed = ops_needed(outputs.values(), fed)
    weights: dict = {}
    records = []
    for t in sorted(fed, key=lambda t: t.op.id):
        if t.value_index != 0:
            raise ValueError(f"input {t.name} must be the first output of its op")
        records.append({"name": t.op.name, "type": "Placeholder", "inputs": [], "control_inputs": [],
                        "attrs": {"dtype": {"dtype": t.dtype.name},
                                  "shape": _encode_attr(t.shape, weights, t.op.name)}})
    for op in sorted(needed, key=lambda o: o.id):
        if op.op_def.variable_read is not None:  # a variable, or a read of it: frozen, that same constant
            var = op.op_def.variable_read(op)
            if var not in sess.state:
                raise InvalidArgumentError(f"cannot freeze uninitialized variable {var}", op.name)
            attrs, op_type = {"value": np.array(sess.state[var], copy=True)}, "Const"
        elif op.op_def.must_feed:
            raise ValueError(f"placeholder {op.name} is needed by the outputs but is not among the inputs")
        elif op.op_def.stateful or op.op_def.random:
            raise ValueError(f"cannot export op {op.name} ({op.type}): stateful or random ops have no place in an "
                             "inference graph (build it with training=False)")
        else:
            attrs, op_type = op.attrs, op.type
        records.append({"name": op.name, "type": op_type, "inputs": [t.name for t in op.inputs],
                        "control_inputs": [c.name for c in op.control_inputs],
                        "attrs": {k: _encode_attr(v, weights, op.name) for k, v in attrs.items()}})
    data = npz_bytes(weights)
    weights_path = os.path.join(export_dir, "weights.npz")
    graph_path = os.path.join(export_dir, "graph.json")
    atomic_write_bytes(weights_path, data)
    doc = {"format": GRAPH_FORMAT, "version": FORMAT_VERSION,
           "inputs": {k: v.name for k, v in inputs.items()}, "outputs": {k: v.name for k, v in outputs.items()},
           "weights": {"file": "weights.npz", "sha256": hashlib.sha256(data).hexdigest()}, "ops": records}
    atomic_write_bytes(graph_path, json.dumps(doc, indent=1).encode())
    return {"graph": graph_path, "weights": weights_path, "weights_sha256": doc["weights"]["sha256"]}


class InferenceModel:
    """A loaded inference graph, ``run({input name: array}) -> {output name: array}``: batches of up to ``max_rows``
    rows run compiled (engine/compiler.py), larger ones or a graph the compiler refuses interpreted (BLAS matmuls)."""

    def __init__(self, graph: Graph, inputs: dict, outputs: dict, max_rows: int | None = None):
        self.graph = graph
        self.inputs: dict[str, Tensor] = inputs
        self.outputs: dict[str, Tensor] = outputs
        self.session = Session(graph)
        self._input_names = list(inputs)
        self._call = compile_callable(self.session, dict(outputs), list(inputs.values()), max_rows)

    @property
    def compile_error(self):
        """Why the compiled fast path is off (None while it is on or not yet tried)."""
        return self._call.compile_error

    def warm_up(self) -> bool:
        """Load (or compile) the small-batch function now, not on the first request; True if usable."""
        return self._call.warm_up()

    def run(self, feed: dict) -> dict:
        missing = [k for k in self._input_names if k not in feed]
        unknown = [k for k in feed if k not in self.inputs]
        if missing or unknown:
            raise InvalidArgumentError(f"inference feed: missing inputs {missing}, unknown inputs {unknown}; "
                                       f"expected {self._input_names}")
        return self._call(*[feed[k] for k in self._input_names])

    def predict(self, *arrays) -> dict:
        """The hot path: arrays in the order of :attr:`inputs`, no dict checks; same result as :meth:`run`."""
        return self._call(*arrays)


MAX_GRAPH_BYTES = 16 << 20  # graph.json is structure only (~200 bytes an op; constants are in weights.npz)


def import_inference_graph(export_dir: str) -> InferenceModel:
    """Load a directory written by :func:`export_inference_graph`, its weights' checksum verified. A graph.json over
    ``MAX_GRAPH_BYTES`` is refused before it is parsed, one with an op no output needs once built: a padded one (10^6
    ops, 95 MB) took 76 s and a 1.5 GB peak RSS to load, and was served."""
    graph_path = os.path.join(export_dir, "graph.json")
    doc = _checked_graph_doc(_load_json(graph_path, "inference graph", GRAPH_FORMAT, MAX_GRAPH_BYTES), graph_path)
    weights = _verified_npz(os.path.join(export_dir, doc["weights"]["file"]), doc["weights"]["sha256"], graph_path,
                            "weights")
    graph = Graph()
    ops: dict[str, Operation] = {}
    for rec in doc["ops"]:
        try:
            ins = [graph.get_tensor_by_name(n) for n in rec["inputs"]]
            controls = [ops[c] for c in rec["control_inputs"]]
            attrs = {k: _decode_attr(v, weights) for k, v in rec["attrs"].items()}
            op = ops[rec["name"]] = graph.create_op(rec["type"], ins, attrs, name=rec["name"],
                                                    control_inputs=controls, exact_name=True)
            if op.op_def.stateful or op.op_def.random:  # export refuses them: a run read uninitialized state or
                raise ValueError("a stateful or random op, which no export writes")  # drew other outputs each time
            graph.unique_name(rec["name"])  # reserve it, as building the graph would have
        except (KeyError, IndexError, AttributeError, NotFoundError, DataLossError, ValueError, TypeError) as e:
            raise DataLossError(f"{graph_path}: op {rec['name']!r} cannot be rebuilt: {e}") from None
    try:
        inputs = {k: graph.get_tensor_by_name(v) for k, v in doc["inputs"].items()}
        outputs = {k: graph.get_tensor_by_name(v) for k, v in doc["outputs"].items()}
    except (NotFoundError, ValueError) as e:
        raise DataLossError(f"{graph_path}: inputs or outputs name a tensor the graph does not have ({e})") from None
    _check_inputs_distinct(inputs, f"inference graph {graph_path} is corrupt: inputs", DataLossError)
    needed = ops_needed(outputs.values(), inputs.values()) | {t.op for t in inputs.values()}
    unneeded = [op.name for op in graph.get_operations() if op not in needed]
    if unneeded:  # what an export writes: a placeholder per input, and what the outputs need of the rest
        raise DataLossError(f"inference graph {graph_path} is corrupt: {len(unneeded)} op(s) needed by no output "
                            f"(e.g. {unneeded[0]!r}); an export writes only what its outputs need")
    return InferenceModel(graph, inputs, outputs)
