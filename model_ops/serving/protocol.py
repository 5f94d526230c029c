"""Request and response payloads: the Open Inference Protocol v2 (KServe, Triton, MLServer) and MLflow's scoring
format, turned into a frame of rows and back. Every refusal is a :class:`RequestError` whose message names the
field at fault, answered in the protocol's own error format: OIP ``{"error": "..."}``, MLflow
``{"error_code": "BAD_REQUEST", "message": "..."}``.

OIP inputs are either one 1-D tensor (``shape [n]`` or ``[n, 1]``) per column, named by the column, or one 2-D
tensor ``[n, k]`` holding the model's k features in its signature's order; 1-D tensors may sit beside a 2-D one
(the key or time column, a text feature), and the 2-D one then holds the features they do not, in order. Outputs come back as one tensor per output column: ``prediction``, ``score`` and,
for multiclass, ``proba_<class>``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from model_ops.serving.scoring import RequestError

# OIP tensor datatypes and the JSON values each may hold.
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOATS = {"FP16", "FP32", "FP64"}
DATATYPES = {"BOOL", "BYTES", *_INTS, *_FLOATS}
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records")


def parse_json(body: bytes) -> Any:
    """The request's JSON document; a :class:`RequestError` naming where it breaks otherwise."""
    if not body.strip():
        raise RequestError("the request has no body: send a JSON document")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RequestError(f"the JSON document cannot be read: {exc}") from None


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise RequestError(f"{where}.data must be a list, not {type(data).__name__}")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _check_values(values: list[Any], datatype: str, where: str) -> None:
    if datatype == "BYTES":
        ok = all(v is None or isinstance(v, str) for v in values)
        want = "text"
    elif datatype == "BOOL":
        ok = all(v is None or isinstance(v, bool) for v in values)
        want = "true/false"
    elif datatype in _INTS:
        ok = all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values)
        want = "integers"
    else:
        ok = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        want = "numbers"
    if not ok:
        bad = next(
            v
            for v in values
            if v is not None
            and not (
                (datatype == "BYTES" and isinstance(v, str))
                or (datatype == "BOOL" and isinstance(v, bool))
                or (datatype in _INTS and isinstance(v, int) and not isinstance(v, bool))
                or (datatype in _FLOATS and isinstance(v, (int, float)) and not isinstance(v, bool))
            )
        )
        raise RequestError(f"{where} is {datatype}, which holds {want}, but its data holds {bad!r}")


