"""The live server's serving statistics, alerts and canary guard: statistics rows for known traffic (refusals
included) written at shutdown and summarized; an alert firing and resolving with its records and evaluations; an
alert record delivered, signed, to a receiver that fails at first; a canary that refuses requests rolled back by
the guard, once, with the measurement in the reason; and the declaration's validation of alerts and guard.

The model, its data and the server fixture are those of ``test_serving`` (scikit-learn's breast-cancer data, two
fitted versions, a uvicorn server on a free loopback port).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from model_ops.data.partitions import Partitioning
from model_ops.location import resolve_root
from model_ops.ml import training
from model_ops.ops import deployment as dep
from model_ops.ops.deployment import Manifest
from model_ops.registry import Registry, webhooks
from model_ops.serving import alerts as al
from model_ops.serving import stats as st
from model_ops.specs import ModelSpec, load_spec
from model_ops.vocab import RecordKind
from model_ops_tests.test_serving import FEATURES, NAME, declaration, fit, rows, serving, two_versions, wait_for

__all__ = ["two_versions"]  # a fixture used here, defined in test_serving

SECRET = "alerts-test-secret"
SECRET_ENV = "MODEL_OPS_TEST_ALERT_SECRET"

ALERTS = [
    {"name": "slow", "kind": "p99_latency_ms", "threshold": 250, "window_seconds": 60, "min_requests": 50},
    {"name": "failing", "kind": "error_rate", "threshold": 0.05, "window_seconds": 60, "min_requests": 50},
    {"name": "radius_shift", "kind": "psi", "feature": "mean_radius", "threshold": 0.2, "min_requests": 50},
]


def alerting(tmp_path: Path, **deployment: Any) -> dict[str, Any]:
    doc = declaration(tmp_path)
    doc["alerts"] = ALERTS
    doc["deployment"] = {**doc["deployment"], **deployment}
    return doc


@pytest.fixture
def spec(tmp_path: Path) -> ModelSpec:
    """The served model, declared with alerts and a canary guard (overrides test_serving's ``spec``)."""
    path = tmp_path / "specs" / f"{NAME}.yaml"
    path.parent.mkdir()
    guard = {"max_error_rate": 0.05, "max_p99_ms": 60_000, "min_requests": 20, "window_seconds": 30}
    path.write_text(yaml.safe_dump(alerting(tmp_path, guard=guard)))
    return load_spec(path)


def records(root: Path, kind: str) -> list[Any]:
    fresh = Registry.open(root, actor="reader")
    return [e for e in fresh.audit(NAME) if e.kind == kind]


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


# ---------------------------------------------------------------------------------------------------- statistics


@pytest.mark.slow
def test_statistics_of_known_traffic_are_written_at_shutdown_and_summarized(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    frame = rows()
    week = frame[frame["seen_at"] < pd.Timestamp("2024-01-14", tz="UTC")].head(40)  # the week of 2024-01-07
    later = frame[frame["seen_at"] >= pd.Timestamp("2024-01-14", tz="UTC")].head(6)
    bad = json_records(week.head(1))
    bad[0]["mean_radius"] = None  # no missing value allowed: refused by v1 after routing (422)
    # an hour-long interval: nothing is written before the server stops, so what is written came from close()
    now = Partitioning.of(spec).key_of(pd.Series([pd.Timestamp.now(tz="UTC")]))
    windows = {now.iloc[0]}
    with serving(root, spec, stats_seconds=3600) as (client, server):
        for i in range(0, 40, 2):  # 20 requests of 2 rows in the first week
            r = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": json_records(week[i : i + 2])})
            assert r.status_code == 200, r.text
        for i in range(3):  # 3 requests of 2 rows in the next week
            r = client.post(
                f"/v2/models/{NAME}/invocations", json={"dataframe_records": json_records(later[2 * i : 2 * i + 2])}
            )
            assert r.status_code == 200, r.text
        for _ in range(4):
            r = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": bad})
            assert r.status_code == 422, r.text
        r = client.post(f"/v2/models/{NAME}/invocations", content=b"{not json")  # refused before routing
        assert r.status_code == 400
        assert not st.stats_dataset(resolve_root(str(root)), NAME).exists()
    windows |= set(Partitioning.of(spec).key_of(pd.Series([pd.Timestamp.now(tz="UTC")])))
    written = st.read_stats(resolve_root(str(root)), NAME)
    assert server.stats is not None and server.stats.failed_rows == 0
    first, second = Partitioning.of(spec).key_of(pd.Series([week["seen_at"].iloc[0], later["seen_at"].iloc[0]]))
    by_key = {
        (p, None if pd.isna(v) else int(v), None if pd.isna(a) else a): g
        for (p, v, a), g in written.groupby(["partition", "model_version", "arm"], dropna=False)
    }
    (today,) = {w for w in windows if (w, None, None) in by_key}
    assert set(by_key) == {(first, 1, "production"), (second, 1, "production"), (today, None, None)}
    served = by_key[(first, 1, "production")].iloc[0]
    assert (served["requests"], served["rows"], served["errors"]) == (20, 40, 4)
    assert sum(served["latency_histogram"]) == 20
    assert served["latency_p50_ms"] <= served["latency_p95_ms"] <= served["latency_p99_ms"]
    assert served["model_semver"] == two_versions.get(NAME, 1).semver and served["server"] == server.stats.server
    assert tuple(by_key[(second, 1, "production")].iloc[0][["requests", "rows", "errors"]]) == (3, 6, 0)
    unrouted = by_key[(today, None, None)].iloc[0]  # the malformed request: in the window of the moment it came
    assert (unrouted["requests"], unrouted["errors"]) == (0, 1)

    summary = st.summarize(written).set_index(["arm"], drop=False)
    prod = summary[summary["model_version"] == 1].iloc[0]
    assert (prod["requests"], prod["rows"], prod["errors"]) == (23, 46, 4)
    assert prod["error_rate"] == pytest.approx(4 / 27)
    seconds = (served["window_end"] - served["window_start"]).total_seconds()
    assert prod["throughput_rps"] == pytest.approx(23 / seconds)
    assert 0 < prod["latency_p50_ms"] <= prod["latency_p95_ms"] <= prod["latency_p99_ms"]


def test_histogram_quantiles_and_covered_time() -> None:
    counts = st.histogram([0.2, 0.7, 1.5, 1.5, 40.0])
    assert counts.sum() == 5 and counts[0] == 1 and counts[1] == 1 and counts[2] == 2
    # the median is the third of five: inside the (1, 2] bucket, which holds the 3rd and 4th values
    assert 1.0 < st.histogram_quantile(counts, 0.5) <= 2.0  # type: ignore[operator]
    assert 30.0 < st.histogram_quantile(counts, 0.99) <= 50.0  # type: ignore[operator]
    assert st.histogram_quantile(np.zeros(st.BUCKETS), 0.5) is None
    t0 = pd.Timestamp("2024-01-01T00:00:00Z")
    starts = pd.Series([t0, t0, t0 + pd.Timedelta(seconds=20)])
    ends = pd.Series([t0 + pd.Timedelta(seconds=10), t0 + pd.Timedelta(seconds=10), t0 + pd.Timedelta(seconds=30)])
    assert st.covered_seconds(starts, ends) == 20.0  # two servers over the same 10 s count it once


# ---------------------------------------------------------------------------------------------------- alerts


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def interval(
    clock: Clock, version: int, arm: str, requests: int, errors: int, latency_ms: float, samples: Any = None
) -> st.Interval:
    """Ten seconds of traffic of one arm, ending at the clock's time."""
    end = datetime.fromtimestamp(clock.now, timezone.utc)
    cell = st.Cell(requests, requests, errors, [latency_ms] * requests)
    kept = {(NAME, version, arm): {"mean_radius": [samples]}} if samples is not None else {}
    return st.Interval(end - timedelta(seconds=10), end, {(NAME, "2024-01-07", version, arm): cell}, kept, {})


def test_an_alert_fires_and_resolves_with_records_and_every_evaluation_kept(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    clock = Clock()
    fleet = SimpleNamespace(slots={NAME: SimpleNamespace(spec=spec, manifest=Manifest(NAME, 1))})
    engine = al.AlertEngine(resolve_root(str(root)), fleet, lambda: Registry.open(root, actor="server"), clock=clock)

    engine(interval(clock, 1, "production", 30, 0, 5.0))  # 30 < min_requests 50: not judged
    clock.now += 10
    engine(interval(clock, 1, "production", 60, 10, 5.0))  # 10 of 100 judged in the last 60 s: 10 % > 5 %
    fired = records(root, RecordKind.ALERT)
    assert len(fired) == 1
    assert fired[0].reason == (
        "alert failing fired: error rate 10 % > 5 % over 100 requests (production v1, last 60 s)"
    )
    assert fired[0].version == 1 and fired[0].data["state"] == "firing" and fired[0].data["value"] == 0.1
    clock.now += 10
    engine(interval(clock, 1, "production", 100, 1, 5.0))  # 11 of 201: still above 5 %, no new record
    assert len(records(root, RecordKind.ALERT)) == 1
    clock.now += 61  # the failing intervals leave the window
    engine(interval(clock, 1, "production", 100, 0, 5.0))
    after = records(root, RecordKind.ALERT)
    assert len(after) == 2
    assert after[1].reason == (
        "alert failing resolved: error rate 0 % ≤ 5 % over 100 requests (production v1, last 60 s)"
    )
    evaluations = al.read_evaluations(resolve_root(str(root)), NAME)
    failing = evaluations[evaluations["alert"] == "failing"].sort_values("evaluated_at")
    assert failing["status"].tolist() == ["insufficient_data", "firing", "firing", "ok"]
    assert failing["transition"].tolist() == ["", "fired", "", "resolved"]
    assert set(evaluations["alert"]) == {"slow", "failing", "radius_shift"}  # the production arm of each, each time
    assert len(evaluations) == 12 and set(evaluations["arm"]) == {"production"}
    slow = evaluations[evaluations["alert"] == "slow"]
    assert set(slow["status"]) == {"insufficient_data", "ok"}
    shift = evaluations[evaluations["alert"] == "radius_shift"]
    assert set(shift["status"]) == {"insufficient_data"}  # no values were sampled: never judged, never fired


def test_a_psi_alert_compares_the_feature_with_the_versions_training_reference(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    import pyarrow as pa

    from model_ops.ml import drift
    from model_ops.ml.monitoring import PROFILE_LABEL

    reg = two_versions
    train = rows()
    profile = drift.profile(pa.table({"mean_radius": train["mean_radius"].to_numpy()}))
    reg.attach(NAME, 1, PROFILE_LABEL, profile.to_json().encode(), reason="the training rows' profile")
    clock = Clock()
    fleet = SimpleNamespace(slots={NAME: SimpleNamespace(spec=spec, manifest=Manifest(NAME, 1))})
    engine = al.AlertEngine(resolve_root(str(root)), fleet, lambda: Registry.open(root, actor="server"), clock=clock)
    values = train["mean_radius"].to_numpy()
    engine(interval(clock, 1, "production", len(values), 0, 5.0, values))  # the training distribution itself
    assert records(root, RecordKind.ALERT) == []
    clock.now += 120
    engine(interval(clock, 1, "production", len(values), 0, 5.0, values + 6.0))  # every radius 6 larger
    fired = records(root, RecordKind.ALERT)
    assert len(fired) == 1 and fired[0].data["alert"] == "radius_shift"
    assert fired[0].data["value"] > 0.2 and fired[0].reason.startswith("alert radius_shift fired: PSI of mean_radius")
    shift = al.read_evaluations(resolve_root(str(root)), NAME)
    shift = shift[shift["alert"] == "radius_shift"].sort_values("evaluated_at")
    assert shift["status"].tolist() == ["ok", "firing"] and shift["value"].iloc[0] < 0.05


class Receiver:
    """A loopback webhook receiver refusing (503) the first ``failures`` POSTs, then accepting."""

    def __init__(self, failures: int) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if len(receiver.requests) < receiver.failures else 200
                receiver.requests.append(
                    {
                        "doc": json.loads(body),
                        "delivery_id": self.headers[webhooks.DELIVERY_HEADER],
                        "signed": webhooks.verify_signature(
                            SECRET,
                            body,
                            self.headers[webhooks.TIMESTAMP_HEADER],
                            self.headers[webhooks.SIGNATURE_HEADER],
                        ),
                        "status": status,
                    }
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"no")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/alerts"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    r = Receiver(failures=3)
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_a_firing_alert_is_delivered_signed_to_a_receiver_that_fails_at_first(
    two_versions: Registry, root: Path, spec: ModelSpec, receiver: Receiver
) -> None:
    config = {
        "name": "oncall",
        "url": receiver.url,
        "secret_env": SECRET_ENV,
        "events": {"kinds": ["alert"]},
        "max_attempts": 5,
        "backoff": 0.05,
        "max_backoff": 0.2,
        "replay_history": True,
    }
    (root / "registry" / webhooks.CONFIG_NAME).write_text(yaml.safe_dump({"webhooks": [config]}))
    clock = Clock()
    fleet = SimpleNamespace(slots={NAME: SimpleNamespace(spec=spec, manifest=Manifest(NAME, 1))})
    engine = al.AlertEngine(resolve_root(str(root)), fleet, lambda: Registry.open(root, actor="server"), clock=clock)
    engine(interval(clock, 1, "production", 100, 0, 900.0))  # p99 900 ms > 250 ms
    wait_for(lambda: any(r["status"] == 200 for r in receiver.requests), timeout=60, what="the alert's delivery")
    attempts = receiver.requests
    assert [r["status"] for r in attempts] == [503, 503, 503, 200]  # retried with backoff until accepted
    assert all(r["signed"] for r in attempts)  # HMAC-SHA256 over the timestamp and the raw body, every time
    assert len({r["delivery_id"] for r in attempts}) == 1  # one delivery id across the retries
    event = attempts[-1]["doc"]["event"]
    assert attempts[-1]["doc"]["delivery_id"] == attempts[0]["delivery_id"]
    assert event["kind"] == "alert" and event["model"] == NAME and event["version"] == 1
    assert (
        event["reason"] == "alert slow fired: p99 latency 900 ms > 250 ms over 100 requests (production v1, last 60 s)"
    )


# ---------------------------------------------------------------------------------------------------- the guard


def fractional_canary(reg: Registry, spec: ModelSpec) -> int:
    """A v3 whose signature takes ``mean_radius`` as a whole number: it refuses (422) every real row, whose radii
    have fractions, while production takes them; it warms up on its probe row (radius 0)."""
    model = fit(spec, 0.5)
    signature = training.signature(spec, model.classes_.tolist())
    for i in signature["inputs"]:
        if i["name"] == "mean_radius":
            i["type"] = "int"
    mv = reg.register_model(NAME, model, signature=signature)
    reg.transition(mv.ref, "staging", reason="evaluated")
    return mv.version


@pytest.mark.slow
def test_the_guard_rolls_back_a_canary_that_refuses_requests_once_and_production_serves_alone(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    canary = fractional_canary(reg, spec)
    dep.apply(reg, spec, "deploy", version=canary, reason="canary of the int-radius build")
    assert dep.current(reg, NAME).canary == canary
    frame = rows()
    with serving(root, spec, stats_seconds=0.1) as (client, server):
        sent = 0

        def rolled_back() -> bool:
            nonlocal sent
            record = json_records(frame.iloc[[sent % len(frame)]])
            client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": record})
            sent += 1
            return server.fleet.slots[NAME].manifest.canary is None

        wait_for(rolled_back, timeout=120, what="the guard's rollback reaching the server")
        answers = [
            client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": json_records(frame.iloc[[i]])})
            for i in range(40)
        ]
        assert all(a.status_code == 200 for a in answers)
        assert {(a.json()["model_version"], a.json()["arm"]) for a in answers} == {("1", "production")}
        shown = client.get("/status").json()["serving_stats"]
        assert shown["guard_rollbacks"] == 1 and shown["guard_failures"] == 0
    rollbacks = [e for e in records(root, RecordKind.DEPLOYMENT) if e.data.get("action") == "rollback"]
    assert len(rollbacks) == 1  # once, though the canary kept failing until the server followed
    reason = rollbacks[0].reason
    # the rows whose radius happens to be a whole number are answered by the canary; every other one is refused
    found = re.fullmatch(r"canary guard: error rate ([\d.]+) % > 5 % over (\d+) requests in the last 30 s", reason)
    assert found is not None, reason
    assert float(found[1]) > 80 and int(found[2]) >= 20
    assert Registry.open(root, actor="reader").get(NAME, canary).stage == "archived"
    assert server.stats is not None and server.stats.listener_errors == 0
    evaluations = al.read_evaluations(resolve_root(str(root)), NAME)
    guard = evaluations[evaluations["alert"] == al.GUARD]
    assert (guard["transition"] == "fired").sum() == 1  # one breach acted on; later ones saw the write in flight


def test_a_refused_rollback_is_counted_and_the_server_goes_on(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    dep.apply(reg, spec, "deploy", reason="canary v2")
    slot = SimpleNamespace(spec=spec, manifest=dep.current(reg, NAME))
    fleet = SimpleNamespace(slots={NAME: slot})

    def damaged() -> Registry:
        raise OSError("the registry's log cannot be read")

    clock = Clock()
    engine = al.AlertEngine(resolve_root(str(root)), fleet, damaged, clock=clock)
    engine(interval(clock, 2, "canary", 10, 40, 5.0))  # 80 % errors on the canary
    engine.join()
    assert engine.guard_failures == 1 and engine.guard_rollbacks == 0
    engine(interval(clock, 2, "canary", 10, 40, 5.0))  # not retried before the pause is over
    engine.join()
    assert engine.guard_failures == 1
    clock.now += al.GUARD_RETRY_SECONDS + 1
    engine(interval(clock, 2, "canary", 10, 40, 5.0))
    engine.join()
    assert engine.guard_failures == 2
    assert dep.current(reg, NAME).canary == 2  # nothing was rolled back


# ---------------------------------------------------------------------------------------------------- declaration


@pytest.mark.parametrize(
    ("alerts", "deployment", "expected"),
    [
        ([{"name": "x", "kind": "latency", "threshold": 1}], {}, "kind"),
        ([{"name": "x", "kind": "error_rate", "threshold": 5}], {}, "a fraction below 1"),
        ([{"name": "x", "kind": "error_rate", "threshold": 0}], {}, "threshold must be > 0"),
        ([{"name": "x", "kind": "psi", "threshold": 0.2}], {}, "names the `feature` it watches"),
        ([{"name": "x", "kind": "psi", "threshold": 0.2, "feature": "height"}], {}, "'height', which is not a feature"),
        ([{"name": "x", "kind": "error_rate", "threshold": 0.1, "feature": "site"}], {}, "belongs to psi alerts"),
        ([{"name": "x", "kind": "metric_drop", "threshold": 0.1}], {}, "names the `metric`"),
        ([{"name": "x", "kind": "metric_drop", "threshold": 0.1, "metric": "rmse"}], {}, "cannot be computed"),
        (
            [{"name": "x", "kind": "metric_drop", "threshold": 0.1, "metric": "roc_auc", "window_seconds": 60}],
            {},
            "drop window_seconds",
        ),
        ([{"name": "x", "kind": "error_rate", "threshold": 0.1, "arms": ["shadow"]}], {}, "arms"),
        ([{"name": "x", "kind": "error_rate", "threshold": 0.1, "arms": []}], {}, "production and/or canary"),
        ([{"name": "Bad Name", "kind": "error_rate", "threshold": 0.1}], {}, "alert name 'Bad Name'"),
        ([{"name": "x", "kind": "error_rate", "threshold": 0.1, "window": 60}], {}, "window"),
        (
            [
                {"name": "x", "kind": "error_rate", "threshold": 0.1},
                {"name": "x", "kind": "p99_latency_ms", "threshold": 9},
            ],
            {},
            "another alert has that name",
        ),
        ([], {"guard": {"min_requests": 10}}, "a canary guard needs a limit"),
        ([], {"guard": {"max_error_rate": 1.5}}, "max_error_rate must be >= 0 and < 1"),
        ([], {"guard": {"max_p99_ms": 100, "window_seconds": 0}}, "window_seconds must be > 0"),
        ([], {"guard": {"max_p99_ms": 100, "max_errors": 3}}, "max_errors"),
    ],
)
def test_bad_alerts_and_guards_are_refused_naming_the_problem(
    tmp_path: Path, alerts: list[dict[str, Any]], deployment: dict[str, Any], expected: str
) -> None:
    doc = declaration(tmp_path)
    doc["alerts"] = alerts
    doc["deployment"] = {**doc["deployment"], **deployment}
    with pytest.raises(ValidationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec.model_validate(doc)


def test_a_declared_alert_and_guard_are_read_and_do_not_change_asset_code_versions(tmp_path: Path) -> None:
    plain = ModelSpec.model_validate(declaration(tmp_path))
    guarded = ModelSpec.model_validate(alerting(tmp_path, guard={"max_error_rate": 0.01}))
    assert [a.name for a in guarded.alerts] == ["slow", "failing", "radius_shift"]
    assert guarded.alerts[2].window == 60.0 and guarded.alerts[0].arms == ["production", "canary"]
    assert guarded.deployment.guard is not None and guarded.deployment.guard.min_requests == 200
    for sections in (("deployment",), ("features", "monitoring"), ()):
        assert plain.fingerprint(*sections) == guarded.fingerprint(*sections)
    # a version trained without the watched feature is still served: its view of the declaration drops the alert
    narrow = training.version_spec(guarded, {"inputs": [{"name": f, "type": "float"} for f in FEATURES[1:]]})
    assert [a.name for a in narrow.alerts] == ["slow", "failing"]


# ---------------------------------------------------------------------------------------------------- the asset


def test_the_serving_health_asset_shows_latency_throughput_and_error_rate_per_version_and_arm(
    tmp_path: Path, root: Path, spec: ModelSpec
) -> None:
    import dagster as dg

    from model_ops.defs.monitoring import serving_health_asset
    from model_ops.defs.resources import ModelOpsResource

    asset = serving_health_asset(spec)
    resource = ModelOpsResource(root=str(root))
    with dg.build_asset_context(partition_key="2024-01-07", resources={"model_ops": resource}) as context:
        empty = asset(context=context)
    assert empty.metadata["requests"] == 0 and "no live traffic recorded for 2024-01-07" in empty.metadata["status"]

    stats = st.ServingStats(resolve_root(str(root)), {NAME: spec}, server="host:1")
    t0 = datetime(2024, 1, 8, tzinfo=timezone.utc)
    for i, (requests, errors, canary_errors) in enumerate([(90, 1, 9), (110, 1, 1)]):  # two 10 s intervals
        cells = {
            (NAME, "2024-01-07", 1, "production"): st.Cell(requests, requests, errors, [4.0] * requests),
            (NAME, "2024-01-07", 2, "canary"): st.Cell(10, 10, canary_errors, [40.0] * 10),
            (NAME, "2024-01-14", 1, "production"): st.Cell(5, 5, 0, [4.0] * 5),  # another partition: not counted
        }
        start = t0 + timedelta(seconds=10 * i)
        done = st.Interval(start, start + timedelta(seconds=10), cells, {}, {(NAME, 1): "1.0.0", (NAME, 2): "1.1.0"})
        for model, table in stats.tables(done).items():
            stats._append(model, table)
    with dg.build_asset_context(partition_key="2024-01-07", resources={"model_ops": resource}) as context:
        shown = asset(context=context).metadata
    assert shown["production_v1_requests"] == 200 and shown["production_v1_errors"] == 2
    assert shown["production_v1_error_rate"] == pytest.approx(2 / 202, rel=1e-3)
    assert shown["production_v1_throughput_rps"] == pytest.approx(200 / 20, rel=1e-3)
    assert shown["canary_v2_error_rate"] == pytest.approx(10 / 30, rel=1e-3)  # shown to four digits
    assert 3.0 < shown["production_v1_latency_p99_ms"] <= 5.0  # every answer took 4 ms: the (3, 5] bucket
    assert 30.0 < shown["canary_v2_latency_p50_ms"] <= 50.0
    assert shown["requests"] == 220 and shown["errors"] == 12
    assert shown["servers"] == "host:1"


def test_a_metric_drop_alert_is_judged_per_partition_where_the_labels_are(root: Path, tmp_path: Path) -> None:
    doc = declaration(tmp_path)
    doc["alerts"] = [{"name": "auc_drop", "kind": "metric_drop", "metric": "roc_auc", "threshold": 0.05}]
    spec = ModelSpec.model_validate(doc)
    reg = Registry.open(root, actor="tester")
    model = fit(spec, 1.0)
    reg.register_model(
        NAME, model, signature=training.signature(spec, model.classes_.tolist()), metrics={"roc_auc": 0.95}
    )
    location = resolve_root(str(root))

    def judge(partition: str, live_auc: float, labelled: int = 600) -> al.Evaluation:
        arm = SimpleNamespace(arm="production", model_version=1, labelled=labelled, metrics={"roc_auc": live_auc})
        (result,) = al.judge_metric_drops(reg, location, spec, partition, [arm])
        return result

    assert judge("2024-01-07", 0.93).status == "ok"  # 0.02 below its evaluation: within 0.05
    fired = judge("2024-01-14", 0.85)
    assert fired.status == "firing" and fired.transition == "fired" and fired.value == pytest.approx(0.10)
    assert judge("2024-01-21", 0.80, labelled=20).status == "insufficient_data"  # 20 < min_requests 100
    assert judge("2024-01-28", 0.84).transition == ""  # still firing: no second record
    assert judge("2024-02-04", 0.94).transition == "resolved"
    alerts = records(root, RecordKind.ALERT)
    assert [e.data["state"] for e in alerts] == ["firing", "resolved"]
    assert alerts[0].reason == (
        "alert auc_drop fired: roc_auc dropped by 0.1 > 0.05 against its evaluation (roc_auc 0.85 live vs 0.95 "
        "evaluated) over 600 labelled predictions (production v1, partition 2024-01-14)"
    )
    assert len(al.read_evaluations(location, NAME)) == 5
    # A backfill of an older partition, and a re-run of one judged the same, change no state.
    assert judge("2024-01-14", 0.85).transition == ""  # re-run: firing then, firing now
    assert judge("2023-12-31", 0.94).transition == ""  # before any firing: ok, as the state there was
    assert judge("2024-02-11", 0.93).transition == ""  # after the resolution: still ok
    assert [e.data["state"] for e in records(root, RecordKind.ALERT)] == ["firing", "resolved"]


def test_a_request_spanning_partitions_counts_once_and_its_rows_in_each(root: Path, spec: ModelSpec) -> None:

    from model_ops.serving.stats import ServingStats
    from model_ops.vocab import Arm

    plain = spec.model_copy(update={"alerts": []})  # no PSI alert: no feature values sampled
    stats = ServingStats(resolve_root(str(root)), {spec.name: plain}, seconds=3600)
    version = SimpleNamespace(number=1, semver="1.0.0")
    partitions = np.array(["2024-01-07", "2024-01-07", "2024-01-14"], dtype=object)
    served = SimpleNamespace(
        slot=SimpleNamespace(model=spec.name),
        logged=[(Arm.PRODUCTION, version, {"idx": np.arange(3)}, 3)],
        partitions=partitions,
        frame=None,
    )
    stats.served(served, 0.02)
    interval = stats.flush()
    (cell,) = interval.by_arm(spec.name).values()
    assert (cell.requests, cell.rows, cell.latencies_ms) == (1, 3, [20.0])
    per_partition = {k[1]: (c.requests, c.rows) for k, c in interval.cells.items()}
    assert per_partition == {"2024-01-07": (1, 2), "2024-01-14": (0, 1)}
