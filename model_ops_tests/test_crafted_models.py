"""Crafted model files: bytes that match their digest (whoever registered them wrote them so) but hold a tree that
would crash the process on predict, an archive skops cannot read, or a booster file XGBoost or LightGBM would
crash on. Each is refused on load with an IntegrityError naming the file and the fault, never a segmentation
fault, an abort or a raw exception; fuzzed files never get further than that either."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_ops.artifacts import sklearn_io
from model_ops.errors import IntegrityError, ModelOpsError
from model_ops.loading import load as load_model  # what model_ops.load is
from model_ops.ml import flavors
from model_ops.registry import Registry
from model_ops_tests.helpers import write_file

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- crafting


def rewrite_zip(data: bytes, change: Callable[[str, bytes], bytes]) -> bytes:
    """The skops archive with each entry's bytes passed through ``change`` (entries keep valid CRCs: the archive
    is well formed, only what it holds is crafted)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change(info.filename, src.read(info)))
    return out.getvalue()


def edit_arrays(data: bytes, field: str, change: Callable[[np.ndarray], None], which: int = 0) -> bytes:
    """Change the ``which``-th structured array that has ``field`` (a tree's node records) in place."""
    seen = [0]

    def edit(name: str, raw: bytes) -> bytes:
        if not name.endswith(".npy"):
            return raw
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if not array.dtype.names or field not in array.dtype.names:
            return raw
        seen[0] += 1
        if seen[0] - 1 != which:
            return raw
        array = array.copy()
        change(array)
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()

    out = rewrite_zip(data, edit)
    assert seen[0] > which, f"no array with field {field!r}"
    return out


def edit_schema(data: bytes, change: Callable[[dict], None]) -> bytes:
    return rewrite_zip(
        data, lambda name, raw: json.dumps(_changed(json.loads(raw), change)).encode() if name == "schema.json" else raw
    )


def _changed(schema: dict, change: Callable[[dict], None]) -> dict:
    schema = copy.deepcopy(schema)
    change(schema)
    return schema


def nodes_of(schema: Any, cls: str) -> list[dict]:
    """Every node of the schema that builds an object of class ``cls``, in document order."""
    found: list[dict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("__class__") == cls:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def _json_node(schema: dict, value: Any) -> dict:
    """A schema node holding ``value`` as JSON, under an id no other node has (skops shares equal values by id)."""
    fresh = 10**6 + len(json.dumps(schema))
    return {
        "__class__": "str",
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
        "__id__": fresh,
    }


def set_value(schema: dict, cls: str, attr: str, value: Any, which: int = 0) -> None:
    """Set the attribute ``attr`` of the ``which``-th object of class ``cls`` to the plain ``value``."""
    nodes_of(schema, cls)[which]["content"]["content"][attr] = _json_node(schema, value)


def set_tree_arg(schema: dict, position: int, value: int, which: int = 0) -> None:
    """A ``Tree``'s constructor argument (n_features, n_classes, n_outputs)."""
    nodes_of(schema, "Tree")[which]["__reduce__"]["args"]["content"][position] = _json_node(schema, value)


def training_frame(n: int = 240) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.RandomState(7)
    X = pd.DataFrame(rng.rand(n, 4), columns=["a", "b", "c", "d"])
    y = ((X.a > 0.5) ^ (X.d > 0.4)).astype(int).to_numpy()
    return X, y


def categorical_frame(n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.RandomState(3)
    X = pd.DataFrame({"a": rng.rand(n), "c": pd.Categorical(rng.choice(list("wxyz"), n)), "b": rng.rand(n)})
    y = (X.c.isin(["x", "w"]) ^ (X.a > 0.7)).astype(int).to_numpy()
    return X, y


def model_of(kind: str) -> tuple[Any, pd.DataFrame]:
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeClassifier

    X, y = training_frame()
    if kind == "tree":
        return DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y), X
    if kind == "forest":
        return RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(X, y), X
    if kind == "boosting":
        y3 = (X.a * 3).astype(int).to_numpy()
        return GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y3), X
    if kind == "neighbours":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(algorithm="kd_tree", leaf_size=5).fit(X, y), X
    if kind == "histogram":
        Xc, yc = categorical_frame()
        return HistGradientBoostingClassifier(max_iter=3, categorical_features="from_dtype").fit(Xc, yc), Xc
    raise AssertionError(kind)


def _set(field: str, value: int, node: str = "root") -> Callable[[np.ndarray], None]:
    """Set ``field`` of one node record: the root, the second split node, or the first categorical split."""

    def change(array: np.ndarray) -> None:
        names = array.dtype.names or ()
        split = array["is_leaf"] == 0 if "is_leaf" in names else array["left_child"] != -1
        if node == "root":
            index = 0
        elif node == "second split":
            index = int(np.flatnonzero(split)[1])
        else:
            index = int(np.flatnonzero(split & (array["is_categorical"] != 0))[0])
        array[field][index] = value

    return change


