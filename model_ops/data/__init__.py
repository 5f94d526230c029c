"""Dagster-free data layer: sources, Delta datasets, feature building and the contracts batches must meet."""