def oip_frame(doc: Any, features: list[str]) -> pd.DataFrame:
    """The rows of an OIP inference request (``features``: the model's inputs, for a 2-D tensor)."""
    if not isinstance(doc, dict):
        raise RequestError(f"an inference request is a JSON object with 'inputs', not a {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("an inference request needs 'inputs': a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    matrices: list[tuple[str, list[int], list[Any]]] = []
    rows: int | None = None
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise RequestError(f"{where} must be an object with name, shape, datatype and data")
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise RequestError(f"{where} needs a 'name' (text)")
        where = f"input {name!r}"
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise RequestError(f"{where} needs a 'shape': a list of integers")
        if not 1 <= len(shape) <= 2 or any(d < 0 for d in shape):
            raise RequestError(f"{where} has shape {shape}: a tensor here is [rows] or [rows, columns]")
        if datatype not in DATATYPES:
            raise RequestError(f"{where} has datatype {datatype!r}; one of: {', '.join(sorted(DATATYPES))}")
        values = _flatten(tensor.get("data"), where)
        expected = shape[0] * (shape[1] if len(shape) == 2 else 1)
        if len(values) != expected:
            raise RequestError(f"{where} has shape {shape} ({expected} values) but its data holds {len(values)}")
        _check_values(values, str(datatype), where)
        if rows is not None and shape[0] != rows:
            raise RequestError(f"{where} has {shape[0]} rows, the inputs before it {rows}: every input needs the same")
        rows = shape[0]
        if len(shape) == 2 and shape[1] != 1:
            matrices.append((where, shape, values))
        else:
            if name in columns:
                raise RequestError(f"{where} is given twice")
            columns[name] = values
    if len(matrices) > 1:
        raise RequestError("at most one input may be a 2-D tensor (the features); give other columns as 1-D inputs")
    for where, shape, values in matrices:
        # the features not given as 1-D inputs, in the signature's order (all of them when none is)
        rest = [f for f in features if f not in columns]
        if shape[1] != len(rest):
            raise RequestError(
                f"{where} has shape {shape}: a 2-D input holds the model's features not given as 1-D inputs "
                f"({', '.join(rest) or 'none'}) in this order, so it needs shape [rows, {len(rest)}]"
            )
        for j, feature in enumerate(rest):
            columns[feature] = values[j :: shape[1]]
    return pd.DataFrame(columns)


def mlflow_frame(doc: Any) -> pd.DataFrame:
    """The rows of an MLflow scoring request (``dataframe_split`` or ``dataframe_records``)."""
    if not isinstance(doc, dict):
        raise RequestError(f"a scoring request is a JSON object with one of {', '.join(MLFLOW_FORMATS)}")
    found = [k for k in MLFLOW_FORMATS if k in doc]
    others = [k for k in ("instances", "inputs") if k in doc]
    if len(found) != 1:
        what = f"it has {', '.join(found)}" if found else f"it has {', '.join(others or sorted(doc)) or 'no key'}"
        raise RequestError(f"a scoring request needs exactly one of {', '.join(MLFLOW_FORMATS)}; {what}")
    if found[0] == "dataframe_split":
        split = doc["dataframe_split"]
        if not isinstance(split, dict):
            raise RequestError("dataframe_split must be an object with 'columns' and 'data'")
        columns, data = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise RequestError("dataframe_split.columns must be a list of column names")
        if len(set(columns)) != len(columns):
            raise RequestError("dataframe_split.columns names a column twice")
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise RequestError("dataframe_split.data must be a list of rows (lists)")
        for i, row in enumerate(data):
            if len(row) != len(columns):
                raise RequestError(f"dataframe_split.data[{i}] has {len(row)} values for {len(columns)} columns")
            for v in row:
                if isinstance(v, (dict, list)):
                    raise RequestError(f"dataframe_split.data[{i}] holds a nested value {v!r}")
        return pd.DataFrame(data, columns=columns)
    records = doc["dataframe_records"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise RequestError("dataframe_records must be a list of objects (column -> value)")
    for i, r in enumerate(records):
        for v in r.values():
            if isinstance(v, (dict, list)):
                raise RequestError(f"dataframe_records[{i}] holds a nested value {v!r}")
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------------------------------- outputs


def json_values(values: np.ndarray) -> list[Any]:
    """An output column as JSON values: NaN and infinities as null (strict JSON has neither)."""
    out = np.asarray(values).tolist()
    if np.asarray(values).dtype.kind in "fc" or np.asarray(values).dtype == object:
        out = [None if isinstance(v, float) and not math.isfinite(v) else v for v in out]
    return out


def datatype_of(values: np.ndarray) -> str:
    kind = np.asarray(values).dtype.kind
    return {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}.get(kind, "BYTES")


def oip_outputs(columns: dict[str, np.ndarray], wanted: list[str] | None = None) -> list[dict[str, Any]]:
    """One OIP output tensor per output column (those the request asked for, when it named some)."""
    names = [n for n in columns if wanted is None or n in wanted]
    return [
        {
            "name": n,
            "shape": [len(columns[n])],
            "datatype": datatype_of(columns[n]),
            "data": json_values(columns[n]),
        }
        for n in names
    ]


def wanted_outputs(doc: dict[str, Any], available: list[str]) -> list[str] | None:
    """The output names an OIP request asks for (``outputs: [{name}]``); None for all."""
    outputs = doc.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise RequestError(f"unknown output(s) {', '.join(unknown)}; this model outputs {', '.join(available)}")
    return names