def _same_child(array: np.ndarray) -> None:
    array["right_child"][0] = array["left_child"][0]


def _lonely_right(array: np.ndarray) -> None:
    leaf = int(np.flatnonzero(array["left_child"] == -1)[0])
    array["right_child"][leaf] = 1


# (model kind, how the skops bytes are crafted, what the error must say)
TREE_FAULTS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "child index 10**9": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _set("left_child", 10**9)),
        "node 0 has left child 1000000000",
    ),
    "negative child index": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _set("right_child", -7)),
        "node 0 has right child -7",
    ),
    "a cycle back to the root": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _set("left_child", 0, "second split")),
        "not a later node",
    ),
    "feature past the last column": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _set("feature", 10**6)),
        "splits on feature 1000000, but the model has 4",
    ),
    "negative feature on a split": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _set("feature", -2)),
        "splits on feature -2",
    ),
    # (A node_count past the stored nodes cannot be crafted: Tree.__setstate__ lowers it to the nodes stored.)
    "node_count that cuts the tree short": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_value(s, "Tree", "node_count", 1)),
        "node 0 has left child 1, not a later node of the 1",
    ),
    "max_depth below the depth reached": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_value(s, "Tree", "max_depth", 1)),
        "max_depth is 1, but",
    ),
    "max_depth that overflows decision_path": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_value(s, "Tree", "max_depth", 2**62)),
        "max_depth is 4611686018427387904",
    ),
    "one node the child of two": ("tree", lambda d: edit_arrays(d, "left_child", _same_child), "not of exactly one"),
    "a leaf with only a right child": (
        "tree",
        lambda d: edit_arrays(d, "left_child", _lonely_right),
        "has no left child but a right child",
    ),
    "tree built for fewer features": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_tree_arg(s, 0, 2)),
        r"n_features_in_ is 4, but its tree\(s\) are built for 2 feature",
    ),
    "estimator takes fewer columns than its tree splits": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_value(s, "DecisionTreeClassifier", "n_features_in_", 2)),
        r"n_features_in_ is 2, but its tree\(s\) are built for 4",
    ),
    "estimator without n_features_in_": (
        "tree",
        lambda d: edit_schema(
            d, lambda s: nodes_of(s, "DecisionTreeClassifier")[0]["content"]["content"].pop("n_features_in_")
        ),
        "n_features_in_ is None, not a count",
    ),
    "classes that do not match the tree": (
        "tree",
        lambda d: edit_schema(d, lambda s: set_value(s, "DecisionTreeClassifier", "n_classes_", 5)),
        "classes do not match",
    ),
    "forest takes fewer columns than its trees": (
        "forest",
        lambda d: edit_schema(d, lambda s: set_value(s, "RandomForestClassifier", "n_features_in_", 1)),
        r"estimators_\[0\] splits 4 feature\(s\), but is given 1",
    ),
    "a tree deep inside a forest": (
        "forest",
        lambda d: edit_arrays(d, "left_child", _set("left_child", 10**9), which=2),
        r"estimators_\[\d\]\.tree_ \(Tree\): node 0 has left child 1000000000",
    ),
    "boosting with fewer trees per stage than columns it adds": (
        "boosting",
        lambda d: edit_schema(d, lambda s: set_value(s, "GradientBoostingClassifier", "n_trees_per_iteration_", 1)),
        "3 trees per stage, but n_trees_per_iteration_ is 1",
    ),
    "histogram tree child index 10**6": (
        "histogram",
        lambda d: edit_arrays(d, "bitset_idx", _set("left", 10**6)),
        "node 0 has left child 1000000",
    ),
    "histogram tree feature past the last column": (
        "histogram",
        lambda d: edit_arrays(d, "bitset_idx", _set("feature_idx", 50)),
        "splits on feature_idx 50, but the model has 3",
    ),
    "histogram tree categorical bitset that does not exist": (
        "histogram",
        lambda d: edit_arrays(d, "bitset_idx", _set("bitset_idx", 99, "first categorical split")),
        "uses bitset 99",
    ),
    "histogram tree split by category on a numeric feature": (
        "histogram",
        lambda d: edit_arrays(d, "bitset_idx", _set("feature_idx", 2, "first categorical split")),
        "by category, but it is not categorical",
    ),
    "nearest-neighbour node holding points past the data": (
        "neighbours",
        lambda d: edit_arrays(d, "idx_start", _set("idx_end", 10**9)),
        r"_tree \(KDTree\): node 0 holds points 0 to 1000000000 of 240",
    ),
    "nearest-neighbour split whose children do not exist": (
        "neighbours",
        lambda d: edit_arrays(d, "idx_start", _all_split),
        "is not a leaf, but its children would lie past the",
    ),
}


