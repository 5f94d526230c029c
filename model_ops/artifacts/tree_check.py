"""Structural checks of the tree models inside a loaded scikit-learn object, so that a crafted file is refused on
load instead of crashing the process the first time it predicts.

scikit-learn walks its trees in compiled code that does not check bounds. skops only checks that every object in
a file is of an allowed type, and ``Tree.__setstate__`` only checks the dtype and shape of the arrays it is given
(the value array's shape against the node array's), never what they hold. A tree made only of allowed types can
therefore have a child index of 10**9, a feature index past the last column, a ``node_count`` larger than the
nodes allocated, or nodes that form a cycle, and ``predict`` then reads or writes outside its buffers (a
segmentation fault) or never returns. The estimators around the trees matter too: ``predict`` checks the width
of X against the estimator's ``n_features_in_`` and then walks the tree by the tree's own feature indices, and
forests and gradient boosting call their trees without any check of their own.

So every tree reachable from the loaded object is checked here, in Python, before anyone can call it:

- each node is a leaf, or has two children with larger ids than its own; no node is the child of two nodes and
  every node but the root is the child of one (the nodes form one tree rooted at node 0, so every walk ends);
- the node count fits the nodes allocated, and ``max_depth`` covers the depth actually reached (it sizes the
  buffer of ``decision_path``);
- split features are columns the model has, categorical splits name bitsets that exist;
- the estimator's feature, output and class counts are the ones its trees were built for.

Nearest-neighbour trees (``KDTree``, ``BallTree``, trusted by default) are walked the same way on every query, so
their node ranges, point order, bounds and metric parameters are checked against their data too.

These are the invariants scikit-learn's own builders establish, so every fitted model meets them.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from model_ops.errors import IntegrityError

HINT = (
    "do not load it: its bytes match their digest, so it was registered this way (`model-ops fsck` cannot repair "
    "it); register the model again from its training code, and see `model-ops audit` for who registered it"
)
_LEAF = -1


class _Bad(Exception):
    """One structural fault, described relative to the object it was found in."""


def check(model: Any, what: str) -> None:
    """Refuse ``model`` (just loaded from ``what``, e.g. ``"models:/churn/3: model.skops"``) with an IntegrityError
    naming the object and the fault if any tree in it could crash or hang the process when used."""
    from sklearn.ensemble._bagging import BaseBagging
    from sklearn.ensemble._forest import BaseForest
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree import BaseDecisionTree
    from sklearn.tree._tree import Tree

    binary_trees = _binary_tree_classes()
    for path, obj in _walk(model):
        try:
            if isinstance(obj, Tree):
                _check_tree(obj)
            elif isinstance(obj, tuple(binary_trees)):
                _check_binary_tree(obj, binary_trees[type(obj).__mro__[-2]])
            elif isinstance(obj, TreePredictor):
                _check_predictor(obj, None, None)
            elif isinstance(obj, BaseDecisionTree) and "tree_" in vars(obj):
                _check_tree_estimator(obj)
            elif isinstance(obj, BaseHistGradientBoosting) and "_predictors" in vars(obj):
                _check_hist_gradient_boosting(obj)
            elif isinstance(obj, BaseGradientBoosting) and "estimators_" in vars(obj):
                _check_gradient_boosting(obj)
            elif isinstance(obj, (BaseForest, BaseBagging)) and "estimators_" in vars(obj):
                _check_ensemble(obj)
            # Other ensembles (AdaBoost, voting, stacking) call their members' own predict, which checks X.
        except _Bad as e:
            where = f"{path} ({type(obj).__name__})" if path else type(obj).__name__
            raise IntegrityError(f"{what} holds a malformed tree model: {where}: {e}", hint=HINT) from None
        except Exception as e:  # an attribute of the wrong kind where a tree's part should be
            where = f"{path} ({type(obj).__name__})" if path else type(obj).__name__
            raise IntegrityError(
                f"{what} holds a malformed tree model: {where}: {type(e).__name__}: {str(e)[:200]}", hint=HINT
            ) from None


# ---------------------------------------------------------------------------------------------------- the walk


def _walk(root: Any) -> Iterator[tuple[str, Any]]:
    """Every object reachable from ``root`` through attributes, containers and object arrays, once each, with the
    path that reaches it (``steps[1][1].estimators_[3].tree_``)."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            continue
        seen.add(id(obj))
        yield path, obj
        children: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                children = [(f"{path}[{', '.join(map(str, i))}]", v) for i, v in np.ndenumerate(obj)]
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, types.ModuleType):
            children = [(f"{path}.{k}" if path else k, v) for k, v in vars(obj).items()]
        stack.extend(reversed(children))


