"""Structural checks of XGBoost and LightGBM model files before their own loaders see them.

Neither library checks what its model file holds beyond the sizes of its arrays. A crafted XGBoost JSON model
with a child index of 10**9, a feature index past the last column, a parent index out of range, a categorical
split whose categories lie outside their array, a tree whose output group does not exist, or a category recoder
whose offsets run past its values crashes the process, on load or on the first predict; a cycle of child indices
hangs it. LightGBM's text parser is worse: it scans for ``=`` and for tree boundaries without any bound, it parses
trees on OpenMP threads where its own "model format error" cannot be raised as an exception and aborts the process
(exit 134, ``terminate called without an active exception``), and a model whose class count is larger than its
trees per iteration reads memory it never wrote.

So the bytes are checked here first, against the format each library writes: every tree is one tree (each child
a later or unvisited node that no other node claims, so every walk ends), every index points inside its array, and
the counts that size prediction buffers agree. For LightGBM, :func:`lightgbm_text` also returns the text without
its ``tree_sizes`` line, which makes LightGBM parse the trees one after the other on the calling thread, where any
fault it still finds is an ordinary exception.
"""

from __future__ import annotations

import json
import re
from typing import Any

from model_ops.artifacts.sklearn_io import json_depth


class Malformed(Exception):
    """What is wrong with a model file, in words."""


# ---------------------------------------------------------------------------------------------------- XGBoost

_MAX_JSON_DEPTH = 32  # XGBoost's own JSON models nest 8 levels
_INT32 = 2**31
_UINT32 = 2**32
_COUNT = re.compile(r"^\d{1,10}$")
_JSON_OBJECT = re.compile(rb'^\s*\{\s*("|\})')


def xgboost_json(data: bytes) -> None:
    """Check an XGBoost model in its JSON format (what the ``xgboost`` flavor writes); raise :class:`Malformed`."""
    if not _JSON_OBJECT.match(data):  # UBJSON, XGBoost's other format, starts with "{" too
        raise Malformed("it is not an XGBoost model in JSON (the format model_ops writes)")
    if json_depth(data) > _MAX_JSON_DEPTH:
        raise Malformed(f"it nests deeper than the {_MAX_JSON_DEPTH} levels of any XGBoost model")
    try:
        doc = json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"it is not valid JSON: {str(e)[:200]}") from None
    learner = _object(doc, "learner")
    param = _object(learner, "learner_model_param")
    n_features = _count(param, "num_feature")
    n_groups = max(_count(param, "num_class"), _count(param, "num_target", 1), 1)
    for key in ("feature_names", "feature_types"):
        names = learner.get(key, [])
        if not isinstance(names, list) or len(names) not in (0, n_features):
            raise Malformed(f"learner.{key} does not name its {n_features} features")
    booster = _object(learner, "gradient_booster")
    name = booster.get("name")
    if name == "gbtree":
        _gbtree(_object(booster, "model"), n_features, n_groups)
    elif name == "dart":
        n_trees = _gbtree(_object(_object(booster, "gbtree"), "model"), n_features, n_groups)
        drops = booster.get("weight_drop")
        if not isinstance(drops, list) or len(drops) != n_trees or not all(_is_number(w) for w in drops):
            raise Malformed(f"the dart booster's weight_drop is not {n_trees} weights, one per tree")
    elif name == "gblinear":
        weights = _object(booster, "model").get("weights")
        expected = (n_features + 1) * n_groups
        if not isinstance(weights, list) or len(weights) != expected or not all(_is_number(w) for w in weights):
            raise Malformed(f"the linear booster's weights are not {expected} numbers")
    else:
        raise Malformed(f"its booster is {name!r}, not gbtree, dart or gblinear")