def _all_split(array: np.ndarray) -> None:
    array["is_leaf"][:] = 0


@pytest.fixture(scope="module")
def saved() -> dict[str, tuple[dict[str, bytes], pd.DataFrame]]:
    """Each kind of model's artifact files, saved once for the module."""
    out = {}
    for kind in ("tree", "forest", "boosting", "histogram", "neighbours"):
        model, X = model_of(kind)
        out[kind] = (_saved_files(model), X)
    return out


@pytest.mark.parametrize("fault", list(TREE_FAULTS))
def test_a_crafted_tree_is_refused_on_load_naming_the_file_and_the_fault(fault: str, saved: dict) -> None:
    """Every fault here makes scikit-learn read or write outside its buffers on predict (or loop forever), yet the
    file holds only allow-listed types and the unchanged model loads and predicts."""
    kind, craft, says = TREE_FAULTS[fault]
    files, X = saved[kind]
    model = flavors.load(files, flavor="sklearn", what="models:/m/1")
    model.predict(X)  # the genuine file is fine
    crafted = {**files, "model.skops": craft(files["model.skops"])}
    with pytest.raises(IntegrityError) as refused:
        flavors.load(crafted, flavor="sklearn", what="models:/m/1")
    message = str(refused.value)
    assert message.startswith("models:/m/1: model.skops holds a malformed tree model: ")
    assert re.search(says, message), message
    assert "do not load it" in message


def test_a_crafted_tree_registered_as_a_skops_file_is_refused_by_every_loader(
    reg: Registry, root: Path, tmp_path: Path, saved: dict
) -> None:
    """The single-file format of earlier releases goes through the same checks, from the registry and from
    ``model_ops.load`` (which would otherwise hand the caller a model that segfaults on predict)."""
    files, _ = saved["tree"]
    crafted = TREE_FAULTS["child index 10**9"][1](files["model.skops"])
    mv = reg.register("evil", write_file(tmp_path, "model.skops", crafted))
    assert mv.flavor == "sklearn-skops"
    for load in (lambda: reg.load_model(mv.ref), lambda: load_model(mv.ref, root=root)):
        with pytest.raises(IntegrityError, match=r"models:/evil/1: its \.skops file holds a malformed tree model"):
            load()


# ---------------------------------------------------------------------------------------------------- archives


def _deep_schema(levels: int) -> bytes:
    node = '{"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {"x": '
    return (node * levels + "{}" + "}}" * levels).encode()