# ---------------------------------------------------------------------------------------------------- sklearn.tree


def _check_tree(tree: Any) -> None:
    """A ``sklearn.tree._tree.Tree`` on its own: its nodes form one tree over its own features and outputs."""
    n, capacity = int(tree.node_count), int(tree.capacity)
    if not 1 <= n <= capacity:
        # Every node array of the tree is read node_count entries long: check before touching any of them.
        raise _Bad(f"node_count is {n}, but {capacity} nodes are stored")
    n_features, n_outputs = int(tree.n_features), int(tree.n_outputs)
    if n_features < 1 or n_outputs < 1:
        raise _Bad(f"the tree has {n_features} features and {n_outputs} outputs")
    n_classes = np.asarray(tree.n_classes)
    if n_classes.shape != (n_outputs,) or n_classes.min() < 1 or n_classes.max() != tree.max_n_classes:
        raise _Bad(f"n_classes {n_classes.tolist()} does not fit {n_outputs} output(s) of up to {tree.max_n_classes}")
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    leaf = left == _LEAF
    if np.any(right[leaf] != _LEAF):
        node = int(np.flatnonzero(leaf & (right != _LEAF))[0])
        raise _Bad(f"node {node} has no left child but a right child {int(right[node])}")
    depth = _check_children(left, right, ~leaf)
    feature = np.asarray(tree.feature)
    _check_features(feature, ~leaf, n_features, "feature")
    max_depth = int(tree.max_depth)
    if not depth <= max_depth <= n - 1:
        raise _Bad(f"max_depth is {max_depth}, but the {n} nodes reach depth {depth}")


def _check_children(left: np.ndarray, right: np.ndarray, internal: np.ndarray) -> int:
    """Node ``i`` splits (``internal[i]``) into ``left[i]`` and ``right[i]``: check that the nodes form one tree
    rooted at node 0 and return its depth."""
    n = len(left)
    ids = np.arange(n)
    for side, child in (("left", left), ("right", right)):
        bad = internal & ((child <= ids) | (child >= n))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _Bad(
                f"node {node} has {side} child {int(child[node])}, not a later node of the {n} "
                "(an index outside the tree, or a cycle)"
            )
    children = np.concatenate([left[internal], right[internal]]).astype(np.intp)
    parents = np.bincount(children, minlength=n)
    if n and parents[0]:
        raise _Bad("node 0, the root, is also the child of another node")
    if np.any(parents[1:] != 1):
        node = int(np.flatnonzero(parents[1:] != 1)[0]) + 1
        raise _Bad(f"node {node} is the child of {int(parents[node])} nodes, not of exactly one")
    parent = np.zeros(n, dtype=np.intp)
    parent[left[internal].astype(np.intp)] = ids[internal]
    parent[right[internal].astype(np.intp)] = ids[internal]
    # Depth by pointer doubling: dist[i] is the number of edges from i up to its ancestor anc[i].
    dist, anc = (ids != 0).astype(np.int64), parent
    while np.any(anc != 0):
        dist, anc = dist + dist[anc], anc[anc]
    return int(dist.max()) if n else 0


def _check_features(feature: np.ndarray, internal: np.ndarray, n_features: int, name: str) -> None:
    bad = internal & ((feature < 0) | (feature >= n_features))
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise _Bad(f"node {node} splits on {name} {int(feature[node])}, but the model has {n_features} feature(s)")