def _gbtree(model: dict, n_features: int, n_groups: int) -> int:
    """The trees of a gbtree model; returns their number."""
    param = _object(model, "gbtree_model_param")
    n_trees = _count(param, "num_trees")
    if _count(param, "num_parallel_tree", 1) < 1:
        raise Malformed("num_parallel_tree is 0")
    trees, info = model.get("trees"), model.get("tree_info")
    if not isinstance(trees, list) or len(trees) != n_trees:
        raise Malformed(f"it declares {n_trees} trees but holds {len(trees) if isinstance(trees, list) else 0}")
    if not _ints(info, len(trees), 0, n_groups):
        raise Malformed(f"tree_info does not give each of the {n_trees} trees one of the {n_groups} output groups")
    indptr = model.get("iteration_indptr")
    if indptr is not None and not (
        _ints(indptr, None, 0, n_trees + 1)
        and indptr
        and indptr[0] == 0
        and indptr[-1] == n_trees
        and all(a <= b for a, b in zip(indptr, indptr[1:], strict=False))
    ):
        raise Malformed(f"iteration_indptr does not split the {n_trees} trees into iterations")
    for i, tree in enumerate(trees):
        try:
            _xgboost_tree(tree, n_features)
        except Malformed as e:
            raise Malformed(f"tree {i}: {e}") from None
    if "cats" in model:
        _category_recoder(_object(model, "cats"), n_features)
    return n_trees