def _pickled_array(name: str, raw: bytes) -> bytes:
    if not name.endswith(".npy"):
        return raw
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _claims_to_expand(data: bytes) -> bytes:
    """A deflated archive whose directory says schema.json expands to 4 GiB (a compression bomb's shape)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    raw = bytearray(out.getvalue())
    at = raw.find(b"PK\x01\x02")  # central directory entries: uncompressed size at +24, name length at +28
    while at != -1:
        if raw[at + 46 : at + 46 + int.from_bytes(raw[at + 28 : at + 30], "little")] == b"schema.json":
            raw[at + 24 : at + 28] = (2**32 - 1).to_bytes(4, "little")
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def _without_schema(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != "schema.json":
                dst.writestr(info, src.read(info))
    return out.getvalue()


ARCHIVE_FAULTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not a zip": (lambda d: b"hello, not a zip", "BadZipFile"),
    "truncated": (lambda d: d[: len(d) // 2], "BadZipFile"),
    "empty": (lambda d: b"", "BadZipFile"),
    "no schema": (_without_schema, "There is no item named 'schema.json'"),
    "schema nested 10,000 levels deep": (
        lambda d: rewrite_zip(d, lambda n, r: _deep_schema(5000) if n == "schema.json" else r),
        "RecursionError",
    ),
    "schema that is not JSON": (
        lambda d: rewrite_zip(d, lambda n, r: b'{"__class__": ' if n == "schema.json" else r),
        "JSONDecodeError",
    ),
    "a pickle inside an array file": (lambda d: rewrite_zip(d, _pickled_array), "allow_pickle=False"),
    "a directory that claims 4 GiB": (_claims_to_expand, "claim to expand to"),
}


@pytest.mark.parametrize("fault", list(ARCHIVE_FAULTS))
def test_an_archive_skops_cannot_read_is_an_integrity_error_naming_the_file(fault: str, saved: dict) -> None:
    craft, says = ARCHIVE_FAULTS[fault]
    files, _ = saved["tree"]
    crafted = {**files, "model.skops": craft(files["model.skops"])}
    with pytest.raises(IntegrityError) as refused:
        flavors.load(crafted, flavor="sklearn", what="models:/m/1")
    message = str(refused.value)
    assert message.startswith("models:/m/1: model.skops is not a valid scikit-learn (skops) artifact: "), message
    assert says in message, message
    # The single-file format of earlier releases says the same.
    with pytest.raises(IntegrityError, match=re.escape(says)):
        sklearn_io.loads(crafted["model.skops"])


@pytest.mark.slow
def test_a_deep_schema_is_refused_even_with_a_raised_recursion_limit(saved: dict) -> None:
    """With the limit raised, skops would recurse until the C stack overflows (a segmentation fault): the depth is
    measured without recursion before anything parses the schema."""
    files, _ = saved["tree"]
    crafted = rewrite_zip(files["model.skops"], lambda n, r: _deep_schema(40_000) if n == "schema.json" else r)
    code = (
        "import sys; sys.setrecursionlimit(10**6)\n"
        "from model_ops.artifacts import sklearn_io\n"
        "from model_ops.errors import IntegrityError\n"
        "try:\n"
        "    sklearn_io.loads(sys.stdin.buffer.read())\n"
        "except IntegrityError as e:\n"
        "    print('refused:', e.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=crafted, capture_output=True, timeout=300, cwd=ROOT, env=_env()
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"refused:" in done.stdout and b"RecursionError" in done.stdout


def test_a_preprocessing_file_and_flavor_json_are_checked_too(tmp_path: Path) -> None:
    from model_ops_tests.test_flavors import fitted

    model, X = fitted("xgboost classifier")
    flavors.save(model, tmp_path / "a")
    files = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    crafted = {**files, "preprocess.skops": files["preprocess.skops"][:100]}
    with pytest.raises(IntegrityError, match=r"^models:/x/1: preprocess\.skops is not a valid scikit-learn"):
        flavors.load(crafted, flavor="xgboost", what="models:/x/1")
    deep = {**files, "flavor.json": b"[" * 100_000 + b"]" * 100_000}
    with pytest.raises(IntegrityError, match=r"models:/x/1: its flavor\.json is not valid"):
        flavors.load(deep, flavor="xgboost", what="models:/x/1")


# ---------------------------------------------------------------------------------------------------- boosters


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_worker(function: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``function`` of this module in a fresh interpreter: a crafted file that gets past the checks may crash
    the process, which must fail the test, not the test run."""
    code = f"import sys; from model_ops_tests.test_crafted_models import {function}; {function}(*sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env()
    )


def _report(case: str, outcome: str, detail: str = "") -> None:
    print(json.dumps({"case": case, "outcome": outcome, "detail": detail[:400]}), flush=True)


def _outcomes(done: subprocess.CompletedProcess) -> dict[str, dict]:
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            results[entry["case"]] = entry
    return results


def _xgboost_cases() -> dict[str, Callable[[dict], None]]:
    def tree(doc: dict, i: int = 0) -> dict:
        booster = doc["learner"]["gradient_booster"]
        return (booster.get("model") or booster["gbtree"]["model"])["trees"][i]

    def internal(t: dict) -> int:
        return next(i for i, c in enumerate(t["left_children"]) if c != -1 and i > 0)

    def model(doc: dict) -> dict:
        return doc["learner"]["gradient_booster"]["model"]

    return {
        "child index 10**9": lambda d: tree(d)["left_children"].__setitem__(0, 10**9),
        "negative child index": lambda d: tree(d)["right_children"].__setitem__(0, -5),
        "a cycle back to the root": lambda d: tree(d)["left_children"].__setitem__(internal(tree(d)), 0),
        "feature past the last column": lambda d: tree(d)["split_indices"].__setitem__(0, 10**6),
        "parent index 10**9": lambda d: tree(d)["parents"].__setitem__(1, 10**9),
        "output group that does not exist": lambda d: model(d)["tree_info"].__setitem__(0, 10**6),
        "iterations out of order": lambda d: model(d).__setitem__("iteration_indptr", [0, 3, 0, 3]),
    }


def _xgboost_categorical_cases() -> dict[str, Callable[[dict], None]]:
    def tree(doc: dict) -> dict:
        return next(t for t in doc["learner"]["gradient_booster"]["model"]["trees"] if t.get("categories_nodes"))

    def cats(doc: dict) -> dict:
        return doc["learner"]["gradient_booster"]["model"]["cats"]

    def string_feature(doc: dict) -> dict:
        return next(e for e in cats(doc)["enc"] if e.get("offsets"))

    return {
        "categories past their array": lambda d: tree(d)["categories_segments"].__setitem__(0, 10**5),
        "category count past the array": lambda d: tree(d)["categories_sizes"].__setitem__(0, 10**5),
        "negative category": lambda d: tree(d)["categories"].__setitem__(0, -5),
        "category offsets past the bytes": lambda d: string_feature(d)["offsets"].__setitem__(-1, 300),
        "category order past the categories": lambda d: cats(d)["sorted_idx"].__setitem__(-1, 10**5),
    }


