"""Asset sizes and step times of the flight_delay graph on the real 2013 data (no peer does this work).

Targets (issue: the asset graph): a month of features loads in well under a second; the whole graph for one month
runs in seconds. Prints one JSON document: per step, the median of --repeat runs (the first, cold run reported
apart), in a fresh root and a temporary Dagster instance.

    python benchmarks/bench_graph.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, peak_rss_mb, stats  # noqa: E402

INGEST = ("flights", "weather", "features")
TRAIN = ("training_set", "candidate_model", "evaluation", "deployment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import dagster as dg

    from model_ops.definitions import build_definitions
    from model_ops.defs.resources import ModelOpsResource

    assets = list(build_definitions().assets or [])
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        resource = ModelOpsResource(root=str(Path(tmp) / "root"))

        def run(step: str, names: tuple[str, ...], partition: str | None = None, **config: dict) -> None:
            t = time.perf_counter()
            result = dg.materialize(
                assets,
                instance=instance,
                resources={"model_ops": resource},
                partition_key=partition,
                selection=[dg.AssetKey(["flight_delay", n]) for n in names],
                run_config=dg.RunConfig(ops={f"flight_delay__{k}": {"config": v} for k, v in config.items()}),
            )
            assert result.success
            times.setdefault(step, []).append(time.perf_counter() - t)

        months = ["2013-01-01", "2013-02-01", "2013-03-01"]
        for m in months:
            run("ingest_month", INGEST, m)
        features = resource.dataset("flight_delay", "features")
        for _ in range(args.repeat + 1):
            t = time.perf_counter()
            rows = len(features.read([months[-1]]))
            times.setdefault("load_month_of_features", []).append(time.perf_counter() - t)
        for i in range(args.repeat):
            # Alternating windows: each run refits; a window seen before finds its existing registry version.
            run("train_evaluate_deploy", TRAIN, training_set={"window_start": months[1] if i % 2 else months[0]})
            run("score_month", ("predictions",), months[-1])
        for _ in range(args.repeat - 1):
            run("ingest_month", INGEST, months[-1])

    out = {
        "benchmark": "asset graph, flight_delay, one month",
        "machine": machine(),
        "rows_per_month": rows,
        "peak_rss_mb": peak_rss_mb(),
    }
    for step, xs in times.items():
        out[step] = stats(xs[1:] if len(xs) > 1 else xs, cold_ms=round(xs[0] * 1000, 1))
    out["targets"] = {
        "load_month_of_features_under_1s": out["load_month_of_features"]["median_ms"] < 1000,
        "one_month_through_the_graph_s": round(
            sum(out[s]["median_ms"] for s in ("ingest_month", "train_evaluate_deploy", "score_month")) / 1000, 2
        ),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
