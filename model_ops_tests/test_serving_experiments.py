"""A/B experiments on live traffic: declared in the registry (``model-ops experiment start/status/stop``), routed by
the live server exactly as by the batch path, fed by outcomes posted to ``/v2/models/{name}/outcomes``, decided by
the sequential test (a winner that is truly better, "no difference" for an A/A at its maximum sample, a
sample-ratio mismatch when one arm's outcomes are withheld), recorded once in the audit log, and rebuilt after a
restart from the outcomes table and the prediction log.

The versions are test_serving's: v1 (C=1, right on about 97 % of the bundled breast-cancer rows) and v2 (C=0.001,
right on about 73 %), so "correct" truly differs between them; an A/A registers a copy of v1 as v3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from deltalake import write_deltalake

from model_ops.cli import main
from model_ops.data.delta import PARTITION
from model_ops.data.partitions import Partitioning
from model_ops.defs.predictions import score_partition
from model_ops.location import resolve_root
from model_ops.ml import training
from model_ops.ops import deployment as dep
from model_ops.ops import experiments as ex
from model_ops.registry import Registry
from model_ops.serving.abtest import LiveExperiment, outcomes_dataset
from model_ops.specs import ModelSpec
from model_ops_tests import test_serving as base
from model_ops_tests.test_serving import NAME, logged, rows, serving, wait_for

# test_serving's fixtures: the declared model, and v1 in production with v2 in staging
spec = base.spec
two_versions = base.two_versions

# ---------------------------------------------------------------------------------------------------- helpers


def traffic(n: int, seed: int = 0, prefix: str = "k") -> pd.DataFrame:
    """``n`` requests' rows: the bundled rows drawn with replacement, each under a key of its own."""
    data = rows()
    picked = data.iloc[np.random.default_rng(seed).integers(0, len(data), n)].reset_index(drop=True)
    picked["record_id"] = [f"{prefix}{i:05d}" for i in range(n)]
    return picked


def start(
    reg: Registry, arms: dict[str, int], name: str = "ab", outcome: str = "correct", **design: Any
) -> ex.Declared:
    kind, better = ex.OUTCOME_DEFAULTS[outcome]
    design = {"max_sample": 5_000, "min_sample": 100, "kind": kind, "better": better, **design}
    cfg = ex.ExperimentConfig(
        name=name,
        model=NAME,
        arms=tuple(ex.ArmConfig(v, 1 / len(arms), a) for a, v in arms.items()),
        metric=outcome,
        **design,
    )
    ex.start(reg, cfg, outcome)
    running = ex.running(reg.audit(NAME))
    assert running is not None
    return running


def register_copy_of_v1(reg: Registry, spec: ModelSpec) -> int:
    """v1's fit again, to a tighter tolerance: another artifact (another version) that predicts as v1 does."""
    data = rows()
    model = training.pipeline(spec)
    model.set_params(model__C=1.0, model__tol=1e-8)
    model.fit(training.model_input(data, spec), training.target(data, spec))
    mv = reg.register_model(NAME, model, signature=training.signature(spec, model.classes_.tolist()))
    assert mv.version == 3
    return mv.version


def serve(client: httpx.Client, frame: pd.DataFrame, chunk: int = 250) -> pd.DataFrame:
    """Every row through MLflow's /invocations; what answered each key."""
    out = []
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    for i in range(0, len(records), chunk):
        r = client.post(f"/v2/models/{NAME}/invocations", json={"dataframe_records": records[i : i + chunk]})
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(
            pd.DataFrame(
                {
                    "record_id": frame["record_id"].iloc[i : i + chunk].to_numpy(),
                    "model_version": body["model_versions"],
                    "arm": body["arms"],
                    "prediction": body["predictions"],
                }
            )
        )
    return pd.concat(out, ignore_index=True)


def post(client: httpx.Client, keys: Any, labels: Any) -> httpx.Response:
    items = [{"key": k, "label": v} for k, v in zip(keys, labels)]
    return client.post(f"/v2/models/{NAME}/outcomes", json={"outcomes": items})