def _check_tree_estimator(est: Any) -> None:
    """A decision tree estimator against its ``tree_``: predict checks X against the estimator's counts."""
    from sklearn.base import is_classifier
    from sklearn.tree._tree import Tree

    tree = est.tree_
    if not isinstance(tree, Tree):
        raise _Bad(f"tree_ is a {type(tree).__name__}, not a Tree")
    _require_n_features(est, int(tree.n_features))
    if _int(est, "n_outputs_") != tree.n_outputs:
        raise _Bad(f"n_outputs_ is {est.n_outputs_}, but its tree has {tree.n_outputs} output(s)")
    n_classes = np.asarray(tree.n_classes)
    if is_classifier(est):
        expected = np.atleast_1d(np.asarray(est.n_classes_))
        classes = est.classes_ if tree.n_outputs > 1 else [est.classes_]
        if expected.tolist() != n_classes.tolist() or [len(c) for c in classes] != n_classes.tolist():
            raise _Bad(f"its classes do not match the {n_classes.tolist()} class(es) its tree predicts")
    elif np.any(n_classes != 1):
        raise _Bad(f"a regressor whose tree predicts {n_classes.tolist()} classes")


def _require_n_features(est: Any, n_features: int) -> None:
    found = _int(est, "n_features_in_")
    if found != n_features:
        raise _Bad(f"n_features_in_ is {found}, but its tree(s) are built for {n_features} feature(s)")


