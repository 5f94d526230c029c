"""Search over every version: the query language's meaning, checked against a plain-Python reading of the same
conditions; the same answers from the in-memory index, from the snapshot and after writes; pages that join up; bad
queries refused by name."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_ops.errors import UsageError
from model_ops.registry import Registry
from model_ops.registry.version import ModelVersion
from model_ops_tests.test_snapshot import FRESH_READ

MODELS = ("fraud_tree", "fraud_lr", "churn", "team/ranker")
TEAMS = ("fraud", "growth", "search")


def _blob(tmp: Path, content: str) -> Path:
    p = tmp / f"{abs(hash(content))}.bin"
    p.write_text(content)
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Four models, 24 versions: metrics, params (numbers, numeric text, text), tags, datasets, stages, aliases."""
    tmp = tmp_path_factory.mktemp("search")
    reg = Registry.open(tmp / "root", actor="alice")
    for i in range(24):
        name = MODELS[i % 4]
        tags = {"team": TEAMS[i % 3]} if i % 5 else {}
        if i % 4 == 1:
            tags["cost centre"] = "ml-7"
        reg.register(
            name,
            _blob(tmp, f"{name}-{i}"),
            metrics={"roc_auc": round(0.6 + (i * 7 % 24) / 60, 4), **({"log_loss": 0.3 + i / 100} if i % 2 else {})},
            params={"depth": i % 6, "lr": str(0.05 * (i % 3 + 1)), "solver": "lbfgs" if i % 2 else "saga"},
            dataset=f"delta://lake/flights_{i % 2}@{i}" if i % 3 else None,
            tags=tags,
        )
    reg.transition("models:/churn/2", "staging", reason="candidate")
    reg.transition("models:/churn/2", "production", reason="release")
    reg.transition("models:/fraud_lr/3", "staging", reason="candidate")
    reg.set_alias("fraud_tree", "challenger", 4, reason="best recall")
    reg.set_alias("team/ranker", "challenger", 1, reason="first")
    return reg


def everything(reg: Registry) -> list[ModelVersion]:
    return [v for name in reg.models() for v in reg.versions(name)]


def refs(versions: list[ModelVersion]) -> set[str]:
    return {v.ref for v in versions}


def found(reg: Registry, query: str, **kw: Any) -> set[str]:
    page = reg.search(query, limit=1000, **kw)
    assert page.cursor is None
    return refs(page.versions)


# ------------------------------------------------------------------ meaning, against a plain-Python reading

Pred = Callable[[ModelVersion], bool]


def _num(v: ModelVersion, kind: str, key: str) -> float | None:
    value = (v.metrics if kind == "metrics" else v.params).get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric(kind: str, key: str, op: str, x: float) -> tuple[str, Pred]:
    def pred(v: ModelVersion) -> bool:
        value = _num(v, kind, key)
        return value is not None and _OPS[op](value, x)

    return f"{kind}.{key} {op} {x}", pred


conditions = st.one_of(
    st.builds(
        lambda op, x: _numeric("metrics", "roc_auc", op, x),
        st.sampled_from(list(_OPS)),
        st.sampled_from([0.6, 0.7, 0.8]),
    ),
    st.builds(
        lambda op, x: _numeric("metrics", "log_loss", op, x), st.sampled_from(["<", ">="]), st.sampled_from([0.35, 0.5])
    ),
    st.builds(lambda op, x: _numeric("params", "depth", op, x), st.sampled_from(list(_OPS)), st.integers(0, 6)),
    st.builds(lambda op, x: _numeric("params", "lr", op, x), st.sampled_from(["<", ">", "="]), st.sampled_from([0.1])),
    st.builds(
        lambda team, neg: (
            f"tags.team {'!=' if neg else '='} {team}",
            lambda v: "team" in v.tags and (v.tags["team"] != team if neg else v.tags["team"] == team),
        ),
        st.sampled_from(TEAMS),
        st.booleans(),
    ),
    st.just(('tags."cost centre" exists', lambda v: "cost centre" in v.tags)),
    st.builds(
        lambda pattern: (f"name like '{pattern}'", lambda v: fnmatch.fnmatchcase(v.name, pattern)),
        st.sampled_from(["fraud_*", "*r", "team/*", "ch?rn", "[x]*"]),
    ),
    st.builds(
        lambda stage: (f"stage = {stage}", lambda v: v.stage == stage),
        st.sampled_from(["production", "staging", "development"]),
    ),
    st.just(("alias = challenger", lambda v: "challenger" in v.aliases)),
    st.just(("alias exists", lambda v: bool(v.aliases))),
    st.builds(
        lambda numbers: (
            f"version in ({', '.join(map(str, numbers))})",
            lambda v: v.version in numbers,
        ),
        st.lists(st.integers(1, 7), min_size=1, max_size=3),
    ),
    st.builds(
        lambda solver: (f"params.solver = {solver}", lambda v: v.params.get("solver") == solver),
        st.sampled_from(["lbfgs", "saga"]),
    ),
    st.just(
        ("dataset like 'delta://lake/flights_1'", lambda v: (v.dataset or {}).get("uri") == "delta://lake/flights_1")
    ),
    st.just(("dataset exists", lambda v: v.dataset is not None)),
    st.just(("actor = alice", lambda v: v.created_by == "alice")),
)