def _xgboost_worker() -> None:
    """Genuine XGBoost models of each kind load and predict as fitted; every crafted variant is refused."""
    import xgboost

    X, y = training_frame()
    Xc, yc = categorical_frame()
    y3 = (X.a * 3).astype(int).to_numpy()
    variants = {
        "binary": (xgboost.XGBClassifier(n_estimators=3, max_depth=3), X, y),
        "multiclass": (xgboost.XGBClassifier(n_estimators=2, max_depth=2), X, y3),
        "categorical": (xgboost.XGBClassifier(n_estimators=2, max_depth=2, enable_categorical=True), Xc, yc),
        "dart": (xgboost.XGBClassifier(n_estimators=2, max_depth=2, booster="dart"), X, y),
        "linear": (xgboost.XGBClassifier(n_estimators=2, booster="gblinear"), X, y),
        "multi-target": (
            xgboost.XGBRegressor(n_estimators=2, max_depth=2, multi_strategy="multi_output_tree"),
            X,
            np.c_[X.a, X.b],
        ),
        "one-leaf trees": (xgboost.XGBRegressor(n_estimators=2, gamma=1e9), X, X.a.to_numpy()),
    }
    fitted = {}
    for name, (est, Xv, yv) in variants.items():
        est.fit(Xv, yv)
        files = _saved_files(est)
        loaded = flavors.load(files, flavor="xgboost", what="models:/x/1")
        same = np.array_equal(loaded.predict(Xv), est.predict(Xv))
        _report(f"genuine {name}", "loaded" if same else "predicts differently")
        fitted[name] = (files, Xv)
    cases = {("binary", k): v for k, v in _xgboost_cases().items()}
    cases |= {("multiclass", "output group that does not exist"): _xgboost_cases()["output group that does not exist"]}
    cases |= {("categorical", k): v for k, v in _xgboost_categorical_cases().items()}
    cases[("dart", "dart weights fewer than trees")] = lambda d: d["learner"]["gradient_booster"].__setitem__(
        "weight_drop", [1.0]
    )
    cases[("linear", "linear weights fewer than features")] = lambda d: d["learner"]["gradient_booster"]["model"][
        "weights"
    ].pop()
    cases[("multi-target", "leaf vector that does not exist")] = _multi_target_leaf
    for (name, case), change in cases.items():
        files, Xv = fitted[name]
        doc = json.loads(files["model.json"])
        change(doc)
        _try_load(f"{name}: {case}", {**files, "model.json": json.dumps(doc).encode()}, "xgboost", Xv)
    files, Xv = fitted["binary"]
    # Read one way here and another by XGBoost's parser, if it were let through.
    twice = files["model.json"].replace(b'"left_children":', b'"left_children":[1000000000],"left_children":', 1)
    _try_load("binary: a key given twice", {**files, "model.json": twice}, "xgboost", Xv)
    # XGBoost's binary JSON, which it would load without any of these checks.
    binary = bytes(variants["binary"][0].get_booster().save_raw("ubj"))
    _try_load("binary: UBJSON instead of JSON", {**files, "model.json": binary}, "xgboost", Xv)


def _multi_target_leaf(doc: dict) -> None:
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    leaf = tree["left_children"].index(-1)
    tree["right_children"][leaf] = 10**6


def _lightgbm_cases() -> dict[str, Callable[[str], str]]:
    def field(key: str, change: Callable[[list[str]], list[str]]) -> Callable[[str], str]:
        def edit(text: str) -> str:
            def one(match: re.Match) -> str:
                return match.group(1) + " ".join(change(match.group(2).split(" ")))

            return re.sub(rf"^({key}=)(.*)$", one, text, count=1, flags=re.MULTILINE)

        return edit

    def without_tree_sizes(change: Callable[[str], str]) -> Callable[[str], str]:
        """Crafts that keep the tree offsets honest, so only the crafted field is wrong."""
        return lambda text: _fix_tree_sizes(change(text))

    return {
        "child index 10**9": without_tree_sizes(field("left_child", lambda v: ["1000000000", *v[1:]])),
        "leaf index past the leaves": without_tree_sizes(field("right_child", lambda v: ["-1000", *v[1:]])),
        "a cycle back to the root": without_tree_sizes(field("left_child", lambda v: [v[0], "0", *v[2:]])),
        "feature past the last column": without_tree_sizes(field("split_feature", lambda v: ["1000000", *v[1:]])),
        "more classes than trees per iteration": without_tree_sizes(field("num_class", lambda v: ["5"])),
        "tree offsets that are wrong": field("tree_sizes", lambda v: [str(int(v[0]) + 7), *v[1:]]),
        "tree offsets past the end": field("tree_sizes", lambda v: [str(10**9), *v[1:]]),
        "a tree line without '='": without_tree_sizes(lambda t: t.replace("\nshrinkage=1", "\nshrinkage 1", 1)),
        "a tree without leaf values": without_tree_sizes(lambda t: re.sub(r"\nleaf_value=[^\n]*", "", t, count=1)),
        "a NUL byte": lambda t: t.replace("num_leaves=", "num_leaves=\x00", 1),
        "no end of trees": lambda t: t[: t.index("end of trees")],
    }


