"""The prediction log is shared by the batch ``predictions`` asset and the live server: a batch re-score replaces
the batch rows of its partition and keeps every live row, one appended while the re-score commits included; rows
written before the log recorded an origin are handled; a live row whose time lies outside the model's declared
windows keeps its time, is logged and counted, never refused; and the registry's public change probe
(:meth:`Registry.log_version`) moves on a write, stays without one, and costs one probe when nothing changed.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from model_ops.data.delta import PARTITION, Dataset
from model_ops.location import resolve_root
from model_ops.registry import Registry
from model_ops.serving.predlog import (
    ORIGIN,
    Origin,
    PredictionLog,
    Same,
    label_origins,
    predictions_dataset,
    replace_batch_rows,
)
from model_ops.specs import ModelSpec, load_spec
from model_ops_tests.helpers import tiny_model
from model_ops_tests.test_serving import NAME, declaration, fit, serving, wait_for

WEEK, OTHER = "2024-01-07", "2024-01-14"


def live_columns(ids: list[str], partition: str = WEEK) -> dict[str, Any]:
    """One request's rows as the server hands them to the log (the columns that matter here)."""
    n = len(ids)
    request_ids = np.empty(n, dtype=object)
    request_ids[:] = ids
    return {
        "request_id": request_ids,
        "ts": np.full(n, np.datetime64("2024-01-08T10:00:00", "us")),
        PARTITION: np.full(n, partition, dtype=object),
        "model_version": np.full(n, 1, dtype=np.int64),
        "arm": np.full(n, "production", dtype=object),
        "served": np.full(n, True),
        "score": np.full(n, 0.25),
    }


def batch_rows(tag: str, n: int, partition: str = WEEK) -> pa.Table:
    """A batch scoring of ``partition``: ``n`` rows whose request ids carry ``tag``."""
    return pa.table(
        {
            "request_id": [f"{tag}-{i}" for i in range(n)],
            "ts": pa.array([pd.Timestamp("2024-01-08T09:00:00", tz="UTC")] * n, type=pa.timestamp("us", tz="UTC")),
            PARTITION: [partition] * n,
            "model_version": pa.array([1] * n, type=pa.int64()),
            "arm": ["production"] * n,
            "served": [True] * n,
            "score": [0.75] * n,
        }
    )


def log_of(root: Path) -> Dataset:
    return predictions_dataset(resolve_root(str(root)), NAME)


def not_live(rows: pd.DataFrame) -> np.ndarray:
    """The batch rows among rows with no origin, as the tests name them (live ones start with ``live``)."""
    return ~rows["request_id"].str.startswith("live").to_numpy(dtype=bool)


def rescore(ds: Dataset, tag: str, n: int, partition: str = WEEK) -> None:
    replace_batch_rows(ds, partition, batch_rows(tag, n, partition), not_live)


def write_live(root: Path, ids: list[str], partition: str = WEEK) -> None:
    log = PredictionLog(resolve_root(str(root)))
    assert log.offer(NAME, live_columns(ids, partition), len(ids))
    log.close()
    assert log.written_rows == len(ids) and log.failed_rows == 0


def write_unlabelled_live(ds: Dataset, ids: list[str], partition: str = WEEK) -> None:
    """Live rows as a server logged them before the log recorded origins (no origin column)."""
    columns = live_columns(ids, partition)
    columns["ts"] = pa.array(columns["ts"], type=pa.timestamp("us", tz="UTC"))
    write_deltalake(ds.uri, pa.table(columns), mode="append", partition_by=[PARTITION], schema_mode="merge")


def origins(ds: Dataset, partition: str = WEEK) -> dict[str, list[str]]:
    rows = ds.read([partition])
    return {str(o): sorted(g["request_id"]) for o, g in rows.groupby(rows[ORIGIN].fillna("none"))}


# ---------------------------------------------------------------------------------------------------- batch and live


def test_a_batch_rescore_replaces_its_batch_rows_and_keeps_the_live_ones(root: Path) -> None:
    ds = log_of(root)
    rescore(ds, "first", 5)
    write_live(root, ["live-1", "live-2"])
    rescore(ds, "other", 3, OTHER)
    rescore(ds, "second", 4)

    assert origins(ds) == {"batch": [f"second-{i}" for i in range(4)], "live": ["live-1", "live-2"]}
    assert len(ds.read([OTHER])) == 3  # another partition is not touched


