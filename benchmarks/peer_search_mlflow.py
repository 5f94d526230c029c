"""MLflow's side of bench_search.py: the same registry (benchmarks/_search_data.py) in an MLflow SQLite backend
store, and the same queries through MlflowClient.search_model_versions. Run with the peers' venv Python.

usage: peer_search_mlflow.py MODELS PER_MODEL REPS

Registered models, model version 1 of each and the aliases are created through MlflowClient. The other versions
(creating 100k through the client one by one takes longer than the run) are inserted with SQLAlchemy into MLflow's
own tables, each row a copy of the row MLflow wrote for that model's version 1 with the version, times, stage, run
id changed, and its tags beside it: what the client would have written. Then every query is timed through the public
API, first page of 100, REPS times (the first call warms caches and is timed apart). Prints one JSON line.
"""

import os
import sys
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
import json
import logging
import resource
import shutil
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _search_data as data  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("mlflow").setLevel(logging.ERROR)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main():
    models, per_model, reps = (int(a) for a in sys.argv[1:4])
    import mlflow
    import sqlalchemy as sa
    from mlflow import MlflowClient

    tmp = tempfile.mkdtemp(prefix="search_mlflow_")
    try:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient()
        t = time.perf_counter()
        for i in range(models):
            name = data.model_name(i)
            client.create_registered_model(name)
            client.create_model_version(name, f"file://{tmp}/{name}/1", run_id=None, tags=data.tags(i, 1))
        api_s = time.perf_counter() - t

        t = time.perf_counter()
        engine = sa.create_engine(uri)
        meta = sa.MetaData()
        mv = sa.Table("model_versions", meta, autoload_with=engine)
        mvt = sa.Table("model_version_tags", meta, autoload_with=engine)
        with engine.begin() as conn:
            firsts = {r._mapping["name"]: dict(r._mapping) for r in conn.execute(sa.select(mv))}
            rows, tag_rows = [], []
            for i in range(models):
                name = data.model_name(i)
                base = firsts[name]
                for v in range(1, per_model + 1):
                    stage = "Production" if data.in_production(i, v) else "None"
                    if v == 1:
                        conn.execute(
                            mv.update()
                            .where(mv.c.name == name, mv.c.version == 1)
                            .values(run_id=data.run_id(i), current_stage=stage)
                        )
                        continue
                    rows.append(
                        {
                            **base,
                            "version": v,
                            "creation_time": base["creation_time"] + v,
                            "last_updated_time": base["last_updated_time"] + v,
                            "source": f"file://{tmp}/{name}/{v}",
                            "run_id": data.run_id(i),
                            "current_stage": stage,
                        }
                    )
                    tag_rows.extend(
                        {"key": k, "value": val, "name": name, "version": v} for k, val in data.tags(i, v).items()
                    )
                if len(rows) >= 20_000:
                    conn.execute(mv.insert(), rows)
                    conn.execute(mvt.insert(), tag_rows)
                    rows, tag_rows = [], []
            if rows:
                conn.execute(mv.insert(), rows)
                conn.execute(mvt.insert(), tag_rows)
        bulk_s = time.perf_counter() - t
        for i in range(0, models, data.PRODUCTION_EVERY):
            client.set_registered_model_alias(data.model_name(i), "champion", str(data.PRODUCTION_VERSION))

        out = {
            "mlflow": mlflow.__version__,
            "versions": engine.connect().execute(sa.select(sa.func.count()).select_from(mv)).scalar(),
            "build_api_s": round(api_s, 2),
            "build_bulk_s": round(bulk_s, 2),
            "queries": {},
        }
        for label, _ours, theirs in data.queries(models):
            if theirs is None:
                continue
            t = time.perf_counter()
            client.search_model_versions(theirs, max_results=100)
            first_ms = (time.perf_counter() - t) * 1000
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                page = client.search_model_versions(theirs, max_results=100)
                times.append((time.perf_counter() - t) * 1000)
            out["queries"][label] = {
                "filter": theirs,
                "hits_first_page": len(page),
                "first_ms": round(first_ms, 2),
                "p50_ms": round(pct(times, 50), 2),
                "p95_ms": round(pct(times, 95), 2),
                "n": reps,
            }
        probe = data.model_name(min(40, (models - 1) // data.PRODUCTION_EVERY * data.PRODUCTION_EVERY))
        reads = {
            "list models (search_registered_models, 100 per page)": lambda: client.search_registered_models(
                max_results=100
            ),
            "one model's versions": lambda: client.search_model_versions(f"name = '{probe}'", max_results=1000),
            "resolve an alias": lambda: client.get_model_version_by_alias(probe, "champion"),
        }
        out["reads"] = {}
        for label, fn in reads.items():
            fn()
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1000)
            out["reads"][label] = {"p50_ms": round(pct(times, 50), 2), "p95_ms": round(pct(times, 95), 2)}
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