def _fix_tree_sizes(text: str) -> str:
    start = text.index("Tree=")
    end = text.index("end of trees")
    blocks = re.split(r"(?=^Tree=)", text[start:end], flags=re.MULTILINE)
    sizes = " ".join(str(len(b.encode())) for b in blocks if b)
    return re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", text, count=1, flags=re.MULTILINE)


def _lightgbm_worker() -> None:
    """Genuine LightGBM models of each kind load and predict as fitted; every crafted variant is refused."""
    import lightgbm

    X, y = training_frame()
    Xc, yc = categorical_frame()
    y3 = (X.a * 3).astype(int).to_numpy()
    quiet: dict[str, Any] = {"verbose": -1, "n_estimators": 3, "num_leaves": 6}
    variants = {
        "binary": (lightgbm.LGBMClassifier(**quiet), X, y),
        "multiclass": (lightgbm.LGBMClassifier(**quiet), X, y3),
        "categorical": (lightgbm.LGBMClassifier(**quiet, min_data_per_group=5, cat_smooth=1), Xc, yc),
        "linear": (lightgbm.LGBMRegressor(**quiet, linear_tree=True), X, X.a.to_numpy()),
        "random forest": (
            lightgbm.LGBMClassifier(**quiet, boosting_type="rf", bagging_freq=1, bagging_fraction=0.5),
            X,
            y,
        ),
        "one-leaf trees": (lightgbm.LGBMRegressor(**quiet, min_child_samples=10_000), X, X.a.to_numpy()),
    }
    fitted = {}
    for name, (est, Xv, yv) in variants.items():
        est.fit(Xv, yv)
        files = _saved_files(est)
        loaded = flavors.load(files, flavor="lightgbm", what="models:/l/1")
        same = np.allclose(loaded.predict(Xv), est.predict(Xv))
        _report(f"genuine {name}", "loaded" if same else "predicts differently")
        fitted[name] = (files, Xv)
    cases = {("binary", k): v for k, v in _lightgbm_cases().items()}
    cases[("categorical", "categorical bitset that does not exist")] = lambda t: _fix_tree_sizes(_bitset_past(t))
    cases[("multiclass", "fewer classes than trees per iteration")] = lambda t: _fix_tree_sizes(
        t.replace("num_class=3", "num_class=2", 1)
    )
    for (name, case), change in cases.items():
        files, Xv = fitted[name]
        text = files["model.txt"].decode()
        crafted = change(text)
        assert crafted != text, case
        _try_load(f"{name}: {case}", {**files, "model.txt": crafted.encode()}, "lightgbm", Xv)


def _bitset_past(text: str) -> str:
    """The first categorical split of the model made to use a bitset past the tree's own."""
    for block in re.split(r"(?=^Tree=)", text, flags=re.MULTILINE):
        kinds = re.search(r"^decision_type=(.*)$", block, flags=re.MULTILINE)
        if not kinds or not any(int(k) & 1 for k in kinds.group(1).split()):
            continue
        node = next(i for i, k in enumerate(kinds.group(1).split()) if int(k) & 1)
        line = re.search(r"^threshold=(.*)$", block, flags=re.MULTILINE)
        assert line is not None
        values = line.group(1).split(" ")
        values[node] = "7"
        changed = block.replace(line.group(0), "threshold=" + " ".join(values), 1)
        return text.replace(block, changed, 1)
    raise AssertionError("no categorical split")