def _xgboost_tree(tree: Any, n_features: int) -> None:
    if not isinstance(tree, dict):
        raise Malformed("it is not an object")
    param = _object(tree, "tree_param")
    n = _count(param, "num_nodes")
    leaf_size = _count(param, "size_leaf_vector", 1)
    n_deleted = _count(param, "num_deleted", 0)
    if n < 1:
        raise Malformed("it has no nodes")
    left, right, parents = (
        _int_list(tree, k, n, -_INT32, _INT32) for k in ("left_children", "right_children", "parents")
    )
    split = _int_list(tree, "split_indices", n, 0, _UINT32)
    for key in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
        values = tree.get(key)
        expected = n * leaf_size if key == "base_weights" and leaf_size > 1 else n
        if key in tree or key == "split_conditions":
            if not isinstance(values, list) or len(values) != expected or not all(_is_number(v) for v in values):
                raise Malformed(f"{key} is not {expected} numbers")
    _int_list(tree, "default_left", n, 0, 2)
    split_type = _int_list(tree, "split_type", n, 0, 2) if "split_type" in tree else [0] * n
    if any(not 0 <= p < n for p in parents[1:]):
        raise Malformed("a node's parent index lies outside the tree")
    # Walk from the root: each child must be a node not seen yet, so the walk ends and no node has two parents.
    seen = [False] * n
    seen[0] = True
    stack, internal, leaves = [0], [], []
    while stack:
        node = stack.pop()
        if left[node] == -1:
            leaves.append(node)
            continue
        internal.append(node)
        for child in (left[node], right[node]):
            if not 0 < child < n or seen[child]:
                raise Malformed(f"node {node} has child {child}, outside the {n} nodes or already reached")
            if parents[child] != node:
                raise Malformed(f"node {child} is the child of node {node} but names parent {parents[child]}")
            seen[child] = True
            stack.append(child)
        if split[node] >= n_features:
            raise Malformed(f"node {node} splits on feature {split[node]}, but the model has {n_features}")
    if n - sum(seen) != n_deleted:
        raise Malformed(f"{n - sum(seen)} of its nodes cannot be reached, but it declares {n_deleted} deleted")
    if leaf_size > 1:
        weights = tree.get("leaf_weights")
        if not isinstance(weights, list) or len(weights) % leaf_size or not all(_is_number(w) for w in weights):
            raise Malformed(f"leaf_weights is not a list of vectors of {leaf_size} numbers")
        if any(not 0 <= right[node] < len(weights) // leaf_size for node in leaves):
            raise Malformed("a leaf names a leaf vector that does not exist")
    elif any(right[node] != -1 for node in leaves):
        raise Malformed("a leaf has a right child")
    _categorical_splits(tree, n, split_type, internal)


def _categorical_splits(tree: dict, n: int, split_type: list[int], internal: list[int]) -> None:
    nodes = _int_list(tree, "categories_nodes", None, 0, n) if "categories_nodes" in tree else []
    if any(a >= b for a, b in zip(nodes, nodes[1:], strict=False)):
        raise Malformed("categories_nodes is not in increasing order")
    if sorted(i for i in internal if split_type[i] == 1) != [i for i in nodes if i in set(internal)]:
        raise Malformed("the nodes with categorical splits are not the ones that list categories")
    if any(split_type[i] != 1 for i in nodes):
        raise Malformed("a node lists categories but does not split on a category")
    categories = _int_list(tree, "categories", None, 0, _INT32) if nodes else []
    starts = _int_list(tree, "categories_segments", len(nodes), 0, len(categories) + 1) if nodes else []
    sizes = _int_list(tree, "categories_sizes", len(nodes), 1, len(categories) + 1) if nodes else []
    for node, start, size in zip(nodes, starts, sizes, strict=True):
        if start + size > len(categories):
            raise Malformed(f"node {node}'s categories run past the end of the {len(categories)} listed")


def _category_recoder(cats: dict, n_features: int) -> None:
    """``cats``: the categories each feature was trained with, which XGBoost uses to recode the categories of the
    frames it predicts on. Each feature's categories are either strings (UTF-8 bytes cut at ``offsets``) or
    numbers; ``feature_segments`` and ``sorted_idx`` index them."""
    encodings = cats.get("enc", [])
    if not isinstance(encodings, list) or len(encodings) not in (0, n_features):
        raise Malformed(f"its category recoder does not cover the {n_features} features")
    counts = []
    for f, enc in enumerate(encodings):
        if not isinstance(enc, dict) or not isinstance(enc.get("values"), list):
            raise Malformed(f"the categories of feature {f} are not a list")
        offsets, values = enc.get("offsets") or [], enc["values"]
        if offsets:
            if not (_ints(offsets, None, 0, len(values) + 1) and offsets[0] == 0 and offsets[-1] == len(values)) or any(
                a > b for a, b in zip(offsets, offsets[1:], strict=False)
            ):
                raise Malformed(f"the offsets of feature {f}'s categories do not cut its {len(values)} bytes")
            if not _ints(values, None, 0, 256):
                raise Malformed(f"the categories of feature {f} are not bytes")
            counts.append(len(offsets) - 1)
        elif "offsets" in enc and values:
            raise Malformed(f"feature {f} has category bytes but no offsets")
        else:
            if not all(_is_number(v) for v in values):
                raise Malformed(f"the categories of feature {f} are not numbers")
            counts.append(len(values))
    segments = cats.get("feature_segments", [])
    order = cats.get("sorted_idx", [])
    if not encodings:
        if segments or order:
            raise Malformed("its category recoder has indices but no categories")
        return
    if not _ints(segments, len(encodings) + 1, 0, _INT32) or segments[0] != 0:
        raise Malformed("feature_segments does not delimit the features' categories")
    if [b - a for a, b in zip(segments, segments[1:], strict=False)] != counts or not _ints(
        order, segments[-1], 0, _INT32
    ):
        raise Malformed("feature_segments and sorted_idx do not match the features' categories")
    for f, (a, b) in enumerate(zip(segments, segments[1:], strict=False)):
        if sorted(order[a:b]) != list(range(b - a)):
            raise Malformed(f"sorted_idx is not an ordering of feature {f}'s {b - a} categories")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects without repeated keys: a repeated key could be read one way here and another by XGBoost."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _object(doc: Any, key: str) -> dict:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise Malformed(f"it has no {key!r} object")
    return value


def _count(param: dict, key: str, default: int | None = None) -> int:
    """A count XGBoost writes as a decimal string ("3")."""
    value = param.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, str) and _COUNT.match(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _INT32:
        return value
    raise Malformed(f"{key} is {value!r}, not a count")


def _int_list(doc: dict, key: str, length: int | None, low: int, high: int) -> list[int]:
    values = doc.get(key)
    if not _ints(values, length, low, high):
        size = "" if length is None else f"{length} "
        raise Malformed(f"{key} is not {size}integers in [{low}, {high})")
    return values  # type: ignore[return-value]


def _ints(values: Any, length: int | None, low: int, high: int) -> bool:
    return (
        isinstance(values, list)
        and (length is None or len(values) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and low <= v < high for v in values)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------- LightGBM

_INT = r"-?\d{1,10}"
_FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)"
_IS_INT = re.compile(rf"^{_INT}$")
_IS_FLOAT = re.compile(rf"^{_FLOAT}$", re.IGNORECASE)
_HEADER_KEY = re.compile(r"^[a-z_]+$")
_PARAMETER = re.compile(r"^\[[a-z_0-9]+: .*\]$")
# LightGBM reads at most this many lines of one tree (max_num_line in its Tree parser).
_MAX_TREE_LINES = 22
_PER_NODE = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child")
_PER_INTERNAL = ("internal_value", "internal_weight", "internal_count")
_PER_LEAF = ("leaf_value", "leaf_weight", "leaf_count", "leaf_const", "num_features")
_TREE_KEYS = frozenset(
    {
        "num_leaves",
        "num_cat",
        *_PER_NODE,
        *_PER_INTERNAL,
        *_PER_LEAF,
        "cat_boundaries",
        "cat_threshold",
        "is_linear",
        "leaf_features",
        "leaf_coeff",
        "shrinkage",
    }
)
_INT_KEYS = frozenset(
    {"split_feature", "decision_type", "left_child", "right_child", "internal_count", "leaf_count", "num_features"}
)
_MISSING_TYPES = 3  # none, zero, NaN: the 2 bits above the categorical and default-left bits


def lightgbm_text(text: str) -> str:
    """Check a LightGBM model in its text format and return the text to give ``lightgbm.Booster`` (the same,
    without the ``tree_sizes`` line); raise :class:`Malformed`."""
    if "\x00" in text or "\r" in text:
        raise Malformed("it holds NUL or carriage-return characters, which LightGBM's parser reads differently")
    lines = text.split("\n")
    first_tree = next((i for i, line in enumerate(lines) if line.startswith("Tree=")), None)
    if first_tree is None:
        raise Malformed("it holds no trees")
    header = _lightgbm_header(lines[:first_tree])
    n_features = header["max_feature_idx"] + 1
    i, n_trees = first_tree, 0
    while i < len(lines) and lines[i].startswith("Tree="):
        end = i + 1
        while end < len(lines) and lines[end] != "":
            end += 1
        try:
            if not _IS_INT.match(lines[i][len("Tree=") :]):
                raise Malformed(f"its first line is {lines[i][:40]!r}")
            _lightgbm_tree(lines[i + 1 : end], n_features)
        except Malformed as e:
            raise Malformed(f"tree {n_trees}: {e}") from None
        n_trees += 1
        i = end
        while i < len(lines) and lines[i] == "":
            i += 1
    if i >= len(lines) or lines[i] != "end of trees":
        raise Malformed(f"line {i + 1} is {lines[i][:40] if i < len(lines) else ''!r}, not a tree or 'end of trees'")
    if any(line.startswith("Tree=") for line in lines[i:]):
        raise Malformed("a tree follows 'end of trees'")
    _lightgbm_parameters(lines[i:])
    per_iteration = header["num_tree_per_iteration"]
    if n_trees % per_iteration:
        raise Malformed(f"{n_trees} trees are not whole iterations of {per_iteration}")
    if header["tree_sizes"] is not None:
        # LightGBM jumps to each tree by these byte counts without checking them: they must be the trees' own.
        offsets = [len(line.encode()) + 1 for line in lines[first_tree:i]]
        starts = [k for k in range(first_tree, i) if lines[k].startswith("Tree=")] + [i]
        sizes = [sum(offsets[a - first_tree : b - first_tree]) for a, b in zip(starts, starts[1:], strict=False)]
        if header["tree_sizes"] != sizes:
            raise Malformed("its tree_sizes do not match the sizes of its trees")
    return "\n".join(line for line in lines if not line.startswith("tree_sizes="))


def _lightgbm_header(lines: list[str]) -> dict[str, Any]:
    values: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        key, sep, value = line.partition("=")
        # LightGBM splits a header line on "=" skipping empty parts, so "=x", "k=" and "k==v" mean other things to
        # it than they seem: only "key=value" (and a bare "tree" or "average_output") is taken.
        if not _HEADER_KEY.match(key) or (sep and not value) or (not sep and key not in ("tree", "average_output")):
            raise Malformed(f"header line {line[:40]!r} is not key=value")
        if "=" in value and key not in ("feature_names", "monotone_constraints"):
            raise Malformed(f"header line {line[:40]!r} has more than one '='")
        if key in values:
            raise Malformed(f"the header sets {key} twice")
        values[key] = value if sep else ""
    counts: dict[str, Any] = {}
    for key in ("num_class", "num_tree_per_iteration", "label_index", "max_feature_idx"):
        raw = values.get(key, "1" if key == "num_tree_per_iteration" else None)
        if raw is None or not _IS_INT.match(raw) or int(raw) < (1 if key.startswith("num_") else 0):
            raise Malformed(f"its header's {key} is {raw!r}")
        counts[key] = int(raw)
    if "num_tree_per_iteration" not in values:
        counts["num_tree_per_iteration"] = counts["num_class"]
    if counts["num_class"] != counts["num_tree_per_iteration"]:
        raise Malformed(
            f"it predicts {counts['num_class']} classes with {counts['num_tree_per_iteration']} trees per iteration"
        )
    objective = values.get("objective", "").split(" ")
    for token in objective[1:]:
        name, sep, value = token.partition(":")
        if not sep or not (_IS_INT.match(value) or _IS_FLOAT.match(value)):
            raise Malformed(f"its objective's parameter {token[:40]!r} is not name:number")
        if name == "num_class" and value != str(counts["num_class"]):
            raise Malformed(f"its objective is for {value} classes, its header for {counts['num_class']}")
    sizes = values.get("tree_sizes")
    if sizes is not None and not all(_IS_INT.match(t) and int(t) > 0 for t in sizes.split(" ")):
        raise Malformed("its tree_sizes are not byte counts")
    counts["tree_sizes"] = None if sizes is None else [int(t) for t in sizes.split(" ")]
    n_features = counts["max_feature_idx"] + 1
    for key in ("feature_names", "feature_infos", "monotone_constraints"):
        if key in values and len([t for t in values[key].split(" ") if t]) != n_features:
            raise Malformed(f"its header's {key} does not list {n_features} features")
    return counts


def _lightgbm_parameters(lines: list[str]) -> None:
    """The training parameters after the trees: LightGBM reads each line as ``[name: value]`` and indexes the part
    after the colon without checking that there is one."""
    if "parameters:" not in lines:
        return
    start = lines.index("parameters:") + 1
    if "end of parameters" not in lines[start:]:
        raise Malformed("its parameters have no 'end of parameters'")
    for line in lines[start : lines.index("end of parameters", start)]:
        if line and not _PARAMETER.match(line):  # LightGBM skips empty lines
            raise Malformed(f"parameter line {line[:40]!r} is not [name: value]")


def _lightgbm_tree(lines: list[str], n_features: int) -> None:
    if len(lines) > _MAX_TREE_LINES:
        raise Malformed(f"it has {len(lines)} lines; LightGBM reads {_MAX_TREE_LINES}")
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or key not in _TREE_KEYS or key in fields:
            raise Malformed(f"line {line[:40]!r} is not a new tree field")
        fields[key] = value
    leaves = _lgb_scalar(fields, "num_leaves", required=True)
    n_cat = _lgb_scalar(fields, "num_cat", required=True)
    linear = _lgb_scalar(fields, "is_linear", required=False)
    if leaves < 1 or n_cat < 0 or linear not in (0, 1):
        raise Malformed(f"num_leaves {leaves}, num_cat {n_cat}, is_linear {linear}")
    if "shrinkage" in fields and not _IS_FLOAT.match(fields["shrinkage"]):
        raise Malformed("shrinkage is not a number")
    arrays = {}
    for key in fields:
        if key in ("num_leaves", "num_cat", "is_linear", "shrinkage"):
            continue
        tokens = [t for t in fields[key].split(" ") if t]  # as LightGBM splits: on spaces, skipping empty tokens
        pattern = (
            _IS_INT if key in _INT_KEYS or key in ("cat_boundaries", "cat_threshold", "leaf_features") else _IS_FLOAT
        )
        if not all(pattern.match(t) for t in tokens):
            raise Malformed(f"{key} holds something other than numbers")
        arrays[key] = tokens
    _lgb_length(arrays, "leaf_value", leaves, required=True)
    internal = leaves - 1
    if internal == 0 and not linear:
        return  # LightGBM reads nothing else of a one-leaf tree (and writes its other fields empty)
    for key in _PER_LEAF[1:]:
        _lgb_length(arrays, key, leaves, required=False)
    for key in (*_PER_NODE, *_PER_INTERNAL):
        _lgb_length(arrays, key, internal, required=key in ("split_feature", "threshold", "left_child", "right_child"))
    left = [int(v) for v in arrays["left_child"]]
    right = [int(v) for v in arrays["right_child"]]
    parents = [0] * internal
    leaf_parents = [0] * leaves
    for node in range(internal):
        for child in (left[node], right[node]):
            if child >= 0:
                if not node < child < internal:
                    raise Malformed(f"node {node} has child {child}, not a later one of the {internal} nodes")
                parents[child] += 1
            elif ~child < leaves:
                leaf_parents[~child] += 1
            else:
                raise Malformed(f"node {node} has leaf {~child}, beyond its {leaves} leaves")
    if any(p != 1 for p in parents[1:]) or (internal and parents[0]) or any(p != 1 for p in leaf_parents):
        raise Malformed("its nodes and leaves do not form one tree (a node or leaf with no parent, or two)")
    features = [int(v) for v in arrays["split_feature"]]
    if any(not 0 <= f < n_features for f in features):
        raise Malformed(f"a node splits on a feature outside the model's {n_features}")
    kinds = [int(v) for v in arrays.get("decision_type", ["0"] * internal)]
    if any(not 0 <= k < 16 or (k >> 2) & 3 >= _MISSING_TYPES for k in kinds):
        raise Malformed("a node has an unknown decision type")
    categorical = [node for node in range(internal) if kinds[node] & 1]
    if n_cat or categorical:
        bounds = [int(v) for v in arrays.get("cat_boundaries", [])]
        words = arrays.get("cat_threshold", [])
        if len(bounds) != n_cat + 1 or bounds[0] != 0 or bounds[-1] != len(words):
            raise Malformed(f"cat_boundaries does not cut cat_threshold into {n_cat} bitsets")
        if any(a > b for a, b in zip(bounds, bounds[1:], strict=False)) or any(
            not 0 <= int(w) < _UINT32 for w in words
        ):
            raise Malformed("cat_boundaries or cat_threshold is out of order or range")
        thresholds = arrays["threshold"]
        for node in categorical:
            bitset = float(thresholds[node])
            if not (bitset.is_integer() and 0 <= bitset < n_cat):
                raise Malformed(f"node {node} uses categorical bitset {thresholds[node]} of {n_cat}")
    if linear and "num_features" in arrays:  # without it LightGBM reads no leaf features
        counts = [int(v) for v in arrays["num_features"]]
        used = arrays.get("leaf_features", [])
        if any(c < 0 for c in counts) or len(used) != sum(counts) or len(arrays.get("leaf_coeff", [])) != sum(counts):
            raise Malformed("num_features, leaf_features and leaf_coeff of its linear leaves do not agree")
        if any(not 0 <= int(f) < n_features for f in used):
            raise Malformed(f"a linear leaf uses a feature outside the model's {n_features}")


def _lgb_scalar(fields: dict[str, str], key: str, required: bool) -> int:
    raw = fields.get(key)
    if raw is None:
        if required:
            raise Malformed(f"it has no {key}")
        return 0
    if not _IS_INT.match(raw):
        raise Malformed(f"{key} is {raw[:20]!r}, not an integer")
    return int(raw)


def _lgb_length(arrays: dict[str, list[str]], key: str, length: int, required: bool) -> None:
    if key not in arrays:
        if required:
            raise Malformed(f"it has no {key}")
        return
    if len(arrays[key]) != length:
        raise Malformed(f"{key} has {len(arrays[key])} values, not {length}")