def test_a_batch_rescore_of_a_partition_holding_only_live_rows_adds_to_them(root: Path) -> None:
    write_live(root, ["live-1"])  # the server created the log
    rescore(log_of(root), "b", 2)
    assert origins(log_of(root)) == {"batch": ["b-0", "b-1"], "live": ["live-1"]}


def test_rows_from_before_the_origin_column_are_labelled_then_batch_ones_replaced(root: Path) -> None:
    """A log written before it recorded origins: its rows have none (the column does not even exist). The first
    re-score of a partition labels them (batch by request id, the rest live), replaces the batch ones and keeps
    the live ones; other partitions are left as they are until they are re-scored."""
    ds = log_of(root)
    ds.replace_partition(WEEK, batch_rows("old", 6))  # how the batch path wrote before
    write_unlabelled_live(ds, ["live-old-1", "live-old-2"])
    ds.replace_partition(OTHER, batch_rows("old-other", 2, OTHER))
    assert ORIGIN not in ds.arrow_schema().names

    rescore(ds, "new", 3)
    assert origins(ds) == {"batch": ["new-0", "new-1", "new-2"], "live": ["live-old-1", "live-old-2"]}
    assert origins(ds, OTHER) == {"none": ["old-other-0", "old-other-1"]}  # nothing rewritten there

    write_live(root, ["live-1"], OTHER)  # a live row after the upgrade, beside unlabelled ones
    rescore(ds, "new-other", 1, OTHER)
    assert origins(ds, OTHER) == {"batch": ["new-other-0"], "live": ["live-1"]}
    assert label_origins(ds, WEEK, not_live) == 0  # labelled once: nothing left to label, nothing written


@pytest.mark.slow
def test_the_batch_path_recognises_its_own_rows_and_no_live_ones(bounded: ModelSpec, root: Path) -> None:
    """``written_by_batch`` (how unlabelled rows are told apart) knows every row ``score_partition`` writes, by
    its request id, and none with the ids a live server gives."""
    from model_ops.defs.predictions import written_by_batch
    from model_ops_tests.test_serving import batch_log, rows

    spec = bounded
    scored = batch_log(Registry.open(root, actor="tester"), spec, rows().head(40))
    assert written_by_batch(spec)(scored).all()
    live = scored.copy()
    live["request_id"] = [f"{uuid.uuid4().hex}/{i}" for i in range(len(live))]
    assert not written_by_batch(spec)(live).any()
    moved = scored.copy()
    moved["model_version"] = moved["model_version"] + 1  # another version's row under this id: not this row
    assert not written_by_batch(spec)(moved).any()


