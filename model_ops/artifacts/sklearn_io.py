"""scikit-learn models as skops archives: no pickle on load, and the same model always gives the same bytes.

skops names array files and shared-object ids after ``id(obj)`` (memory addresses) and stamps zip entries with the
current time, so two dumps of one model differ. :func:`dumps` rewrites the archive canonically: ids renumbered in
order of first appearance, entries sorted, timestamps fixed at 1980-01-01. The result loads with stock skops.
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

from model_ops.errors import IntegrityError, PolicyError, UsageError

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
                out = {}
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


def loads(data: bytes, trusted: list[str] | tuple[str, ...] = ()) -> Any:
    """Load skops bytes, refusing any type that is neither trusted by default nor named exactly in ``trusted``."""
    import skops.io as sio

    allowed = DEFAULT_TRUSTED | set(trusted) | set(trusted_extra())
    with _malformed():
        untrusted = sio.get_untrusted_types(data=data)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise PolicyError(
            f"the model contains types that are not on the allow-list: {', '.join(refused)}",
            hint=f"load them only if you trust their code: pass trusted=[...] or set {TRUSTED_ENV}="
            + ",".join(refused),
        )
    with _malformed():
        return sio.loads(data, trusted=sorted(untrusted))


@contextlib.contextmanager
def _malformed() -> Iterator[None]:
    """What a crafted or damaged skops file raises (not a zip, a schema nested past any model's depth, a pickle
    inside an array file, fields of the wrong kind) as one integrity error naming the cause."""
    try:
        yield
    except (zipfile.BadZipFile, RecursionError, ValueError, KeyError, TypeError, AttributeError, EOFError) as exc:
        raise IntegrityError(
            f"the model file is not a valid scikit-learn (skops) artifact: {type(exc).__name__}: "
            f"{str(exc)[:200] or 'no detail'}",
            hint="the stored bytes match their digest, so they were written this way: register the model again "
            "from its training code",
        ) from None
