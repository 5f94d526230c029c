"""Model declarations: the built-in one is valid, a user's folder adds models, a declaration is checked against its
source's real schema, and every bad file is refused naming the file, the field and the problem."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from model_ops.data.partitions import Partitioning
from model_ops.specs import SpecError, load_spec, load_specs
from model_ops.specs.loader import COMPONENTS_DIR, spec_attributes
from model_ops.vocab import Cadence

BUILTIN = COMPONENTS_DIR / "flight_delay" / "defs.yaml"


def builtin_data() -> dict:
    return spec_attributes(BUILTIN)


def write(folder: Path, name: str, data: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def cancer_table(path: Path) -> Path:
    """scikit-learn's bundled breast-cancer data as a Delta table with a daily time column and a key."""
    from deltalake import write_deltalake
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["patient_id"] = [f"p{i:04d}" for i in range(len(frame))]
    frame["seen_at"] = pd.Timestamp("2023-12-31", tz="UTC") + pd.to_timedelta(np.arange(len(frame)) // 20, unit="D")
    frame["site"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    write_deltalake(str(path), frame)
    return path


def cancer_decl(uri: Path, **changes: object) -> dict:
    data = {
        "name": "cancer",
        "description": "Malignant or benign, from the bundled breast-cancer data.",
        "owner": "team:clinic",
        "task": "binary_classification",
        "source": {"kind": "delta", "uri": str(uri), "time_column": "seen_at", "key_column": "patient_id"},
        "partitions": {"cadence": "weekly", "start": "2023-12-31"},
        "features": [{"name": "mean_radius"}, {"name": "mean_texture", "min": 0}, {"name": "site"}],
        "target": {"column": "target"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
    }
    data.update(changes)
    return data


def test_builtin_declaration_is_complete() -> None:
    spec = load_spec(BUILTIN)
    assert spec.name == "flight_delay" and spec.label == "delayed"
    assert spec.target.column == "arr_delay" and spec.target.threshold == 15 and spec.target.derived
    assert spec.key_column == "flight_id" and spec.time_column == "time_hour"
    assert spec.partitioning is not None and spec.partitioning.cadence is Cadence.MONTHLY
    assert spec.gates.thresholds and spec.gates.max_regression and spec.gates.latency_sla_ms
    assert "flight_delay" in [s.name for s in load_specs()]


def test_fingerprint_tracks_only_the_named_sections(tmp_path: Path) -> None:
    data = builtin_data()
    a = load_spec(write(tmp_path / "a", "a.yaml", data))
    data["gates"]["thresholds"]["roc_auc"]["min"] = 0.7
    b = load_spec(write(tmp_path / "b", "b.yaml", data))
    assert a.fingerprint("features") == b.fingerprint("features")
    assert a.fingerprint("gates") != b.fingerprint("gates")


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d.update(estimater=d.pop("estimator")), "estimater", "unknown field"),
        (lambda d: d["estimator"].update({"class": "sklearn.linear_model.NoSuchModel"}), "estimator", "has no"),
        (lambda d: d["estimator"].update({"class": "nosuchpackage.Model"}), "estimator", "cannot be imported"),
        (lambda d: d["features"].append({"name": "dep_delay", "type": "float"}), "(top level)", "leak"),
        (lambda d: d["features"].append({"name": "arr_delay", "type": "float"}), "(top level)", "the target column"),
        (lambda d: d["features"][0].update(type="text"), "features[0].type", "int"),
        (lambda d: d["deployment"].update(canary_steps=[0.5, 0.1]), "deployment.canary_steps", "increasing"),
        (lambda d: d.update(name="Flight-Delay"), "name", "not a valid model name"),
        (lambda d: d["gates"]["thresholds"].update(auc={"min": 0.5}), "(top level)", "not computed"),
        (lambda d: d.update(task="regression"), "(top level)", "regression target"),
        (lambda d: d.update(trainer="os.path:nosuch"), "trainer", "has no function"),
        (lambda d: d.update(partitions={"cadence": "hourly", "start": "2013-01-01"}), "partitions.cadence", "daily"),
        (
            lambda d: d.update(partitions={"cadence": "monthly", "start": "2013-01-15"}),
            "partitions",
            "first of a month",
        ),
        (lambda d: d.update(partitions={"cadence": "monthly", "start": "soon"}), "partitions.start", "date"),
        (lambda d: d.pop("target"), "target", "required field is missing"),
        (lambda d: d["features"].append({"name": "score", "type": "float"}), "(top level)", "uses for its own columns"),
        (
            lambda d: d.update(partitions={"cadence": "weekly", "start": "2013-01-02"}),
            "partitions",
            "start on a Sunday",
        ),
    ],
)
def test_invalid_declaration_names_file_field_and_problem(tmp_path: Path, mutate, field: str, words: str) -> None:
    data = builtin_data()
    data["name"] = "broken_model"
    mutate(data)
    path = write(tmp_path, "broken.yaml", data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"field {field}" in message and words in message, message
    assert err.value.exit_code == 2


def test_a_declaration_is_checked_against_the_sources_own_schema(tmp_path: Path) -> None:
    from model_ops.defs.component import checked

    uri = cancer_table(tmp_path / "cancer")
    spec = load_spec(write(tmp_path, "ok.yaml", cancer_decl(uri)))
    typed = checked(spec, "ok.yaml")
    assert [str(f.type) for f in typed.features] == ["float", "float", "category"]  # from the Delta log
    cases = [
        ([{"name": "mean_colour"}], "features[0].name", "no column 'mean_colour'"),
        ([{"name": "site", "type": "float"}], "features[0].type", "is category in the source, not float"),
        ([{"name": "mean_radius", "type": "int"}], "features[0].type", "is float in the source, not int"),
    ]
    for features, field, words in cases:
        bad = load_spec(write(tmp_path, "bad.yaml", cancer_decl(uri, features=features)))
        with pytest.raises(SpecError) as err:
            checked(bad, str(tmp_path / "bad.yaml"))
        assert f"field {field}" in str(err.value) and words in str(err.value) and "bad.yaml" in str(err.value)
    with pytest.raises(SpecError, match="field source.time_column: the source has no column 'when'"):
        checked(
            load_spec(
                write(
                    tmp_path,
                    "t.yaml",
                    cancer_decl(
                        uri,
                        source={"kind": "delta", "uri": str(uri), "time_column": "when", "key_column": "patient_id"},
                    ),
                )
            ),
            "t.yaml",
        )
    with pytest.raises(SpecError, match="known_after"):
        load_spec(write(tmp_path, "leak.yaml", cancer_decl(uri, known_after=["mean_radius"])))


def test_unparseable_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: x\nfeatures: [\n  - a: 1\n")
    with pytest.raises(SpecError, match=r"bad.yaml is not valid YAML at line \d+"):
        load_spec(path)


def test_specs_dir_adds_models_and_refuses_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = builtin_data()
    data["name"] = "dep_delay_30"
    write(tmp_path / "specs", "dep.yaml", data)
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "specs"))
    names = [s.name for s in load_specs()]
    assert names[-1] == "dep_delay_30" and "flight_delay" in names
    data["name"] = "flight_delay"
    write(tmp_path / "specs", "again.yaml", data)
    with pytest.raises(SpecError, match="declared twice"):
        load_specs()
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match="is not a folder"):
        load_specs()