def _combine(children: st.SearchStrategy) -> st.SearchStrategy:
    def both(joiner: str, a: tuple[str, Pred], b: tuple[str, Pred]) -> tuple[str, Pred]:
        (qa, pa), (qb, pb) = a, b
        if joiner == "and":
            return f"({qa}) and ({qb})", lambda v: pa(v) and pb(v)
        return f"({qa}) or ({qb})", lambda v: pa(v) or pb(v)

    def negated(a: tuple[str, Pred]) -> tuple[str, Pred]:
        return f"not ({a[0]})", lambda v: not a[1](v)

    return st.one_of(st.builds(both, st.sampled_from(["and", "or"]), children, children), st.builds(negated, children))


queries = st.recursive(conditions, _combine, max_leaves=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=queries)
def test_a_query_finds_exactly_the_versions_its_conditions_describe(corpus: Registry, case: tuple[str, Pred]) -> None:
    query, pred = case
    expected = refs([v for v in everything(corpus) if pred(v)])
    assert found(corpus, query) == expected, query


def test_the_issue_s_example_and_the_documented_edges(corpus: Registry) -> None:
    every = everything(corpus)
    assert len(every) == 24
    assert found(corpus, "") == refs(every)
    assert found(corpus, "stage = production and metrics.roc_auc > 0.6") == {"models:/churn/2"}
    # a condition on what a version lacks is false, != included; `not` takes the ones without
    untagged = {v.ref for v in every if "team" not in v.tags}
    assert untagged and not (found(corpus, "tags.team != fraud") & untagged)
    assert untagged <= found(corpus, "not tags.team = fraud")
    # params holding numeric text compare as numbers; text compares as text
    assert found(corpus, "params.lr = 0.1") == found(corpus, 'params.lr = "0.1"')
    assert found(corpus, "created >= 2000-01-01T00:00:00+00:00") == refs(every)
    assert found(corpus, f"created > {datetime.now(timezone.utc).isoformat()}") == set()
    assert found(corpus, "semver like '1.*' and version = 1") == {f"models:/{m}/1" for m in MODELS}


def test_results_are_ordered_and_pages_join_up(corpus: Registry) -> None:
    for order in (None, "created asc", "version desc", "name", "name desc", "metrics.log_loss", "metrics.roc_auc desc"):
        whole = corpus.search("", order_by=order, limit=1000).versions
        pages, cursor = [], None
        while True:
            page = corpus.search("", order_by=order, limit=5, cursor=cursor)
            pages.extend(page.versions)
            cursor = page.cursor
            if cursor is None:
                break
        assert [v.ref for v in pages] == [v.ref for v in whole], order
    newest = corpus.search("", limit=3).versions
    assert [v.created_at for v in newest] == sorted((v.created_at for v in newest), reverse=True)
    by_loss = corpus.search("", order_by="metrics.log_loss asc", limit=1000).versions
    losses = [v.metrics.get("log_loss") for v in by_loss]
    have = [x for x in losses if x is not None]
    assert have == sorted(have) and losses == have + [None] * (len(losses) - len(have))  # without it: last
    by_name = corpus.search("", order_by="name", limit=1000).versions
    assert [(v.name, v.version) for v in by_name] == sorted((v.name, v.version) for v in by_name)


