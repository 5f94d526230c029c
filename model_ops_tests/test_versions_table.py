"""The registry's `versions` table (written by maintenance) is a plain Delta table: another engine, here DuckDB
through the deltalake package, answers SQL over it with what the registry itself says."""

from __future__ import annotations

from pathlib import Path

import duckdb
from deltalake import DeltaTable

from model_ops.registry import Registry


def test_duckdb_answers_sql_over_the_versions_table_as_the_registry_does(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "root", actor="alice")
    for i in range(5):
        p = tmp_path / f"m{i}.bin"
        p.write_text(f"model {i}")
        reg.register(
            "fraud" if i % 2 else "churn",
            p,
            metrics={"roc_auc": 0.6 + i / 20},
            dataset=f"s3://lake/features@{40 + i}",
            run_id=f"run-{i}",
        )
    assert reg.maintain()["problems"] == []

    versions = DeltaTable(str(reg.location.path / "versions")).to_pyarrow_dataset()  # noqa: F841 (DuckDB reads it by name)
    rows = duckdb.sql(
        "SELECT model, count(*) AS n, max(version) AS newest, "
        "max(CAST(json_extract(record, '$.metrics.roc_auc') AS DOUBLE)) AS best_auc, "
        "min(CAST(json_extract(record, '$.dataset.version') AS INTEGER)) AS first_data "
        "FROM versions GROUP BY model ORDER BY model"
    ).fetchall()
    expected = []
    for name in reg.models():
        vs = reg.versions(name)
        expected.append(
            (
                name,
                len(vs),
                vs[-1].version,
                max(v.metrics["roc_auc"] for v in vs),
                min(v.dataset["version"] for v in vs),
            )
        )
    assert rows == expected
    by_run = duckdb.sql("SELECT model, version, digest, created_by FROM versions WHERE run_id = 'run-3'").fetchall()
    mv = reg.search("run_id = run-3").versions[0]
    assert by_run == [(mv.name, mv.version, mv.digest, "alice")]
