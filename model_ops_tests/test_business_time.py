"""Business time: registry events carry the window they were written for, and as-of answers in either clock."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from model_ops.errors import NotFoundError, UsageError
from model_ops.ops import business_time
from model_ops.registry import Registry
from model_ops.specs import load_specs
from model_ops_tests.helpers import tiny_model

M = "flight_delay"  # monthly partitions from 2013-01


def test_events_take_effect_at_the_end_of_their_window_and_unwindowed_ones_with_the_event_before(
    tmp_path: Path,
) -> None:
    reg = Registry.open(tmp_path / "root", actor="alice")
    reg.register_model(M, tiny_model(0))  # before any window: in force from the start
    reg.transition(f"models:/{M}/1", "staging", reason="gates")
    reg.transition(f"models:/{M}/1", "production", reason="first")
    reg.business_window = "2013-06-01"  # a run for June's partition
    reg.register_model(M, tiny_model(1))
    reg.transition(f"models:/{M}/2", "staging", reason="June's retrain")
    reg.business_window = None  # written by hand after it: takes effect with June's events
    reg.transition(f"models:/{M}/2", "production", reason="by hand")
    reg.business_window = "2013-08-01"
    reg.rollback(M, reason="August went badly")
    assert [e.business_window for e in reg.audit(M)][-1] == "2013-08-01"

    effective = business_time.effective({s.name: s for s in load_specs()})
    assert effective(M, "2013-06-01") == datetime(2013, 7, 1, tzinfo=timezone.utc)  # the window's end

    def production(when: str) -> int | None:
        return reg.as_of(when, M, business=effective)[M]["production"]

    assert production("2013-03-15T00:00:00Z") == 1
    assert production("2013-06-30T23:59:59Z") == 1  # June's decisions govern July, not June
    assert production("2013-07-01T00:00:00Z") == 2 and production("2013-08-31T00:00:00Z") == 2
    assert production("2013-09-01T00:00:00Z") == 1
    with pytest.raises(NotFoundError, match="on the wall clock"):
        reg.as_of("2013-07-15T00:00:00Z", M)  # the registry was written in 2026
    assert reg.as_of(datetime.now(timezone.utc), M)[M]["production"] == 1


def test_a_window_is_named_by_its_first_day_or_month() -> None:
    assert business_time.window_start("2013-07") == datetime(2013, 7, 1, tzinfo=timezone.utc)
    assert business_time.window_start("2013-07-01") == datetime(2013, 7, 1, tzinfo=timezone.utc)
    with pytest.raises(UsageError, match="as a window"):
        business_time.window_start("July")


def test_a_backfill_written_after_a_later_window_never_takes_effect_before_it(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root", actor="alice")
    reg.register_model(M, tiny_model(0))
    reg.transition(f"models:/{M}/1", "staging", reason="gates")
    reg.transition(f"models:/{M}/1", "production", reason="first")
    reg.business_window = "2013-09-01"
    reg.register_model(M, tiny_model(1))  # September's retrain
    reg.business_window = "2013-05-01"
    reg.record(M, "note", reason="a backfill of May, written now")
    reg.business_window = None
    reg.transition(f"models:/{M}/2", "staging", reason="by hand, after September's retrain")
    effective = business_time.effective({s.name: s for s in load_specs()})
    june = reg.as_of("2013-06-15T00:00:00Z", M, business=effective)[M]
    assert [v["version"] for v in june["versions"]] == [1] and june["production"] == 1  # no v2 yet, nothing moved
    october = reg.as_of("2013-10-01T00:00:00Z", M, business=effective)[M]
    assert [(v["version"], v["stage"]) for v in october["versions"]] == [(1, "production"), (2, "staging")]


def test_lineage_at_a_window_resolves_the_reference_then_and_shows_only_what_had_happened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_ops.cli import main as cli
    from model_ops.ops.provenance import lineage

    reg = Registry.open(tmp_path / "root", actor="alice")
    reg.register_model(M, tiny_model(0))
    reg.transition(f"models:/{M}/1", "staging", reason="gates")
    reg.transition(f"models:/{M}/1", "production", reason="first")  # champion follows production
    reg.business_window = "2013-06-01"
    reg.register_model(M, tiny_model(1))
    reg.transition(f"models:/{M}/2", "staging", reason="June's retrain")
    reg.transition(f"models:/{M}/2", "production", reason="June's canary passed")
    reg.business_window = None
    effective = business_time.effective({s.name: s for s in load_specs()})

    june = lineage(reg, f"{M}@champion", at=datetime(2013, 6, 15, tzinfo=timezone.utc), business=effective)
    assert june["ref"] == f"models:/{M}/1" and june["stage"] == "production" and "champion" in june["aliases"]
    july = lineage(reg, f"{M}@champion", at=datetime(2013, 7, 1, tzinfo=timezone.utc), business=effective)
    assert july["ref"] == f"models:/{M}/2" and july["stage"] == "production"
    assert (july["as_of"]["time"], july["as_of"]["clock"]) == ("2013-07-01T00:00:00+00:00", "business")
    then = lineage(reg, f"{M}/1", at=datetime(2013, 6, 15, tzinfo=timezone.utc), business=effective)
    assert [c["to"] for c in then["changes"] if c["kind"] == "stage_changed"] == ["staging", "production"]
    assert lineage(reg, f"{M}/1")["stage"] == "archived"  # now, after v2 took over

    root = str(tmp_path / "root")
    assert cli(["--root", root, "lineage", f"{M}@champion", "--window", "2013-06", "--wide"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("as of window 2013-06 (business time: what was in force from 2013-06-01)")
    assert f"models:/{M}/1 " in out
    assert "then production" in out
    assert cli(["--root", root, "lineage", f"{M}@champion", "--window", "2013-07", "--json"]) == 0
    assert '"ref": "models:/flight_delay/2"' in capsys.readouterr().out
    assert cli(["--root", root, "lineage", f"{M}@canary", "--window", "2013-07"]) == 1  # no canary then
    assert "named no version at 2013-07-01" in capsys.readouterr().err
    assert cli(["--root", root, "lineage", f"{M}/1", "--window", "2013-07", "--as-of", "2013-07-02"]) == 2
    assert cli(["--root", root, "lineage", f"{M}/1", "--business"]) == 2
    assert "give one" in capsys.readouterr().err
    assert cli(["--root", root, "lineage", f"{M}/prodution", "--window", "2013-07"]) == 2  # a typo, not "not found"
    assert "unknown stage 'prodution'" in capsys.readouterr().err


def test_lineage_on_the_wall_clock_shows_what_had_been_written_by_then(tmp_path: Path) -> None:
    from model_ops.ops.provenance import lineage

    reg = Registry.open(tmp_path / "root", actor="alice")
    reg.register_model(M, tiny_model(0))
    registered = reg.audit(M)[-1].ts
    reg.transition(f"models:/{M}/1", "staging", reason="gates")
    then = lineage(reg, f"{M}/1", at=registered)
    assert then["stage"] == "development" and then["changes"] == [] and then["as_of"]["clock"] == "wall"
    assert lineage(reg, f"{M}/1", at=datetime.now(timezone.utc))["stage"] == "staging"
    with pytest.raises(NotFoundError, match="no versions"):
        lineage(reg, f"{M}/1", at=datetime(2013, 1, 1, tzinfo=timezone.utc))  # before it was written
