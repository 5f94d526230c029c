"""scikit-learn models as skops archives: no pickle on load, and the same model always gives the same bytes.

skops names array files and shared-object ids after ``id(obj)`` (memory addresses) and stamps zip entries with the
current time, so two dumps of one model differ. :func:`dumps` rewrites the archive canonically: ids renumbered in
order of first appearance, entries sorted, timestamps fixed at 1980-01-01. The result loads with stock skops.

Loading treats the bytes as an attacker's (their digest proves only that they are what was registered): an archive
that would exhaust memory or the stack is refused before skops reads it, whatever skops or NumPy raise on it is an
IntegrityError naming the file, and the loaded object's tree models are checked (``tree_check``) before anyone
can call them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from model_ops.artifacts import tree_check
from model_ops.errors import IntegrityError, ModelOpsError, PolicyError, UsageError

TRUSTED_ENV = "MODEL_OPS_TRUSTED_TYPES"
# Beyond skops' own defaults, these exact classes are trusted: the data-holding classes that ordinary
# scikit-learn models (trees, boosting, neighbours, calibration) are made of. Never trust by module prefix: skops
# rebuilds some objects by calling the named function, so trusting "builtins." or "sklearn." would let a crafted
# file name builtins.exec, or a scikit-learn test helper that runs a script, and execute code on load.
DEFAULT_TRUSTED = frozenset(
    {
        "numpy.dtype",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
    }
)
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_NPY = re.compile(r"^(\d+)\.npy$")
# A fitted model's schema nests a few dozen levels (33 for a grid search over a pipeline with a column transformer
# and a stacking ensemble); skops runs out of stack at about a thousand.
MAX_SCHEMA_DEPTH = 200
# An archive whose directory claims it expands to more than MAX_EXPANSION times its size, and to more than
# MAX_EXPANDED_BYTES, is refused before anything is decompressed (model_ops writes archives uncompressed).
MAX_EXPANSION = 200
MAX_EXPANDED_BYTES = 1 << 30
_OPENING = np.frombuffer(b"{[", dtype=np.uint8)
_CLOSING = np.frombuffer(b"}]", dtype=np.uint8)


def dumps(model: Any) -> bytes:
    """Deterministic skops bytes for a fitted estimator."""
    import skops.io as sio

    return canonicalize(sio.dumps(model))


def canonicalize(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        schema = json.loads(zin.read("schema.json"))
        ids: dict[int, int] = {}

        def new_id(old: int) -> int:
            return ids.setdefault(old, len(ids) + 1)

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                out: dict[str, Any] = {}
                for k, v in node.items():
                    if k == "__id__" and isinstance(v, int):
                        out[k] = new_id(v)
                    elif k == "file" and isinstance(v, str) and _NPY.match(v):
                        out[k] = f"{new_id(int(_NPY.match(v).group(1)))}.npy"  # type: ignore[union-attr]
                    else:
                        out[k] = walk(v)
                return out
            if isinstance(node, list):
                return [walk(v) for v in node]
            return node

        schema = walk(schema)
        files: dict[str, bytes] = {}
        for name in zin.namelist():
            if name == "schema.json":
                continue
            m = _NPY.match(name)
            if not m or int(m.group(1)) not in ids:
                raise UsageError(f"skops archive holds an unexpected entry {name!r}")
            files[f"{ids[int(m.group(1))]}.npy"] = zin.read(name)
    files["schema.json"] = json.dumps(schema, indent=2).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zout:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, files[name])
    return out.getvalue()


def trusted_extra() -> list[str]:
    return [t.strip() for t in os.environ.get(TRUSTED_ENV, "").split(",") if t.strip()]


def loads(data: bytes, trusted: list[str] | tuple[str, ...] = (), what: str = "the model file") -> Any:
    """Load skops bytes, refusing any type that is neither trusted by default nor named exactly in ``trusted``.
    ``what`` names the file in messages."""
    allowed = DEFAULT_TRUSTED | set(trusted) | set(trusted_extra())
    untrusted = found_types(data, what)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise PolicyError(
            f"the model contains types that are not on the allow-list: {', '.join(refused)}",
            hint=f"load them only if you trust their code: pass trusted=[...] or set {TRUSTED_ENV}="
            + ",".join(refused),
        )
    return load_checked(data, untrusted, what)


def found_types(data: bytes, what: str = "the model file") -> list[str]:
    """The types skops would have to be told to trust to load ``data``, after checking that the archive is one
    skops can read without exhausting memory or the stack: whatever is wrong with it is an IntegrityError."""
    import skops.io as sio

    _check_archive(data, what)
    with _malformed(what):
        return sorted(sio.get_untrusted_types(data=data))


def load_checked(data: bytes, trusted: list[str], what: str = "the model file") -> Any:
    """The object in ``data``, built by skops trusting exactly ``trusted``, and refused unless every tree model in
    it is well formed (see :mod:`model_ops.artifacts.tree_check`): loading must not hand anyone a model that
    crashes the process when it predicts."""
    import skops.io as sio

    _check_archive(data, what)
    with _malformed(what):
        model = sio.loads(data, trusted=list(trusted))
    tree_check.check(model, what)
    return model


def _check_archive(data: bytes, what: str) -> None:
    """What skops itself does not bound: the memory the archive expands to, and how deeply its schema nests
    (skops and the JSON parser recurse once per level, so a deep schema exhausts the stack, and with a raised
    recursion limit could crash the process)."""
    with _malformed(what):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
            if expanded > MAX_EXPANSION * max(len(data), 1) and expanded > MAX_EXPANDED_BYTES:
                raise _Malformed(
                    f"its {len(data)} bytes claim to expand to {expanded} (a compression bomb, or a damaged directory)"
                )
            schema = archive.read("schema.json")
    depth = json_depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise _integrity(
            what,
            f"RecursionError: its schema.json nests {depth} levels deep; no model needs more than {MAX_SCHEMA_DEPTH}",
        )


def json_depth(document: bytes) -> int:
    """How deeply a JSON document nests arrays and objects, found in linear time without parsing (so without
    recursion): brackets count outside strings, a string ends at a quote preceded by an even run of backslashes."""
    codes = np.frombuffer(document, dtype=np.uint8)
    if not len(codes):
        return 0
    position = np.arange(len(codes))
    backslash = codes == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, position))
    escapes_before = np.zeros(len(codes), dtype=np.int64)
    escapes_before[1:] = position[:-1] - last_other[:-1]
    quote = (codes == ord('"')) & (escapes_before % 2 == 0)
    in_string = (np.cumsum(quote) % 2 == 1) | quote
    step = np.isin(codes, _OPENING).astype(np.int64) - np.isin(codes, _CLOSING)
    step[in_string] = 0
    return max(int(np.cumsum(step).max()), 0)


class _Malformed(Exception):
    """A fault found by model_ops' own checks of an archive, reported like skops' own errors."""


@contextlib.contextmanager
def _malformed(what: str = "the model file") -> Iterator[None]:
    """What a crafted or damaged skops file raises (not a zip, a truncated entry, a schema nested past any model's
    depth, a pickle inside an array file, fields of the wrong kind, ...) as one integrity error naming the file
    and the cause. The bytes were verified against their digest before, so nothing here is a bug of the caller:
    whatever skops or NumPy raise while reading them says only that they were written wrong."""
    try:
        yield
    except ModelOpsError:
        raise
    except Exception as exc:
        cause = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {str(exc)[:200] or 'no detail'}"
        raise _integrity(what, cause) from None


def _integrity(what: str, cause: str) -> IntegrityError:
    return IntegrityError(f"{what} is not a valid scikit-learn (skops) artifact: {cause}", hint=tree_check.HINT)