def _saved_files(est: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        flavors.save(est, Path(tmp) / "a")
        return {p.name: p.read_bytes() for p in (Path(tmp) / "a").iterdir()}


def _try_load(case: str, files: dict[str, bytes], flavor: str, X: Any) -> None:
    try:
        model = flavors.load(files, flavor=flavor, what="models:/m/1")
    except IntegrityError as e:
        _report(case, "IntegrityError", e.message)
        return
    except Exception as e:
        _report(case, type(e).__name__, str(e))
        return
    _report(case, "loaded")
    try:
        model.predict(X)  # shows what the crafted file would have done
        _report(case, "loaded and predicted")
    except Exception as e:
        _report(case, f"loaded, then predict raised {type(e).__name__}", str(e))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_crafted_booster_files_are_refused_before_the_framework_reads_them(framework: str) -> None:
    """XGBoost and LightGBM check only array sizes: these files crash the process (segmentation fault on load or
    predict, an abort from LightGBM's parser threads), hang it, or read memory never written."""
    done = _run_worker(f"_{framework}_worker")
    results = _outcomes(done)
    assert done.returncode == 0, (
        f"the worker died ({done.returncode}) after {list(results)[-1:]}: {done.stderr[-3000:]}"
    )
    genuine = {k: v["outcome"] for k, v in results.items() if k.startswith("genuine")}
    assert genuine and set(genuine.values()) == {"loaded"}, genuine
    crafted = {k: v for k, v in results.items() if not k.startswith("genuine")}
    assert len(crafted) >= 9
    wrong = {k: v["outcome"] for k, v in crafted.items() if v["outcome"] != "IntegrityError"}
    assert not wrong, wrong
    name = "model.json" if framework == "xgboost" else "model.txt"
    label = "XGBoost" if framework == "xgboost" else "LightGBM"
    for case, entry in crafted.items():
        assert entry["detail"].startswith(f"models:/m/1: {name} is not a valid {label} model: "), (case, entry)


# ---------------------------------------------------------------------------------------------------- fuzzing


def _fuzz_worker(flavor: str, count: str, seed: str) -> None:
    """Truncations and byte flips of a genuine artifact's model file, both of the raw bytes and (for skops) of the
    entries inside the archive with valid CRCs; every mutant either loads and predicts, or is refused with a
    ModelOpsError. Anything else is reported; a crash kills this worker, which the test sees."""
    rng = np.random.default_rng(int(seed))
    if flavor == "sklearn":
        genuine = [(_saved_files(m), X) for m, X in map(model_of, ("histogram", "forest", "neighbours"))]
        name = "model.skops"
    else:
        import lightgbm
        import xgboost

        Xc, yc = categorical_frame()
        if flavor == "xgboost":
            est: Any = xgboost.XGBClassifier(n_estimators=3, max_depth=3, enable_categorical=True).fit(Xc, yc)
            name = "model.json"
        else:
            est = lightgbm.LGBMClassifier(n_estimators=3, num_leaves=6, verbose=-1, min_data_per_group=5).fit(Xc, yc)
            name = "model.txt"
        genuine = [(_saved_files(est), Xc)]
    for i in range(int(count)):
        files, X = genuine[i % len(genuine)]
        data = files[name]
        how = rng.integers(0, 4)
        if how == 0:
            cut = int(rng.integers(0, len(data)))
            mutant, case = data[:cut], f"{i}: truncated at {cut}"
        elif how == 1 or flavor != "sklearn":
            mutant, case = _flipped(data, rng, printable=bool(flavor != "sklearn" and how >= 2))
            case = f"{i}: {case}"
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entries = archive.namelist()
            entry = "schema.json" if how == 2 else entries[int(rng.integers(0, len(entries)))]
            inner: dict[str, str] = {}

            def flip(n: str, raw: bytes, entry: str = entry, inner: dict[str, str] = inner) -> bytes:
                if n != entry:
                    return raw
                out, inner["case"] = _flipped(raw, rng, printable=entry == "schema.json")
                return out

            mutant = rewrite_zip(data, flip)
            case = f"{i}: {entry}: {inner['case']}"
        _fuzz_one(case, {**files, name: mutant}, flavor, X)
    print(json.dumps({"case": "done", "outcome": "done", "detail": ""}), flush=True)


def _flipped(data: bytes, rng: np.random.Generator, printable: bool) -> tuple[bytes, str]:
    """One to three bytes changed. In text formats mostly a digit becomes another digit or a sign, which keeps the
    file parseable and changes a number in it (an index, a count), else any byte becomes a character of the
    format's syntax; elsewhere a random bit flips."""
    mutant = bytearray(data)
    digits = np.flatnonzero(np.isin(np.frombuffer(data, dtype=np.uint8), np.frombuffer(b"0123456789", np.uint8)))
    flips = []
    for _ in range(int(rng.integers(1, 4))):
        if printable and len(digits) and rng.random() < 0.7:
            at = int(rng.choice(digits))
            value = int(rng.choice(np.frombuffer(b"0123456789-", dtype=np.uint8)))
        elif printable:
            at = int(rng.integers(0, len(mutant)))
            value = int(rng.choice(np.frombuffer(b'0123456789-=., \n[]{}":e', dtype=np.uint8)))
        else:
            at = int(rng.integers(0, len(mutant)))
            value = mutant[at] ^ (1 << int(rng.integers(0, 8)))
        mutant[at] = value
        flips.append(f"{at}={value}")
    return bytes(mutant), "byte(s) " + ",".join(flips)


def _fuzz_one(case: str, files: dict[str, bytes], flavor: str, X: Any) -> None:
    try:
        model = flavors.load(files, flavor=flavor, what="models:/f/1")
    except ModelOpsError:
        return
    except Exception as e:
        _report(case, f"raw {type(e).__name__}", str(e))
        return
    print(json.dumps({"case": case, "outcome": "predicting", "detail": ""}), flush=True)
    try:
        model.predict(X)
    except Exception as e:  # a changed threshold or count may make predict refuse X: not the loader's concern
        _report(case, "loaded; predict raised", f"{type(e).__name__}: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["sklearn", "xgboost", "lightgbm"])
def test_fuzzed_model_files_never_crash_the_loader_or_escape_as_raw_errors(flavor: str) -> None:
    done = _run_worker("_fuzz_worker", flavor, "600", "11", timeout=900)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    last = lines[-1] if lines else None
    assert done.returncode == 0 and last and last["case"] == "done", (
        f"the fuzz worker died ({done.returncode}) at {last}: {done.stderr[-3000:]}"
    )
    raw = [entry for entry in lines if entry["outcome"].startswith("raw")]
    assert not raw, raw[:5]


# ---------------------------------------------------------------------------------------------------- teardown

# A library user's script: load the champion, predict, exit normally. The storage of the registry's event log is
# made slow to close files (as object storage can be): an Arrow worker that releases a file after its scan has
# returned then still holds it when the script ends, which is the race behind the abort at exit, widened from a
# few milliseconds to half a second.
_USER_SCRIPT = """
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.fs import DeltaStorageHandler

import model_ops

scans = {"started": 0, "returned": set()}


class Scan:
    def __init__(self, dataset):
        self._dataset = dataset

    def to_table(self, *args, **kwargs):
        scans["started"] += 1
        scan = scans["started"]
        try:
            return self._dataset.to_table(*args, **kwargs)
        finally:
            scans["returned"].add(scan)

    def __getattr__(self, name):
        return getattr(self._dataset, name)


class SlowClose:
    def __init__(self, file):
        self._file, self._scan = file, scans["started"]

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __del__(self):
        if self._scan in scans["returned"]:  # released by an Arrow worker after its scan returned
            time.sleep(0.5)


if sys.argv[3] == "slow":
    dataset = DeltaTable.to_pyarrow_dataset
    DeltaTable.to_pyarrow_dataset = lambda self, *a, **k: Scan(dataset(self, *a, **k))
    DeltaStorageHandler.open_input_file = lambda self, path: pa.PythonFile(
        SlowClose(self._handler.open_input_file(path))
    )
if sys.argv[4] == "load":
    model = model_ops.load("models:/churn@champion", root=sys.argv[1])
else:
    from model_ops.registry import Registry

    model = Registry.open(sys.argv[1]).load_model("models:/churn@champion")
print(model.predict(pd.DataFrame(np.random.RandomState(1).rand(3, 4), columns=list("abcd"))).tolist())
"""
TEARDOWN_RUNS = 30


@pytest.mark.slow
def test_a_script_that_loads_a_model_exits_cleanly_every_time(tmp_path: Path) -> None:
    """Before the drain at exit (``model_ops._drain_arrow_threads``), about 3 runs in 10 of this script aborted
    after printing its predictions: exit 134, "terminate called without an active exception"."""
    from sklearn.ensemble import RandomForestClassifier

    root = tmp_path / "root"
    reg = Registry.open(root, actor="tester")
    X, y = training_frame()
    for seed in range(12):  # a dozen commits: a dozen files for each scan of the event log
        mv = reg.register_model("churn", RandomForestClassifier(n_estimators=3, random_state=seed).fit(X, y))
    reg.transition(mv.ref, "staging", reason="evaluated")
    reg.transition(mv.ref, "production", reason="better")
    script = write_file(tmp_path, "user.py", _USER_SCRIPT.encode())
    failed = []
    for run in range(TEARDOWN_RUNS):
        how = "load" if run % 2 == 0 else "load_model"
        done = subprocess.run(
            [sys.executable, str(script), str(root), "churn", "slow", how],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=_env(),
        )
        if done.returncode != 0 or not done.stdout.strip().startswith("["):
            failed.append((run, how, done.returncode, done.stderr.strip()[-300:]))
    assert not failed, f"{len(failed)} of {TEARDOWN_RUNS} runs did not exit cleanly: {failed[:3]}"
