"""Dagster-free model operations: the deployment manifest and its actions, routing, the automation rules the
sensors apply, retention, and provenance (reproduce, lineage, diff)."""
