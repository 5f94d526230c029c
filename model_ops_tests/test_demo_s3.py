"""The demo with ``MODEL_OPS_ENV=s3``: datasets, registry, artifacts and the Dagster steps' logs all in the bucket
of a real S3 endpoint on loopback, nothing of the model_ops state on the local disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_ops_tests.helpers import s3_keys


@pytest.mark.slow
@pytest.mark.s3
def test_the_demo_replays_on_s3_end_to_end(s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    from model_ops.defs.instance import COMPUTE_LOGS_PREFIX
    from model_ops.defs.replay import run_demo, story_problems
    from model_ops.defs.workspace import synchronous_instance

    monkeypatch.setenv("MODEL_OPS_ENV", "s3")
    monkeypatch.setenv("MODEL_OPS_ROOT", s3_root)  # run_demo sets it too; this way it is restored afterwards
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    lines: list[str] = []
    result = run_demo(root=s3_root, dagster_home=str(home), until="2013-05", progress=lines.append)
    story = "\n".join(lines)
    summary = result["summary"]
    assert summary["root"] == s3_root
    assert story_problems(summary, faulty=True, full_year=False) == [], story
    kinds = [t["kind"] for t in result["timeline"]]
    assert "deployed" in kinds, story

    instance = synchronous_instance(home)
    try:
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
        succeeded = [r.run_id for r in instance.get_runs() if r.status.value == "SUCCESS"]
        assert succeeded
    finally:
        instance.dispose()

    prefix = s3_root[len("s3://") :].split("/", 1)[1]
    keys = [k[len(prefix) + 1 :] for k in s3_keys(s3_root)]
    for part in (
        "datasets/flight_delay/flights/_delta_log/",
        "datasets/flight_delay/features/_delta_log/",
        "datasets/flight_delay/predictions/_delta_log/",
        "registry/events/_delta_log/",
        "artifacts/sha256/",
        f"{COMPUTE_LOGS_PREFIX}/storage/",
    ):
        assert any(k.startswith(part) for k in keys), f"nothing under {s3_root}/{part}"
    # every run that ran steps left its captured stdout and stderr in the bucket, not on this machine
    logged = {k.split("/")[2] for k in keys if k.startswith(f"{COMPUTE_LOGS_PREFIX}/storage/")}
    assert set(succeeded) <= logged, sorted(set(succeeded) - logged)
    assert not list(tmp_path.glob("**/*.out")) and not list(tmp_path.glob("**/*.err"))
    # and nothing of the model_ops state went to the local disk
    assert not (tmp_path / ".model_ops").exists()
    assert not list(tmp_path.glob("**/_delta_log"))


def test_an_s3_dagster_home_needs_an_s3_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step logs go to the bucket of the root, so an S3 environment over a local root is refused before a
    ``dagster.yaml`` is written; with S3 off, the new home has no ``compute_logs`` section."""
    from model_ops.defs.instance import prepare_home
    from model_ops.errors import UsageError

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # prepare_home sets it; restored after the test
    monkeypatch.setenv("MODEL_OPS_ENV", "s3")
    monkeypatch.setenv("MODEL_OPS_ROOT", str(tmp_path / "root"))
    with pytest.raises(UsageError, match="MODEL_OPS_ENV=s3 needs MODEL_OPS_ROOT=s3://"):
        prepare_home(str(tmp_path / "home"))
    assert not (tmp_path / "home").exists()
    monkeypatch.setenv("MODEL_OPS_ENV", "local")
    home = prepare_home(str(tmp_path / "home"))
    assert "compute_logs" not in (home / "dagster.yaml").read_text()
    monkeypatch.setenv("MODEL_OPS_ENV", "s3")
    monkeypatch.setenv("MODEL_OPS_ROOT", "s3://bucket/team/model_ops")
    text = (prepare_home(str(tmp_path / "home2")) / "dagster.yaml").read_text()
    assert "S3ComputeLogManager" in text and "bucket: bucket" in text and "team/model_ops/dagster-compute-logs" in text
