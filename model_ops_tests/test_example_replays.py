"""The example models through the whole loop, from their declarations alone: ingest → train → gates → deploy →
score → drift → live performance → retrain → canary → promote, the faulty candidate rolled back, and every version
reproduced byte for byte. flight_duration (regression, a Delta source) replays 2013; seattle_weather (multiclass,
an upstream-asset source) replays 2012 to September 2013, where its story has happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_ops.cli import main as cli
from model_ops.defs.replay import run_demo, story_problems

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, until", [("flight_duration", None), ("seattle_weather", "2013-09")])
def test_an_example_model_goes_through_the_whole_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: str, until: str | None
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    result = run_demo(
        root=str(tmp_path / "root"),
        dagster_home=str(tmp_path / "home"),
        until=until,
        progress=lines.append,
        model=model,
    )
    summary = result["summary"]
    assert story_problems(summary, faulty=True, full_year=True) == [], "\n".join(lines)
    kinds = [t["kind"] for t in result["timeline"]]
    assert kinds.index("deployed") < kinds.index("retrain") < kinds.index("canary_started") < kinds.index("promoted")
    faulty = next(v["version"] for v in summary["versions"] if v["faulty"])
    rolled = [t for t in result["timeline"] if t["kind"] == "rollback"]
    assert rolled[0]["model_version"] == faulty and "failure_limit" in rolled[0]["reason"]
    assert summary["production"] != faulty
    for v in summary["versions"]:
        assert cli(["--root", str(tmp_path / "root"), "reproduce", f"models:/{model}/{v['version']}"]) == 0
        assert "rebuilt byte for byte" in capsys.readouterr().out
