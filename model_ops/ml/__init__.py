"""Dagster-free ML layer: training pipelines, evaluation metrics, deployment manifests, traffic routing."""