def test_a_rescore_that_loses_a_commit_race_is_made_again(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replacement's commit loses a race (here: a live row is appended and the engine refuses the commit, as
    delta-rs does when a concurrent commit changed what it read): it is made again from a fresh read, once, and
    keeps the row that won the race."""
    from deltalake.exceptions import CommitFailedError

    ds = log_of(root)
    rescore(ds, "first", 3)
    real = Dataset.replace_partition
    calls: list[int] = []

    def racing(self: Dataset, *args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            write_live(root, ["live-racer"])
            raise CommitFailedError("Commit failed: a concurrent transaction changed the metadata")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "replace_partition", racing)
    rescore(ds, "second", 2)
    assert len(calls) == 2
    assert origins(ds) == {"batch": ["second-0", "second-1"], "live": ["live-racer"]}


def test_a_condition_on_a_column_the_table_lacks_adds_it_and_nulls_are_kept(root: Path) -> None:
    """delta-rs cannot evaluate a predicate on a missing column (a schema error), and ``x = 'v'`` never holds for
    a null ``x``: the dataset adds the column first, and rows with a null stay unless the condition names them."""
    ds = Dataset(resolve_root(str(root)).child("datasets", "t"), "t")
    ds.replace_partition(WEEK, pa.table({PARTITION: [WEEK, WEEK], "v": [1, 2]}))
    new = pa.table({PARTITION: [WEEK], "v": [3], "kind": ["a"]})
    ds.replace_partition(WEEK, new, where="kind = 'a'")
    assert sorted(ds.read([WEEK])["v"]) == [1, 2, 3]  # the old rows have a null kind: kept
    ds.replace_partition(WEEK, pa.table({PARTITION: [WEEK], "v": [4], "kind": ["a"]}), where="kind = 'a'")
    assert sorted(ds.read([WEEK])["v"]) == [1, 2, 4]
    version = ds.version()
    with pytest.raises(Exception, match="failed validation"):  # a row outside the condition: nothing written
        ds.replace_partition(WEEK, pa.table({PARTITION: [WEEK], "v": [5], "kind": ["b"]}), where="kind = 'a'")
    assert ds.version() == version and sorted(ds.read([WEEK])["v"]) == [1, 2, 4]


@pytest.mark.slow
def test_live_appends_racing_batch_rescores_lose_nothing(root: Path) -> None:
    """A thread serves (offers rows to PredictionLog, which commits every 50 ms) while the same partition is
    re-scored again and again, each re-score started while appends are under way: every row the log acknowledged
    is there afterwards, once, and the batch rows are the last scoring's, once."""
    ds = log_of(root)
    ds.replace_partition(WEEK, batch_rows("b0", 200))  # from before the log recorded origins
    write_unlabelled_live(ds, ["live-old"])
    log = PredictionLog(resolve_root(str(root)), flush_seconds=0.05)
    log.start()
    done = threading.Event()
    offered: list[str] = []

    def serve() -> None:
        i = 0
        while not done.is_set():
            ids = [f"live-{i}-{j}" for j in range(3)]
            if log.offer(NAME, live_columns(ids), len(ids)):
                offered.extend(ids)
            i += 1
            done.wait(0.01)

    thread = threading.Thread(target=serve)
    thread.start()
    rescores = 5
    try:
        for k in range(1, rescores + 1):
            written = log.written_rows
            wait_for(lambda: log.written_rows > written, 30, "a live append between two re-scores")
            rescore(ds, f"b{k}", 200)
    finally:
        done.set()
        thread.join(timeout=60)
        log.close()

    assert log.failed_rows == 0 and log.overflow_rows == 0 and log.written_rows == len(offered)
    rows = ds.read([WEEK])
    live = rows.loc[rows[ORIGIN] == Origin.LIVE, "request_id"]
    assert sorted(live) == sorted([*offered, "live-old"])  # every acknowledged row, each once
    batch = rows.loc[rows[ORIGIN] == Origin.BATCH, "request_id"]
    assert sorted(batch) == sorted(f"b{rescores}-{i}" for i in range(200))
    overwrites = [c for c in DeltaTable(ds.uri).history() if "Overwrite" in str(c.get("operationParameters"))]
    assert len(overwrites) == rescores


@pytest.mark.slow
def test_the_asset_rescoring_while_the_server_logs_keeps_every_live_row_and_monitoring_counts_each_once(
    tmp_path: Path,
) -> None:
    """The real graph: the ``predictions`` asset re-scores a week while a live server answers requests for that
    week's records (so its rows land in the same partition). Every answered row is in the log afterwards, the
    batch rows are one scoring's, and drift_report and live_performance count batch and live rows once each."""
    from model_ops_tests.test_own_models import WEEKS, bundled, declaration, declare, lifecycle, write_table

    uri = str(tmp_path / "tables" / NAME)
    data = bundled("cancer")
    write_table(data, uri, "delta")
    features = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]
    estimator = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
    spec = declare(tmp_path, declaration(NAME, uri, "binary_classification", features, estimator))
    week = WEEKS[-1]
    in_week = data[data["seen_at"] >= pd.Timestamp(week, tz="UTC")].reset_index(drop=True)
    records = [
        {
            **{f: row[f] for f in [*features, "site"]},
            "record_id": row["record_id"],
            "seen_at": row["seen_at"].isoformat(),
        }
        for _, row in in_week.iterrows()
    ]
    with lifecycle(tmp_path, spec) as (g, _), serving(Path(g.root), spec) as (client, server):
        answered: list[str] = []
        refused: list[str] = []  # asserted in the test's own thread: an assert in this thread could not fail it
        done = threading.Event()

        def serve() -> None:
            i = 0
            while not done.is_set() or i < 10:
                record = records[i % len(records)]
                answer = client.post(
                    f"/v2/models/{NAME}/invocations",
                    json={"dataframe_records": [record]},
                    headers={"X-Request-Id": f"live-{i}"},
                )
                if answer.status_code != 200:
                    refused.append(answer.text)
                    return
                answered.append(f"live-{i}")
                i += 1

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            assert g.run(NAME, ("predictions",), partition=week).success
            wait_for(lambda: server.predlog.written_rows > 0, 60, "a live row in the log")
            logged_before = server.predlog.written_rows
            assert g.run(NAME, ("predictions",), partition=week).success  # re-scores beside live rows
        finally:
            done.set()
            thread.join(timeout=120)
        assert refused == []
        wait_for(lambda: server.predlog.written_rows == len(answered), 60, "every answered row to be logged")
        assert server.predlog.failed_rows == 0

        log = g.resource.dataset(NAME, "predictions").read([week])
        live = log[log[ORIGIN] == Origin.LIVE]
        assert sorted(live["request_id"]) == sorted(answered)  # each answered row, once
        assert logged_before <= g.metadata(NAME, "predictions", week)["live_rows"] <= len(live)
        batch = log[log[ORIGIN] == Origin.BATCH]
        assert len(batch) == len(in_week) and batch["request_id"].is_unique  # one scoring of the week

        assert g.run(NAME, ("drift_report", "live_performance"), partition=week).success
        production = log[log["served"] & (log["arm"] == "production")]
        assert g.metadata(NAME, "drift_report", week)["rows"] == len(production)
        perf = g.resource.dataset(NAME, "live_performance").read([week])
        served = perf.set_index(["arm", "model_version"])["served"].to_dict()
        assert served == {("production", 1): len(production)}
        assert len(production) == len(in_week) + len(live)