def wait_experiment(client: httpx.Client, running: bool = True) -> dict[str, Any]:
    def state() -> Any:
        return client.get("/status").json()["models"].get(NAME, {}).get("experiment")

    wait_for(lambda: (state() is not None) == running, timeout=30, what="the server following the experiment")
    return state()


def batches(keys: pd.Series, labels: pd.Series, size: int) -> Iterator[tuple[pd.Series, pd.Series]]:
    for i in range(0, len(keys), size):
        yield keys.iloc[i : i + size], labels.iloc[i : i + size]


# ---------------------------------------------------------------------------------------------------- routing


@pytest.mark.slow
def test_the_server_and_the_batch_path_route_an_experiment_alike(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    dep.apply(reg, spec, "deploy", reason="canary at 50 %")  # v2 canary: held while the experiment runs
    shadow = register_copy_of_v1(reg, spec)
    reg.transition(f"models:/{NAME}/{shadow}", "staging", reason="evaluated")
    dep.apply(reg, spec, "shadow_on", version=shadow, reason="watch v3")  # scored on every row, served on none
    running = start(reg, {"control": 1, "challenger": 2})
    frame = traffic(400)
    features = frame.copy()
    features[PARTITION] = Partitioning.of(spec).key_of(features[spec.time_column])
    manifest = dep.current(reg, NAME)
    models = {v: reg.load_model(f"models:/{NAME}/{v}") for v in (1, 2, shadow)}
    semvers = {v: reg.get(NAME, v).semver for v in (1, 2, shadow)}
    batch = score_partition(features, manifest, models, spec, semvers, experiment=ex.Experiment(running.config))
    batch = batch[batch["served"]].set_index("record_id").loc[frame["record_id"]]
    sticky = ex.Experiment(running.config).assign(frame["record_id"])
    assert (batch["model_version"].to_numpy() == np.where(sticky == "control", 1, 2)).all()
    assert set(batch["arm"]) == {"production", "experiment"}  # v1 is production; v2's rows are the experiment's
    assert 150 < (sticky == "challenger").sum() < 250  # an even split, by the key's hash

    with serving(root, spec) as (client, _):
        live = wait_experiment(client)
        assert live["arms"] == {"control": 1, "challenger": 2}
        answered = serve(client, frame)
        assert answered["model_version"].tolist() == batch["model_version"].tolist()
        assert answered["arm"].tolist() == batch["arm"].tolist()
        assert answered["prediction"].tolist() == batch["prediction"].tolist()
        wait_for(lambda: len(logged(root)) >= 2 * len(frame), what="the served and shadow rows reaching the log")
        everything = logged(root)
        log = everything[everything["served"]].set_index("record_id").loc[frame["record_id"]]
        assert log["model_version"].tolist() == batch["model_version"].tolist()
        assert log["arm"].tolist() == batch["arm"].tolist()
        shadowed = everything[~everything["served"]]
        assert len(shadowed) == len(frame) and set(shadowed["model_version"]) == {shadow}
        assert set(shadowed["arm"]) == {"shadow"} and shadow not in set(answered["model_version"])

        # Stopped: the deployment manifest routes again, the canary at its weight.
        ex.stop(reg, NAME, "ab", reason="enough")
        wait_experiment(client, running=False)
        after = serve(client, frame)
        plain = score_partition(features, dep.current(reg, NAME), models, spec, semvers)
        plain = plain[plain["served"]].set_index("record_id").loc[frame["record_id"]]
        assert after["arm"].tolist() == plain["arm"].tolist() and set(after["arm"]) == {"production", "canary"}


# ---------------------------------------------------------------------------------------------------- decisions


@pytest.mark.slow
def test_outcomes_posted_over_http_declare_the_truly_better_version(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    start(reg, {"control": 2, "challenger": 1}, max_sample=3_000)  # v1 is right far more often
    frame = traffic(1_600, seed=1)
    truth = pd.Series(training.target(frame, spec), index=frame.index)
    with serving(root, spec) as (client, server):
        wait_experiment(client)
        answered = serve(client, frame)
        assert set(answered["model_version"]) == {1, 2}
        decisions = []
        for keys, labels in batches(frame["record_id"], truth, 100):
            r = post(client, keys.tolist(), labels.tolist())
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["accepted"] == len(keys) and body["unknown"] == 0
            decisions.append(body["status"])
            if body["status"] == ex.WINNER:
                break
        assert decisions[-1] == ex.WINNER and set(decisions[:-1]) <= {ex.RUNNING}
        assert body["winner"] == "challenger" and body["winner_version"] == 1
        assert body["recorded"] == "winner:challenger" and "challenger beats control" in body["reason"]
        # later outcomes change nothing and the conclusion is not written again
        extra = traffic(60, seed=2, prefix="late")
        serve(client, extra)
        late = post(client, extra["record_id"].tolist(), training.target(extra, spec).tolist()).json()
        assert late["status"] == ex.WINNER and late["late"] == 60 and late["accepted"] == 60
        assert len(ex.recorded_conclusions(reg, NAME, "ab")) == 1
        # the server keeps serving, by the experiment, until it is stopped
        again = serve(client, frame.head(50))
        assert again["model_version"].tolist() == answered["model_version"].head(50).tolist()
    (record,) = ex.recorded_conclusions(reg, NAME, "ab")
    assert record.version == 1 and record.data["conclusion"] == "winner:challenger"
    p = record.data["decision"]["comparisons"][0]["p_value"]
    assert p <= 0.05
    # the outcomes table holds every accepted outcome, each key once
    stored = outcomes_dataset(resolve_root(str(root)), NAME).read()
    assert stored["key"].is_unique and len(stored) == int(sum(a["n"] for a in record.data["decision"]["arms"])) + 60


@pytest.mark.slow
def test_an_a_a_experiment_ends_in_no_difference_at_its_maximum_sample(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    start(reg, {"a": 1, "b": register_copy_of_v1(reg, spec)}, name="aa", max_sample=300, min_sample=100)
    frame = traffic(900, seed=3)
    truth = pd.Series(training.target(frame, spec), index=frame.index)
    with serving(root, spec) as (client, _):
        wait_experiment(client)
        serve(client, frame)
        statuses = []
        for keys, labels in batches(frame["record_id"], truth, 150):
            body = post(client, keys.tolist(), labels.tolist()).json()
            statuses.append(body["status"])
            if body["status"] != ex.RUNNING:
                break
    assert statuses[-1] == ex.NO_DIFFERENCE and set(statuses[:-1]) == {ex.RUNNING}
    counts = body["decision"]["arms"]
    assert min(a["n"] for a in counts) >= 300 and "no difference" in body["reason"]
    (record,) = ex.recorded_conclusions(reg, NAME, "aa")
    assert record.data["conclusion"] == ex.NO_DIFFERENCE and record.version is None


@pytest.mark.slow
def test_withholding_one_arms_outcomes_is_flagged_as_a_sample_ratio_mismatch(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    running = start(reg, {"control": 1, "challenger": register_copy_of_v1(reg, spec)}, name="srm", max_sample=5_000)
    frame = traffic(1_200, seed=4)
    truth = pd.Series(training.target(frame, spec), index=frame.index)
    arm = ex.Experiment(running.config).assign(frame["record_id"])
    # a quarter of the challenger's outcomes never arrive (a logging fault on one arm)
    kept = (arm == "control") | (np.arange(len(frame)) % 4 != 0)
    with serving(root, spec) as (client, _):
        wait_experiment(client)
        serve(client, frame)
        keys, labels = frame["record_id"][kept], truth[kept]
        bodies = [post(client, k.tolist(), v.tolist()).json() for k, v in batches(keys, labels, 200)]
    last = bodies[-1]
    assert last["status"] == ex.SRM and last["decision"]["srm"]["flagged"]
    assert "sample ratio mismatch" in last["reason"] and last["winner"] is None
    assert [r.data["conclusion"] for r in ex.recorded_conclusions(reg, NAME, "srm")] == [ex.SRM]


# ---------------------------------------------------------------------------------------------------- the endpoint


def test_bad_outcomes_are_refused_and_unknown_keys_reported(
    two_versions: Registry, root: Path, spec: ModelSpec
) -> None:
    reg = two_versions
    frame = traffic(40, seed=5)
    with serving(root, spec) as (client, _):
        r = post(client, ["k00000"], [1])
        assert r.status_code == 409 and "no A/B experiment is running" in r.json()["error"]
        start(reg, {"control": 1, "challenger": 2})
        wait_experiment(client)
        serve(client, frame)
        url = f"/v2/models/{NAME}/outcomes"
        for doc, status, words in (
            ([1, 2], 422, "JSON object"),
            ({"outcomes": []}, 422, "non-empty list"),
            ({"outcomes": [{"key": "k00000"}]}, 422, "outcomes[0] has no label"),
            ({"outcomes": [{"key": "k00001", "label": 1}, {"label": 0}]}, 422, "outcomes[1] has no key"),
            ({"outcomes": [{"key": ["k"], "label": 1}]}, 422, "is not a key"),
        ):
            r = client.post(url, json=doc)
            assert r.status_code == status and words in r.json()["error"], (doc, r.text)
        assert client.post(url, content=b"{not json").status_code == 400
        assert client.post("/v2/models/nope/outcomes", json={"outcomes": [{"key": 1, "label": 1}]}).status_code == 404

        ok = post(client, ["k00000", "never-served", "k00001", "k00000"], [1, 0, 0, 1]).json()
        assert ok["received"] == 4 and ok["accepted"] == 2
        assert ok["unknown"] == 1 and ok["unknown_keys"] == ["never-served"] and ok["duplicates"] == 1
        assert post(client, ["k00001"], [1]).json()["duplicates"] == 1  # a key's outcome counts once
        status = wait_experiment(client)
        assert sum(status["counts"].values()) == 2
        assert status["unknown_outcomes"] == 1
    stored = outcomes_dataset(resolve_root(str(root)), NAME).read()
    assert sorted(stored["key"]) == ["k00000", "k00001"]


def test_the_state_is_rebuilt_after_a_restart(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    reg = two_versions
    start(reg, {"control": 2, "challenger": 1}, max_sample=3_000, min_sample=50)
    frame = traffic(300, seed=6)
    truth = pd.Series(training.target(frame, spec), index=frame.index)
    first, rest = frame.iloc[:200], frame.iloc[200:]
    with serving(root, spec) as (client, server):
        wait_experiment(client)
        serve(client, frame)
        for keys, labels in batches(first["record_id"], truth.iloc[:200], 50):
            assert post(client, keys.tolist(), labels.tolist()).status_code == 200
        before = server.fleet.slots[NAME].experiment.experiment.to_dict()
    wait_for(lambda: len(logged(root)) >= len(frame), what="the served rows reaching the log")
    with serving(root, spec) as (client, server):
        wait_experiment(client)
        live = server.fleet.slots[NAME].experiment
        assert live.experiment.to_dict() == before  # every look replayed: the same always-valid p-values
        assert live.remembered == len(frame)  # which arm served each key, from the prediction log
        again = post(client, first["record_id"].head(5).tolist(), truth.head(5).tolist()).json()
        assert again["duplicates"] == 5 and again["accepted"] == 0
        more = post(client, rest["record_id"].tolist(), truth.iloc[200:].tolist()).json()
        assert more["accepted"] == 100 and more["unknown"] == 0
        assert sum(a["n"] for a in more["decision"]["arms"]) == min(300, sum(before["n"]) + 100)


# ---------------------------------------------------------------------------------------------------- the CLI


def cli(root: Path, *argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--root", str(root), "--actor", "tester", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_the_cli_starts_reports_and_stops_an_experiment(
    two_versions: Registry, root: Path, spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = two_versions
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "specs"))
    for argv, words in (
        (["--name", "x", "--arm", "a=1"], "two or more arms"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=9"], "has no version 9"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=two"], "is not NAME=VERSION"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=1"], "each arm serves its own version"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=2", "--weight", "0.5", "--weight", "0.4"], "sum to 0.9"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=2", "--weight", "c=0.5"], "names no arm"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=2", "--alpha", "1.5"], "alpha must be within"),
        (["--name", "x", "--arm", "a=1", "--arm", "b=2", "--outcome", "abs_error", "--kind", "binary"], "continuous"),
    ):
        code, out, err = cli(root, "experiment", "start", NAME, *argv)
        assert code == 2 and words in err, (argv, err)
    assert ex.running(reg.audit(NAME)) is None  # nothing was started by a refused command

    code, out, err = cli(
        root, "experiment", "start", NAME, "--name", "ab", "--arm", "control=1", "--arm", "challenger=2",
        "--weight", "control=0.75", "--weight", "challenger=0.25", "--min-sample", "50", "--max-sample", "2000",
    )  # fmt: skip
    assert code == 0, err
    assert "experiment ab started" in out and "control v1 at 75%" in out
    running = ex.running(reg.audit(NAME))
    assert running is not None and list(running.config.weights) == [0.75, 0.25]
    code, _, err = cli(root, "experiment", "start", NAME, "--name", "ab2", "--arm", "a=1", "--arm", "b=2")
    assert code == 2 and "already runs the experiment 'ab'" in err

    # outcomes joined from the declared labels table: the prediction log's keys and their labels
    frame = traffic(600, seed=7)
    features = frame.copy()
    features[PARTITION] = Partitioning.of(spec).key_of(features[spec.time_column])
    models = {v: reg.load_model(f"models:/{NAME}/{v}") for v in (1, 2)}
    semvers = {v: reg.get(NAME, v).semver for v in (1, 2)}
    log = score_partition(
        features, dep.current(reg, NAME), models, spec, semvers, experiment=ex.Experiment(running.config)
    )
    from model_ops.serving.predlog import predictions_dataset

    log_table = predictions_dataset(resolve_root(str(root)), NAME)
    write_deltalake(log_table.uri, log, mode="append", partition_by=[PARTITION])
    code, out, err = cli(root, "experiment", "status", NAME, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["joined"] is None and doc["decision"]["status"] == ex.RUNNING  # no labels table declared yet
    assert "declares no labels table" in doc["notes"][0]

    labels_uri = tmp_path / "tables" / "labels"
    write_deltalake(str(labels_uri), pd.DataFrame({"record_id": frame["record_id"], "target": frame["target"]}))
    path = tmp_path / "specs" / f"{NAME}.yaml"
    import yaml

    declared = yaml.safe_load(path.read_text())
    declared["labels"] = {"kind": "delta", "uri": str(labels_uri), "key_column": "record_id", "column": "target"}
    path.write_text(yaml.safe_dump(declared))
    code, out, err = cli(root, "experiment", "status", NAME)
    assert code == 0, err
    assert "decision    winner: control (v1)" in out and "600 outcomes" in out and "(now)" in out
    code, out, err = cli(root, "experiment", "status", NAME, "--name", "ab", "--json")
    doc = json.loads(out)
    assert doc["recorded"] == ["winner:control"] and not doc["recorded_now"]  # recorded once
    assert len(ex.recorded_conclusions(reg, NAME, "ab")) == 1

    code, _, err = cli(root, "experiment", "stop", NAME, "--name", "nope", "--reason", "x")
    assert code == 2 and "no experiment named 'nope'" in err
    code, out, err = cli(root, "experiment", "stop", NAME, "--name", "ab", "--reason", "v1 won")
    assert code == 0 and "stopped" in out
    assert "at the stop, by the outcomes posted to the server: running" in out  # none were posted, only joined
    assert ex.running(reg.audit(NAME)) is None
    code, _, err = cli(root, "experiment", "stop", NAME, "--name", "ab", "--reason", "again")
    assert code == 2 and "already stopped" in err
    code, _, err = cli(root, "experiment", "start", NAME, "--name", "ab", "--arm", "a=1", "--arm", "b=2")
    assert code == 2 and "already had an experiment named 'ab'" in err
    code, out, err = cli(root, "experiment", "status", NAME, "--name", "ab")
    assert code == 0 and "stopped at" in out and "v1 won" in out
    # beside the start and stop records, the conclusion is the experiment's only conclusion
    assert [e.data.get("action") for e in reg.audit(NAME) if e.kind == "experiment"] == ["start", None, "stop"]
    assert [e.data["conclusion"] for e in ex.recorded_conclusions(reg, NAME)] == ["winner:control"]


def test_the_memory_of_served_keys_is_bounded(two_versions: Registry, root: Path, spec: ModelSpec) -> None:
    running = start(two_versions, {"control": 1, "challenger": 2})
    live = LiveExperiment(running, spec, resolve_root(str(root)), lambda: two_versions, memory=3)
    keys = [f"k{i}" for i in range(5)]
    arms = ex.Experiment(running.config).assign(keys)
    versions = np.where(arms == "control", 1, 2)
    live.remember(keys, versions, [1] * 5, ["2024-01-07"] * 5)
    assert live.remembered == 3
    answer = live.post({"outcomes": [{"key": k, "label": 1} for k in keys]})
    assert answer["accepted"] == 3 and answer["unknown_keys"] == ["k0", "k1"]  # the oldest were forgotten


@pytest.mark.slow
def test_the_predictions_asset_routes_a_running_experiment_as_the_server_does(tmp_path: Path) -> None:
    """The real graph: with an experiment started after deployment, the ``predictions`` asset scores a week by the
    experiment's arms, and the live server answers the same records with the same versions."""
    from model_ops_tests.test_own_models import WEEKS, bundled, declaration, declare, lifecycle, write_table

    uri = str(tmp_path / "tables" / NAME)
    data = bundled("cancer")
    write_table(data, uri, "delta")
    features = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]
    estimator = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
    own = declare(tmp_path, declaration(NAME, uri, "binary_classification", features, estimator))
    week = WEEKS[-1]
    with lifecycle(tmp_path, own) as (g, _):
        reg = g.registry()
        production = dep.current(reg, NAME).production
        assert production is not None
        from model_ops.defs.common import typed_spec

        typed = typed_spec(own, g.resource.dataset(NAME, "features"))  # the feature types read from the data
        model = training.pipeline(typed)
        model.set_params(model__C=0.001)
        model.fit(training.model_input(data, typed), training.target(data, typed))
        challenger = reg.register_model(NAME, model, signature=training.signature(typed, model.classes_.tolist()))
        running = start(reg, {"control": production, "challenger": challenger.version})
        assert g.run(NAME, ("predictions",), partition=week).success
        log = g.resource.dataset(NAME, "predictions").read([week])
        served = log[log["served"]].set_index("record_id")
        sticky = ex.Experiment(running.config).assign(served.index.to_series())
        want = np.where(sticky == "control", production, challenger.version)
        assert (served["model_version"].to_numpy() == want).all() and len(set(want)) == 2
        assert set(served["arm"]) == {"production", "experiment"}

        in_week = data[data["record_id"].isin(served.index)].reset_index(drop=True)
        with serving(Path(g.root), own) as (client, _):
            wait_experiment(client)
            answered = serve(client, in_week).set_index("record_id")
        assert answered["model_version"].to_dict() == served.loc[answered.index, "model_version"].to_dict()
        assert answered["prediction"].to_dict() == served.loc[answered.index, "prediction"].to_dict()