def test_a_page_follows_on_from_its_cursor_while_versions_are_registered(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root")
    for i in range(6):
        reg.register("m", _blob(tmp_path, f"a{i}"), metrics={"auc": i / 10})
    first = reg.search("metrics.auc >= 0", order_by="version asc", limit=4)
    assert [v.version for v in first.versions] == [1, 2, 3, 4]
    reg.register("m", _blob(tmp_path, "late"), metrics={"auc": 0.9})  # written between the two pages
    second = reg.search("metrics.auc >= 0", order_by="version asc", limit=4, cursor=first.cursor)
    assert [v.version for v in second.versions] == [5, 6, 7] and second.cursor is None
    with pytest.raises(UsageError, match="belongs to another search"):
        reg.search("metrics.auc >= 0.5", order_by="version asc", limit=4, cursor=first.cursor)
    with pytest.raises(UsageError, match="not one a search printed"):
        reg.search("", cursor="garbage!")


def test_the_index_follows_every_kind_of_change(tmp_path: Path) -> None:
    """After a search built the index, later writes update it: the answers equal a freshly opened registry's."""
    reg = Registry.open(tmp_path / "root")
    for i in range(4):
        reg.register("m", _blob(tmp_path, f"b{i}"), tags={"team": "a"})
    probes = ["tags.team = a", "tags.team = b", "alias = best", "stage = staging", "version > 3", "tags.owner exists"]

    def same_as_fresh() -> None:
        fresh = Registry.open(reg.root)
        for q in probes:
            assert found(reg, q) == found(fresh, q), q

    same_as_fresh()
    reg.set_tag("models:/m/2", "team", "b")
    reg.set_tag("models:/m/3", "owner", "x")
    reg.remove_tag("models:/m/1", "team")
    reg.set_alias("m", "best", 2, reason="r")
    same_as_fresh()
    reg.set_alias("m", "best", 3, reason="moved")  # version 2 loses it
    reg.transition("models:/m/4", "staging", reason="r")
    reg.register("m", _blob(tmp_path, "b4"), tags={"team": "b"})
    same_as_fresh()
    reg.remove_alias("m", "best", reason="gone")
    same_as_fresh()
    assert found(reg, "alias = best") == set() and found(reg, "tags.team = b") == {"models:/m/2", "models:/m/5"}


def test_a_fold_resumed_from_a_snapshot_starts_its_index_from_the_snapshot_s_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the log moved past the snapshot, the first search copies the snapshot's search tables and applies
    only what changed after it (no build from the fold): the tables then hold exactly what a build would, and
    the answers are those of a fold that never saw the snapshot."""
    from model_ops.registry import search

    reg = Registry.open(tmp_path / "root", actor="alice")
    for i in range(6):
        name = ("m", "n")[i % 2]
        reg.register(name, _blob(tmp_path, f"s{i}"), tags={"team": "a"}, metrics={"auc": 0.5 + i / 20})
    reg.set_alias("m", "best", 1, reason="first")
    reg.maintain()
    reg.set_tag("models:/m/2", "team", "b")
    reg.remove_tag("models:/n/1", "team")
    reg.set_alias("m", "best", 3, reason="moved")  # version 1 loses it
    reg.transition("models:/n/2", "staging", reason="candidate")
    reg.register("n", _blob(tmp_path, "s6"), tags={"team": "b"}, metrics={"auc": 0.99})

    resumed = Registry.open(reg.root)

    def no_build(*_: Any) -> None:
        raise AssertionError("the index was built from the fold instead of copied from the snapshot")

    with monkeypatch.context() as patched:
        patched.setattr(search, "fill", no_build)
        assert found(resumed, "tags.team = b") == {"models:/m/2", "models:/n/4"}
    assert resumed._state is not None and resumed._state.seed is not None
    index = resumed._search_index
    assert index is not None
    assert search.contents(index._conn) == search.contents_of(resumed._state)

    probes = ["", "tags.team = a", "alias = best", "stage = staging", "metrics.auc > 0.7", "version = 4"]
    never_resumed = Registry.open(reg.root)
    never_resumed._resume = False
    for q in probes:
        assert found(resumed, q) == found(never_resumed, q), q
    resumed.register("m", _blob(tmp_path, "s7"), tags={"team": "c"})  # the copied index follows later writes too
    assert found(resumed, "tags.team = c") == {"models:/m/4"}
    assert search.contents(index._conn) == search.contents_of(resumed._state)


def test_a_snapshot_answers_searches_as_the_fold_does_and_a_fresh_command_needs_no_delta_engine(
    corpus: Registry, tmp_path: Path
) -> None:
    probes = [
        "",
        "stage = production",
        "metrics.roc_auc > 0.7 and not tags.team = growth",
        "name like 'fraud_*' or alias = challenger",
        'params.depth >= 3 and tags."cost centre" = ml-7',
        "dataset = delta://lake/flights_0 and dataset.version = 6",
    ]
    orders = [None, "metrics.roc_auc desc", "name"]
    folded = {
        (q, o): [v.to_dict() for v in corpus.search(q, order_by=o, limit=7).versions] for q in probes for o in orders
    }
    corpus.maintain()
    fresh = Registry.open(corpus.root)
    assert fresh._direct() is not None
    for (q, o), expected in folded.items():
        assert [v.to_dict() for v in fresh.search(q, order_by=o, limit=7).versions] == expected, (q, o)
    assert fresh._state is None  # all answered from the snapshot, the log never folded

    out = subprocess.run(
        [sys.executable, "-c", FRESH_READ, "--root", str(corpus.root), "search", "--json", probes[2], "--limit", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    *printed, last = out.stdout.strip().splitlines()
    assert json.loads(last) == {"code": 0, "heavy": []}, out.stderr
    doc = json.loads("\n".join(printed))
    assert [v["ref"] for v in doc["versions"]] == [v["ref"] for v in folded[(probes[2], None)][:3]]
    assert doc["order"] == "created desc" and doc["next_cursor"]

    # the cursor a fresh command printed pages on in the library
    nxt = fresh.search(probes[2], limit=3, cursor=doc["next_cursor"])
    assert [v.ref for v in nxt.versions] == [v["ref"] for v in folded[(probes[2], None)][3:6]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("stage =", "expected a value at the end"),
        ("colour = red", "unknown field 'colour'"),
        ("metrics.auc > high", "metrics.auc is a number"),
        ("stage > production", "stage is text"),
        ("(stage = production", "expected `)`"),
        ("version like 3", "`like` matches text"),
        ("created > yesterday", "not an ISO date or time"),
        ("tags = x", "`tags` needs a key"),
        ("stage = production extra", "expected `and`, `or` or the end"),
        ("name in (a, b", "expected `,` or `)`"),
        ('tags.team = "open', "unclosed quote"),
        ("stage exists", "every version has a stage"),
        ("version < 2.5", "version is a whole number"),
        ("not " * 80 + "stage = x", "more than 64 deep"),
        (" or ".join(["stage = x"] * 201), "more than 200 conditions"),
    ],
)
def test_a_bad_query_is_refused_naming_what_is_wrong(corpus: Registry, query: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        corpus.search(query)


def test_the_command_line_prints_a_table_pages_and_exits_2_on_a_bad_query(corpus: Registry) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_ops.cli", "--root", str(corpus.root), "search", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = cli("tags.team = fraud", "--order-by", "version", "--limit", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "VERSION", "SEMVER", "STAGE"] and len(lines) == 4
    assert lines[-1].startswith("more: add --cursor ")
    bad = cli("metrics.auc > high")
    assert bad.returncode == 2 and "error: search query: metrics.auc is a number" in bad.stderr
    assert cli("", "--limit", "0").returncode == 2
    assert cli("", "--order-by", "colour").returncode == 2
    assert cli("name = nothing_like_it").stdout.strip() == "no version matches"


def test_a_text_field_takes_a_value_as_written_and_a_param_takes_a_number_as_a_number(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root")
    reg.register(
        "m",
        _blob(tmp_path, "x"),
        tags={"build": "007", "rel": "1.10", "sha": "1234e56"},
        params={"seed": 12345678901234567890, "depth": 3, "code": "007"},
    )
    for query in (
        "tags.build = 007",
        "tags.rel = 1.10",
        "tags.sha = 1234e56",
        "tags.build like 00*",
        "tags.rel in (1.10)",
    ):
        assert found(reg, query) == {"models:/m/1"}, query
    assert found(reg, "tags.rel = 1.1") == set()
    assert found(reg, "params.seed = 12345678901234567890") == {"models:/m/1"}  # beyond 64 bits: as a float
    assert found(reg, "params.depth > 2.5") == {"models:/m/1"}
    assert found(reg, 'params.code = "007"') == {"models:/m/1"}
    assert found(reg, "version < 99999999999999999999") == {"models:/m/1"}
    page = reg.search('tags.rel = "1.10"', limit=1)
    with pytest.raises(UsageError, match="another search"):
        reg.search('tags.rel = "1.10 "', limit=1, cursor=_cursor_of(reg))
    assert page.cursor is None


def _cursor_of(reg: Registry) -> str:
    reg.register("m", _blob(reg.root.path.parent, "y"), tags={"rel": "1.10"})
    page = reg.search('tags.rel = "1.10"', limit=1)
    assert page.cursor is not None
    return page.cursor