# ---------------------------------------------------------------------------------------------------- outside the windows


@pytest.fixture
def bounded(tmp_path: Path, root: Path) -> ModelSpec:
    """The served test model with windows that end (four weeks of January 2024), one version in production."""
    data = declaration(tmp_path)
    data["partitions"] = {"cadence": "weekly", "start": WEEK, "end": "2024-02-04"}
    path = tmp_path / "bounded" / f"{NAME}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    from model_ops.ml import training

    reg = Registry.open(root, actor="tester")
    model = fit(spec, 1.0)
    mv = reg.register_model(NAME, model, signature=training.signature(spec, model.classes_.tolist()))
    reg.transition(mv.ref, "staging", reason="evaluated")
    reg.transition(mv.ref, "production", reason="first")
    return spec


def test_a_row_outside_the_declared_windows_keeps_its_time_is_logged_and_counted(
    bounded: ModelSpec, root: Path
) -> None:
    from model_ops_tests.test_serving import rows

    frame = rows().head(3)
    features = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness", "site"]
    now = pd.Timestamp.now(tz="UTC")
    records = [
        {**{f: frame[f].iloc[0] for f in features}, "record_id": "today"},  # no time: served now, 2026 or later
        {**{f: frame[f].iloc[1] for f in features}, "record_id": "early", "seen_at": "2023-06-01T12:00:00Z"},
        {**{f: frame[f].iloc[2] for f in features}, "record_id": "inside", "seen_at": "2024-01-10T08:00:00Z"},
    ]
    with serving(root, bounded) as (client, server):
        for record in records:
            answer = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": [record]})
            assert answer.status_code == 200, answer.text
        wait_for(lambda: server.predlog.written_rows == 3, 30, "the rows to be logged")
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
    assert status["prediction_log"]["undeclared_rows"] == {NAME: 2}
    assert f'model_ops_prediction_log_undeclared_rows_total{{model="{NAME}"}} 2.0' in metrics

    logged = log_of(root).read().set_index("record_id")
    assert logged.loc["early", "ts"] == pd.Timestamp("2023-06-01T12:00:00Z")  # its own time, never moved
    assert logged.loc["early", PARTITION] == "2023-05-28"  # the week that time falls in
    assert logged.loc["inside", PARTITION] == "2024-01-07"
    today = logged.loc["today"]
    assert today["ts"] >= now and today["ts"] == today["scored_at"]
    week_start = (today["ts"] - pd.Timedelta(days=(today["ts"].weekday() + 1) % 7)).date().isoformat()
    assert today[PARTITION] == week_start  # the window it was served in, not a declared one
    assert (logged[ORIGIN] == Origin.LIVE).all()


# ---------------------------------------------------------------------------------------------------- log_version


def test_log_version_moves_on_a_write_and_only_then_with_one_probe(root: Path) -> None:
    reg = Registry.open(root, actor="tester")
    empty = reg.log_version()
    assert reg.log_version() == empty  # nothing written: it stays
    reg.register_model("m", tiny_model(0))
    first = reg.log_version()
    assert first > empty and reg.log_version() == first

    other = Registry.open(root, actor="tester")  # another process's registry writes
    other.register_model("m", tiny_model(1))
    calls = {"has_commit": 0, "read_after": 0}
    log = reg._log
    has_commit, read_after = log.has_commit, log.read_after

    def counted_has_commit(version: int) -> bool:
        calls["has_commit"] += 1
        return has_commit(version)

    def counted_read_after(seq: int) -> pa.Table:
        calls["read_after"] += 1
        return read_after(seq)

    log.has_commit = counted_has_commit  # type: ignore[method-assign]
    log.read_after = counted_read_after  # type: ignore[method-assign]
    moved = reg.log_version()
    assert moved > first and calls["read_after"] == 1  # the new events were folded in
    assert [v.version for v in reg.versions("m")] == [1, 2]

    calls.update(has_commit=0, read_after=0)
    assert reg.log_version() == moved and reg.log_version() == moved
    assert calls == {"has_commit": 4, "read_after": 0}  # one probe (two stats: V+1, V) per call, nothing read


