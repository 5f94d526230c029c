"""Model specs: the built-in one is valid, a user's folder adds models, and a bad file is named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model_ops.specs import SpecError, load_spec, load_specs
from model_ops.specs.loader import BUILTIN_DIR

BUILTIN = BUILTIN_DIR / "flight_delay.yaml"


def builtin_data() -> dict:
    return yaml.safe_load(BUILTIN.read_text())


def write(folder: Path, name: str, data: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_builtin_spec_is_complete() -> None:
    spec = load_spec(BUILTIN)
    assert spec.name == "flight_delay"
    assert spec.target.source_column == "arr_delay" and spec.target.threshold == 15
    assert spec.gates.thresholds and spec.gates.max_regression and spec.gates.latency_sla_ms
    assert spec.deployment.canary_steps == sorted(spec.deployment.canary_steps)
    assert [s.name for s in load_specs()] == ["flight_delay"]


def test_fingerprint_tracks_only_the_named_sections() -> None:
    data = builtin_data()
    a = load_spec(write(Path(__import__("tempfile").mkdtemp()), "a.yaml", data))
    data["gates"]["thresholds"]["roc_auc"]["min"] = 0.7
    b = load_spec(write(Path(__import__("tempfile").mkdtemp()), "b.yaml", data))
    assert a.fingerprint("features") == b.fingerprint("features")
    assert a.fingerprint("gates") != b.fingerprint("gates")


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d.update(estimater=d.pop("estimator")), "estimater", "unknown field"),
    (lambda d: d["estimator"].update({"class": "sklearn.svm.SVC"}), "estimator.class", "not supported"),
    (lambda d: d["features"].append({"name": "dep_delay", "type": "float"}), "(top level)", "leak"),
    (lambda d: d["features"].append({"name": "colour", "type": "float"}), "(top level)", "not provided"),
    (lambda d: d["features"][0].update(type="text"), "features.0.type", "int"),
    (lambda d: d["deployment"].update(canary_steps=[0.5, 0.1]), "deployment.canary_steps", "increasing"),
    (lambda d: d.update(name="Flight-Delay"), "name", "not a valid model name"),
    (lambda d: d["gates"]["thresholds"].update(auc={"min": 0.5}), "(top level)", "unknown"),
    (lambda d: d.pop("target"), "target", "required field is missing"),
])
def test_invalid_spec_names_file_field_and_problem(tmp_path: Path, mutate, field: str, words: str) -> None:
    data = builtin_data()
    data["name"] = "broken_model"
    mutate(data)
    path = write(tmp_path, "broken.yaml", data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"field {field}" in message and words in message, message
    assert err.value.exit_code == 2


def test_unparseable_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: x\nfeatures: [\n  - a: 1\n")
    with pytest.raises(SpecError, match=r"bad.yaml is not valid YAML at line \d+"):
        load_spec(path)


def test_specs_dir_adds_models_and_refuses_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = builtin_data()
    data["name"] = "dep_delay_30"
    write(tmp_path / "specs", "dep.yaml", data)
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "specs"))
    assert [s.name for s in load_specs()] == ["flight_delay", "dep_delay_30"]
    data["name"] = "flight_delay"
    write(tmp_path / "specs", "again.yaml", data)
    with pytest.raises(SpecError, match="declared twice"):
        load_specs()
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match="is not a folder"):
        load_specs()


def test_invalid_spec_stops_definitions_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_ops.definitions import build_definitions

    data = builtin_data()
    data["name"] = "other"
    data["features"][0]["max_null_fraction"] = 2
    path = write(tmp_path / "specs", "other.yaml", data)
    monkeypatch.setenv("MODEL_OPS_SPECS_DIR", str(tmp_path / "specs"))
    with pytest.raises(SpecError, match=rf"{path}.*field features.0.max_null_fraction"):
        build_definitions()
