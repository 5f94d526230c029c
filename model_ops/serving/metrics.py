"""The server's Prometheus metrics (``/metrics``): requests, errors and latency per model, version and arm; the
prediction log's queue depth, overflow and failures; reloads and registry errors; shadow disagreement.

Each application has its own ``CollectorRegistry`` (not the process-wide default), so several servers in one
process (tests, a benchmark) never mix their counts.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "model_ops_serving_requests",
            "Requests answered, per model, version and arm",
            ["model", "version", "arm"],
            registry=r,
        )
        self.rows = Counter(
            "model_ops_serving_rows",
            "Rows scored and served, per model, version and arm",
            ["model", "version", "arm"],
            registry=r,
        )
        self.errors = Counter(
            "model_ops_serving_errors",
            "Requests refused (4xx) or failed (5xx), per model, version and arm (empty when refused before "
            "routing), status and protocol",
            ["model", "version", "arm", "status", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "model_ops_serving_latency_seconds",
            "Request latency from the body read to the response, per model, version and arm",
            ["model", "version", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_rows = Counter(
            "model_ops_serving_shadow_rows", "Rows scored in shadow (never served)", ["model", "version"], registry=r
        )
        self.shadow_disagreements = Counter(
            "model_ops_serving_shadow_disagreements",
            "Shadow rows whose prediction differs from the one served",
            ["model", "version"],
            registry=r,
        )
        self.shadow_score_delta = Histogram(
            "model_ops_serving_shadow_score_delta",
            "Absolute difference between the shadow's score and the served score, per row",
            ["model", "version"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0, 100.0),
            registry=r,
        )
        self.shadow_errors = Counter(
            "model_ops_serving_shadow_errors", "Shadow scorings that failed", ["model", "version"], registry=r
        )
        self.queue_depth = Gauge(
            "model_ops_prediction_log_queue_depth", "Requests' rows waiting for the prediction log", registry=r
        )
        self.overflow = Gauge(
            "model_ops_prediction_log_overflow_rows_total",
            "Rows not logged because the prediction log's queue was full",
            registry=r,
        )
        self.written = Gauge(
            "model_ops_prediction_log_written_rows_total", "Rows appended to the prediction logs", registry=r
        )
        self.failed = Gauge(
            "model_ops_prediction_log_failed_rows_total", "Rows the prediction log could not write", registry=r
        )
        self.undeclared_rows = Counter(
            "model_ops_prediction_log_undeclared_rows",
            "Served rows logged under a window the model does not declare (their time is before its first "
            "partition or at or after its end), so no monitoring asset reads them, per model",
            ["model"],
            registry=r,
        )
        self.reloads = Gauge("model_ops_serving_reloads_total", "Slots built and switched to", registry=r)
        self.registry_errors = Gauge(
            "model_ops_serving_registry_errors_total", "Polls of the registry that failed", registry=r
        )
        self.ready = Gauge("model_ops_serving_ready", "1 when the server has something to serve", registry=r)

    def undeclared(self) -> dict[str, int]:
        """Rows logged outside the declared windows so far, per model (for /status)."""
        return {
            sample.labels["model"]: int(sample.value)
            for metric in self.undeclared_rows.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }

    def render(self, predlog: Any, fleet: Any) -> bytes:
        """The exposition text, with the gauges read from the log and the follower at scrape time."""
        self.queue_depth.set(predlog.depth)
        self.overflow.set(predlog.overflow_rows)
        self.written.set(predlog.written_rows)
        self.failed.set(predlog.failed_rows)
        self.reloads.set(fleet.reloads)
        self.registry_errors.set(fleet.registry_errors)
        self.ready.set(1 if fleet.ready else 0)
        return generate_latest(self.registry)
