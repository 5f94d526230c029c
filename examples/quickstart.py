"""Quickstart: the flight_delay lifecycle on the real 2013 NYC flights and weather, into the embedded local store.

Runs the same assets as `dagster asset materialize` and the Dagster UI, in this process, recording every run in
the Dagster instance at $DAGSTER_HOME (default ./.dagster_home), so `dagster dev -w workspace.yaml` afterwards shows
the history, the checks and the plotted metrics:

  1. ingest January to April (flights, weather, features with their contract checks);
  2. train on January to March, evaluate on April (blocking gates), deploy: v1 goes straight to production;
  3. score April with v1;
  4. ingest May, retrain on February to April, evaluate on May against the champion, deploy: v2 starts as a
     canary at 10 %; score May (sticky split between v1 and v2); advance the canary, promote it;
  5. print the versions, the deployment history and the integrity check.

    python examples/quickstart.py         # model_ops root: $MODEL_OPS_ROOT, else ./.model_ops

Re-running it is safe: identical inputs give identical model bytes, hence the same versions, and deployments
that would change nothing change nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def main() -> int:
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT / ".dagster_home"))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")

    import dagster as dg

    from model_ops.cli import main as model_ops
    from model_ops.definitions import defs
    from model_ops.defs.resources import ModelOpsResource
    from model_ops.ops import deployment as dep

    resource = ModelOpsResource()
    assets = list(defs.assets or [])
    instance = dg.DagsterInstance.get()
    reg = resource.get_registry()

    def run(names: tuple[str, ...], partition: str | None = None, **config: dict) -> dg.ExecuteInProcessResult:
        started = time.perf_counter()
        result = dg.materialize(
            assets,
            instance=instance,
            resources={"model_ops": resource},
            partition_key=partition,
            selection=[dg.AssetKey(["flight_delay", n]) for n in names],
            raise_on_error=False,
            run_config=dg.RunConfig(ops={f"flight_delay__{k}": {"config": v} for k, v in config.items()}),
        )
        failed = [f"{e.check_name}: {e.description}" for e in result.get_asset_check_evaluations() if not e.passed]
        status = "ok" if result.success else "FAILED"
        print(
            f"  {' + '.join(names)}{f' [{partition}]' if partition else ''}: {status} "
            f"({time.perf_counter() - started:.1f} s)" + "".join(f"\n      check failed: {f}" for f in failed)
        )
        return result

    def meta(name: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(["flight_delay", name]))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def lifecycle(**training_config: str) -> None:
        ok = run(("training_set", "candidate_model", "evaluation", "deployment"), training_set=training_config).success
        ev = meta("evaluation")
        print(
            f"    candidate v{ev['candidate_version']}: ROC-AUC {ev['candidate_roc_auc']:.3f}, log loss "
            f"{ev['candidate_log_loss']:.3f} on {ev['holdout']} ({ev['holdout_rows']} flights), stage "
            f"{ev['stage_after']}"
            + (
                f"; champion v{ev['champion_version']} ROC-AUC {ev['champion_roc_auc']:.3f}"
                if ev["champion_version"] > 0
                else ""
            )
        )
        if ok:
            print(f"    deployment: {meta('deployment')['message']}")

    print(f"model_ops root: {resource.location().uri}   Dagster instance: {home}")
    print("\n1. ingest January to April")
    for month in ("2013-01-01", "2013-02-01", "2013-03-01", "2013-04-01"):
        run(("flights", "weather", "features"), month)
    print("\n2. train on January-March, evaluate on April, deploy")
    lifecycle(holdout="2013-04-01")
    print("\n3. score April")
    run(("predictions",), "2013-04-01")
    print("\n4. ingest May, retrain on February-April, evaluate on May, deploy as canary, score, promote")
    run(("flights", "weather", "features"), "2013-05-01")
    lifecycle(window_start="2013-02-01", holdout="2013-05-01")
    run(("predictions",), "2013-05-01")
    p = meta("predictions")
    print(
        f"    May scored by {p['serving']}: " + ", ".join(f"{k[5:]} {v}" for k, v in p.items() if k.startswith("rows_"))
    )
    for action in ("advance", "promote"):
        if dep.current(reg, "flight_delay").canary:
            run(("deployment",), deployment={"action": action, "reason": f"quickstart: {action} the canary"})
            print(f"    {meta('deployment')['message']}")

    print("\n5. where things stand")
    print(f"    serving: {dep.current(reg, 'flight_delay').describe()}\n")
    model_ops(["versions", "flight_delay"])
    print()
    for h in dep.history(reg, "flight_delay")[-6:]:
        print(f"    {h['ts'][:19]}  {h['action']:<10} {h['message']}")
    print("\n$ model-ops fsck")
    code = model_ops(["fsck"])
    print(
        "\nNext: `DAGSTER_HOME=.dagster_home dagster dev -w workspace.yaml` to browse these runs, or the README's "
        "walk-through for the same steps with `dagster asset materialize`."
    )
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every write has completed; leaving without interpreter teardown avoids native storage threads aborting it.
    os._exit(code)