def _int(obj: Any, name: str) -> int:
    value = vars(obj).get(name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _Bad(f"{name} is {value!r}, not a count")
    return int(value)


# ---------------------------------------------------------------------------------------------------- neighbours


def _binary_tree_classes() -> dict[type, int]:
    """The nearest-neighbour trees' base classes (64- and 32-bit, KD and ball), each with the first dimension of
    its node bounds (lower and upper corners for a KD tree, a centroid for a ball tree)."""
    from sklearn.neighbors import _ball_tree, _kd_tree

    classes: dict[type, int] = {}
    for module, corners in ((_kd_tree, 2), (_ball_tree, 1)):
        for name in ("BinaryTree64", "BinaryTree32"):
            if hasattr(module, name):
                classes[getattr(module, name)] = corners
    return classes


def _check_binary_tree(tree: Any, corners: int) -> None:
    """A KDTree or BallTree: queries go from node i to nodes 2i+1 and 2i+2 until a leaf, then measure the points
    ``idx_array[idx_start:idx_end]`` of ``data``, reading node bounds and the metric's parameters as they go, and
    check none of these indices."""
    state = tree.__getstate__()
    data, order, nodes, bounds = (np.asarray(a) for a in state[:4])
    n_levels, n_nodes, metric, weights = int(state[5]), int(state[6]), state[11], state[12]
    if data.ndim != 2 or min(data.shape) < 1:
        raise _Bad(f"its data has shape {data.shape}")
    n, d = data.shape
    if order.shape != (n,) or order.dtype.kind not in "iu" or not np.array_equal(np.sort(order), np.arange(n)):
        raise _Bad(f"idx_array is not an ordering of its {n} points")
    if not 0 <= n_levels < 64 or n_nodes != 2**n_levels - 1 or nodes.shape != (n_nodes,):
        raise _Bad(f"{nodes.shape[0] if nodes.ndim else 0} nodes, but n_levels {n_levels} and n_nodes {n_nodes}")
    if bounds.shape != (corners, n_nodes, d):
        raise _Bad(f"node_bounds has shape {bounds.shape}, not {(corners, n_nodes, d)}")
    start, end = nodes["idx_start"], nodes["idx_end"]
    bad = (start < 0) | (start > end) | (end > n)
    if bad.any():
        node = int(np.flatnonzero(bad)[0])
        raise _Bad(f"node {node} holds points {int(start[node])} to {int(end[node])} of {n}")
    split = np.flatnonzero(nodes["is_leaf"] == 0)
    if np.any(2 * split + 2 >= n_nodes):
        node = int(split[2 * split + 2 >= n_nodes][0])
        raise _Bad(f"node {node} is not a leaf, but its children would lie past the {n_nodes} nodes")
    if weights is not None and np.asarray(weights).shape != (n,):
        raise _Bad(f"sample_weight does not weigh its {n} points")
    metric._validate_data(data)  # the metric's own check of its parameters (weights, variances) against d
    matrix = np.asarray(metric.__getstate__()[2])
    if type(metric).__name__.startswith("MahalanobisDistance") and matrix.shape != (d, d):
        raise _Bad(f"its Mahalanobis matrix has shape {matrix.shape}, not {(d, d)}")


# ---------------------------------------------------------------------------------------------------- ensembles


def _check_ensemble(est: Any) -> None:
    """Forests call their trees with ``check_input=False``, so X's width is only checked against the forest's
    count; bagging and isolation forests pass each tree a subset of the columns."""
    from sklearn.ensemble import IsolationForest
    from sklearn.ensemble._forest import BaseForest
    from sklearn.tree import BaseDecisionTree

    n_features = _int(est, "n_features_in_")
    trees = list(est.estimators_)
    features = vars(est).get("estimators_features_")
    if isinstance(est, BaseForest):
        features = None
    elif features is not None:
        features = list(features)
        if len(features) != len(trees):
            raise _Bad(f"{len(features)} feature subsets for {len(trees)} estimators")
    subsets = isinstance(est, IsolationForest) and vars(est).get("_max_features") != n_features
    for i, member in enumerate(trees):
        columns = n_features
        if features is not None:
            subset = np.asarray(features[i])
            if subset.ndim != 1 or subset.dtype.kind not in "iu" or np.any((subset < 0) | (subset >= n_features)):
                raise _Bad(f"estimators_features_[{i}] is not a list of the model's {n_features} column indices")
            if subsets or not isinstance(est, IsolationForest):
                columns = len(subset)
        if isinstance(est, (BaseForest, IsolationForest)) and not isinstance(member, BaseDecisionTree):
            raise _Bad(f"estimators_[{i}] is a {type(member).__name__}, not a decision tree")
        if isinstance(member, BaseDecisionTree) and int(member.tree_.n_features) != columns:
            raise _Bad(
                f"estimators_[{i}] splits {int(member.tree_.n_features)} feature(s), but is given {columns} column(s)"
            )


def _check_gradient_boosting(est: Any) -> None:
    """Gradient boosting checks X against its first tree only, then walks every tree in compiled code and adds
    each one's output to column k of an array as wide as its number of trees per stage (or as its initial
    estimator's output)."""
    from sklearn.tree import DecisionTreeRegressor

    stages = est.estimators_
    if not isinstance(stages, np.ndarray) or stages.ndim != 2 or stages.dtype != object or stages.size == 0:
        raise _Bad("estimators_ is not a 2-d array of trees")
    n_features = _int(est, "n_features_in_")
    per_stage = _int(est, "n_trees_per_iteration_")
    if stages.shape[1] != per_stage:
        raise _Bad(f"{stages.shape[1]} trees per stage, but n_trees_per_iteration_ is {per_stage}")
    for index, tree in np.ndenumerate(stages):
        if not isinstance(tree, DecisionTreeRegressor):
            raise _Bad(f"estimators_[{index[0]}, {index[1]}] is a {type(tree).__name__}, not a DecisionTreeRegressor")
        if int(tree.tree_.n_features) != n_features or vars(tree).get("n_features_in_") != n_features:
            raise _Bad(f"estimators_[{index[0]}, {index[1]}] does not split the model's {n_features} feature(s)")
    init = vars(est).get("init_")
    if per_stage > 1:
        n_classes = _int(est, "n_classes_")
        if n_classes != per_stage:
            raise _Bad(f"{per_stage} trees per stage for {n_classes} classes")
        if not (isinstance(init, str) and init == "zero") and len(getattr(init, "classes_", ())) != per_stage:
            raise _Bad(f"its initial estimator does not predict the {per_stage} classes its trees add to")


# ---------------------------------------------------------------------------------------------------- histograms


def _check_hist_gradient_boosting(est: Any) -> None:
    """Histogram gradient boosting: every predictor's nodes against the columns X has once preprocessed."""
    n_features = _int(est, "n_features_in_")
    mapper = vars(est).get("_bin_mapper")
    categorical = None if mapper is None else vars(mapper).get("is_categorical_")
    if categorical is not None:
        categorical = np.asarray(categorical)
        if categorical.shape != (n_features,):
            raise _Bad(f"_bin_mapper.is_categorical_ has shape {categorical.shape}, not ({n_features},)")
        thresholds = vars(mapper).get("bin_thresholds_")
        if not isinstance(thresholds, list) or len(thresholds) != n_features:
            raise _Bad(f"_bin_mapper.bin_thresholds_ is not a list of {n_features} arrays")
        for f in np.flatnonzero(categorical):
            cats = np.asarray(thresholds[f], dtype=float)
            if cats.ndim != 1 or np.any((cats < 0) | (cats > 255) | (cats != np.round(cats))):
                raise _Bad(f"_bin_mapper.bin_thresholds_[{f}] holds categories outside 0..255")
    _check_preprocessor(vars(est).get("_preprocessor"), n_features)
    predictors = est._predictors
    per_iteration = _int(est, "n_trees_per_iteration_")
    for i, stage in enumerate(predictors):
        if len(stage) != per_iteration:
            raise _Bad(f"_predictors[{i}] holds {len(stage)} trees, not n_trees_per_iteration_ = {per_iteration}")
        for k, predictor in enumerate(stage):
            try:
                _check_predictor(predictor, n_features, categorical)
            except _Bad as e:
                raise _Bad(f"_predictors[{i}][{k}]: {e}") from None


def _check_preprocessor(pre: Any, n_features: int) -> None:
    """The ColumnTransformer that puts categorical columns first: it must give X exactly ``n_features`` columns,
    which holds for the one histogram gradient boosting builds (an OrdinalEncoder and a validating
    FunctionTransformer over complementary masks) and is checked for that form only."""
    if pre is None:
        return
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder
    from sklearn.utils.validation import check_array

    if not isinstance(pre, ColumnTransformer):
        raise _Bad(f"_preprocessor is a {type(pre).__name__}, not the ColumnTransformer it builds")
    width = 0
    for name, transformer, columns in pre.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        func = getattr(transformer, "func", None)
        func = getattr(func, "func", func)
        if not isinstance(transformer, (OrdinalEncoder, FunctionTransformer)) or (
            isinstance(transformer, FunctionTransformer) and func not in (None, check_array)
        ):
            raise _Bad(f"_preprocessor step {name!r} is a {type(transformer).__name__}, not one it builds")
        selected = np.asarray(columns)
        if selected.dtype == bool and selected.shape == (n_features,):
            width += int(selected.sum())
        elif selected.ndim == 1 and selected.dtype.kind in "iu" and np.all((selected >= 0) & (selected < n_features)):
            width += len(selected)
        else:
            raise _Bad(f"_preprocessor step {name!r} selects columns {str(columns)[:80]}")
    if width != n_features:
        raise _Bad(f"_preprocessor gives {width} columns, not the model's {n_features}")


def _check_predictor(predictor: Any, n_features: int | None, categorical: np.ndarray | None) -> None:
    """A histogram gradient boosting tree (``TreePredictor``): its node records form one tree, and its splits
    name columns and categorical bitsets that exist."""
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    nodes = vars(predictor).get("nodes")
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1:
        raise _Bad("its nodes are not a 1-d array of predictor records")
    if len(nodes) == 0:
        raise _Bad("it has no nodes")
    internal = nodes["is_leaf"] == 0
    _check_children(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64), internal)
    feature = nodes["feature_idx"]
    if n_features is not None:
        _check_features(feature, internal, n_features, "feature_idx")
    split_on_category = internal & (nodes["is_categorical"] != 0)
    for name in ("raw_left_cat_bitsets", "binned_left_cat_bitsets"):
        bitsets = vars(predictor).get(name)
        if not isinstance(bitsets, np.ndarray) or bitsets.dtype != np.uint32 or bitsets.ndim != 2:
            raise _Bad(f"{name} is not a 2-d array of uint32 bitsets")
        if bitsets.shape[1] != 8:
            raise _Bad(f"{name} has rows of {bitsets.shape[1]} words, not 8 (256 categories)")
        bad = split_on_category & (nodes["bitset_idx"] >= bitsets.shape[0])
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _Bad(f"node {node} uses bitset {int(nodes['bitset_idx'][node])} of {bitsets.shape[0]} in {name}")
    if n_features is not None:
        known = np.zeros(n_features, dtype=bool) if categorical is None else categorical.astype(bool)
        bad = split_on_category & ~known[np.clip(feature, 0, n_features - 1)]
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _Bad(f"node {node} splits feature {int(feature[node])} by category, but it is not categorical")