def test_rows_the_log_cannot_take_fail_their_own_request_only(root: Path) -> None:
    """A key of another type than the key column's, or a number no column type holds: those requests' rows are
    counted as failed, and every other request flushed with them is written."""
    ds = predictions_dataset(resolve_root(str(root)), NAME)
    week = "2024-01-07"
    ds.replace_partition(
        week, pa.table({PARTITION: [week], "request_id": ["b"], "record_id": pa.array([1], pa.int64())})
    )
    log = PredictionLog(resolve_root(str(root)), flush_seconds=60)  # one flush, at close: every item in it

    def item(request_id: str, key: Any, radius: Any = 1.5) -> dict[str, Any]:
        keys = np.empty(1, dtype=object)
        keys[:] = [key]
        radii = np.empty(1, dtype=object)
        radii[:] = [radius]
        return {
            "request_id": np.array([request_id], dtype=object),
            PARTITION: np.array([week], dtype=object),
            "record_id": keys,
            "mean_radius": radii,
        }

    for i in range(6):
        assert log.offer(NAME, item(f"ok{i}", 10 + i), 1)
    assert log.offer(NAME, item("text-key", "3f2a-request-id"), 1)
    assert log.offer(NAME, item("huge", 99, 2**80), 1)
    log.start()
    log.close()
    assert (log.written_rows, log.failed_rows) == (6, 2)
    written = set(ds.read()["request_id"])
    assert written == {"b", *(f"ok{i}" for i in range(6))}


def test_per_request_constants_are_logged_as_the_rows_would_hold_them(root: Path) -> None:
    """Columns a request holds one value of (its version, arm, when it was scored) are handed over once per
    request; in the table they are the same values and types as columns sent row by row, whatever mix of
    versions, of times and of requests sending the column one way or the other a flush holds."""
    at = [np.datetime64("2026-12-01T10:00:00.123456", "us"), np.datetime64("2026-12-01T10:00:01", "us")]
    log = PredictionLog(resolve_root(str(root)))
    log.offer(
        NAME,
        {
            **live_columns(["a/0", "a/1"]),
            "model_version": Same(np.int64(1)),
            "arm": Same("production"),
            "scored_at": Same(at[0]),
            "latency_ms": Same(0.5),
            "served": Same(True),
        },
        2,
    )
    log.offer(
        NAME,
        {
            **live_columns(["b"]),
            "model_version": Same(np.int64(2)),
            "arm": Same("canary"),
            "scored_at": Same(at[1]),
            "latency_ms": Same(1.5),
            "served": Same(True),
        },
        1,
    )
    log.offer(
        NAME,
        {
            **live_columns(["c/0", "c/1"]),
            "model_version": np.array([2, 1]),
            "arm": Same("canary"),
            "scored_at": Same(at[1]),
            "latency_ms": Same(2.5),
            "served": Same(False),
        },
        2,
    )
    log.close()
    table = predictions_dataset(resolve_root(str(root)), NAME).table().to_pyarrow_table()
    rows = table.to_pandas().sort_values("request_id").reset_index(drop=True)
    assert rows["request_id"].tolist() == ["a/0", "a/1", "b", "c/0", "c/1"]
    assert rows["model_version"].tolist() == [1, 1, 2, 2, 1]
    assert rows["arm"].tolist() == ["production", "production", "canary", "canary", "canary"]
    assert rows["latency_ms"].tolist() == [0.5, 0.5, 1.5, 2.5, 2.5]
    assert rows["served"].tolist() == [True, True, True, False, False]
    assert [t.isoformat() for t in rows["scored_at"]] == [
        "2026-12-01T10:00:00.123456+00:00",
        "2026-12-01T10:00:00.123456+00:00",
        *["2026-12-01T10:00:01+00:00"] * 3,
    ]
    assert set(rows[ORIGIN]) == {Origin.LIVE.value}
    schema = table.schema
    assert schema.field("model_version").type == pa.int64() and schema.field("arm").type == pa.string()
    assert schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("served").type == pa.bool_() and schema.field("latency_ms").type == pa.float64()
