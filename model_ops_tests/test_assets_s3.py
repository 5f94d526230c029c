"""The same lifecycle with every Delta table and artifact on S3 (a real S3 endpoint on loopback)."""

from __future__ import annotations

import dagster as dg
import pytest

from model_ops.defs.resources import resources
from model_ops.errors import UsageError
from model_ops.ops import deployment as dep
from model_ops_tests.graph_helpers import TRAIN_TO_DEPLOY, Graph
from model_ops_tests.helpers import s3_keys

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def test_lifecycle_on_s3(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_OPS_ENV", "s3")
    monkeypatch.setenv("MODEL_OPS_ROOT", s3_root)
    assert resources()["model_ops"].location().uri == s3_root
    with dg.instance_for_test() as instance:
        g = Graph(instance, s3_root)
        g.ingest("flight_delay", "2013-01-01", "2013-02-01")
        assert g.run("flight_delay", TRAIN_TO_DEPLOY).success
        assert g.run("flight_delay", ("predictions",), partition="2013-02-01").success
        reg = g.registry()
        assert dep.current(reg, "flight_delay").production == 1
        assert reg.fsck() == []
        assert reg.resolve("models:/flight_delay@champion").dataset["uri"].startswith(s3_root)
        assert len(g.resource.dataset("flight_delay", "predictions").read()) > 20000

    prefix = s3_root[len("s3://") :].split("/", 1)[1]
    keys = s3_keys(s3_root)
    for part in (
        "datasets/flight_delay/features/",
        "datasets/flight_delay/predictions/",
        "registry/events/",
        "artifacts/sha256/",
    ):
        assert any(f"{prefix}/{part}" in k for k in keys), part


def test_s3_environment_needs_an_s3_root(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODEL_OPS_ENV", "s3")
    monkeypatch.setenv("MODEL_OPS_ROOT", str(tmp_path))
    with pytest.raises(UsageError, match="MODEL_OPS_ENV=s3 needs MODEL_OPS_ROOT=s3://"):
        resources()
    monkeypatch.setenv("MODEL_OPS_ENV", "cloud")
    with pytest.raises(UsageError, match="MODEL_OPS_ENV=cloud is not an environment"):
        resources()