def test_invalid_declaration_stops_definitions_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_ops.definitions import build_definitions

    data = builtin_data()
    data["name"] = "other"
    data["features"][0]["max_null_fraction"] = 2
    path = write(tmp_path / "specs", "other.yaml", data)
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "specs"))
    with pytest.raises(SpecError, match=rf"{path}: field features\[0\]: max_null_fraction must be >= 0 and <= 1"):
        build_definitions()


@pytest.mark.parametrize(
    "cadence, start, end",
    [
        ("daily", "2024-02-27", "2024-03-03"),
        ("weekly", "2024-01-03", "2024-03-01"),
        ("monthly", "2023-11-01", "2024-03-01"),
    ],
)
def test_partition_keys_and_windows_match_dagsters(cadence: str, start: str, end: str) -> None:
    import dagster as dg

    ours = Partitioning(Cadence(cadence), date.fromisoformat(start), date.fromisoformat(end))
    theirs = {
        "daily": dg.DailyPartitionsDefinition,
        "weekly": dg.WeeklyPartitionsDefinition,
        "monthly": dg.MonthlyPartitionsDefinition,
    }[cadence](start_date=start, end_date=end)
    keys = theirs.get_partition_keys()
    assert ours.keys() == keys
    for k in keys:
        window = theirs.time_window_for_partition_key(k)
        lo, hi = ours.window(k)
        assert (lo.isoformat(), hi.isoformat()) == (window.start.isoformat(), window.end.isoformat())
    inside = pd.Series([ours.window(k)[0] + pd.Timedelta(hours=13) for k in keys])
    assert ours.key_of(inside).tolist() == keys
    assert ours.consecutive(keys) and (len(keys) < 3 or not ours.consecutive([keys[0], keys[2]]))
