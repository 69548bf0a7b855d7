"""Server metrics, exposed in Prometheus' text format through `prometheus_client` (counters, gauges,
histograms with labels; each Metrics has its own registry, so servers in one process never share values).

    metrics.inc("loralab_requests_total", {"endpoint": "/v1/completions", "model": "sst2", "status": "200"})
    metrics.observe("loralab_request_seconds", 0.42, {"model": "sst2"})
    text = metrics.render()           # what GET /metrics returns

Every name and its label names are declared in METRICS; label values are bounded by their callers (the
model label by serving.store.MetricLabels, endpoints and statuses by the app).
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"   # prometheus_client's exposition format


@dataclass(frozen=True)
class MetricSpec:
    """kind: counter, gauge or histogram; labels: the label names every sample carries (in this order)."""
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


MODEL = ("model",)
METRICS: dict[str, MetricSpec] = {
    "loralab_requests_total": MetricSpec("counter", "Requests answered, by endpoint, model (base or adapter) and "
                                         "status", ("endpoint", "model", "status")),
    "loralab_prompt_tokens_total": MetricSpec("counter", "Prompt tokens of finished generation requests, by model",
                                              MODEL),
    "loralab_generation_tokens_total": MetricSpec("counter", "Generated tokens, by model", MODEL),
    "loralab_classified_inputs_total": MetricSpec("counter", "Inputs classified, by model", MODEL),
    "loralab_queue_depth": MetricSpec("gauge", "Requests (choices) waiting for a batch row"),
    "loralab_running_rows": MetricSpec("gauge", "Rows in the running batch"),
    "loralab_adapters_loaded": MetricSpec("gauge", "Adapters loaded on the base model"),
    "loralab_adapter_lookups_total": MetricSpec("counter", "Requests naming an adapter, by result: hit (resident) "
                                                "or miss (loaded from --adapter-root first)", ("result",)),
    "loralab_adapter_hit_ratio": MetricSpec("gauge", "Adapter lookups that found the adapter resident, over all "
                                            "lookups"),
    "loralab_adapter_loads_total": MetricSpec("counter", "Adapters loaded from --adapter-root on first use or after "
                                              "eviction"),
    "loralab_adapter_load_failures_total": MetricSpec("counter", "Loads from --adapter-root refused (bad folder, "
                                                      "not found)"),
    "loralab_adapter_evictions_total": MetricSpec("counter", "Least-recently-used adapters unloaded to make room"),
    "loralab_adapter_resident_bytes": MetricSpec("gauge", "Bytes of the resident adapters: tensors and their "
                                                 "rank-padded slots (fp32)"),
    "loralab_adapter_slot_bytes": MetricSpec("gauge", "Bytes the per-layer adapter slot stacks hold (allocated "
                                             "capacity)"),
    "loralab_adapter_load_seconds": MetricSpec("histogram", "A store load from its start (reading the files) to the "
                                               "adapter on the model", buckets=LATENCY_BUCKETS),
    "loralab_batch_rows": MetricSpec("histogram", "Rows per decoding step or classifier batch",
                                     buckets=BATCH_BUCKETS),
    "loralab_batch_adapters": MetricSpec("histogram", "Distinct adapters (the base counted as one) per decoding "
                                                      "step or classifier batch",
                                         buckets=BATCH_BUCKETS),
    "loralab_request_seconds": MetricSpec("histogram", "Request latency from arrival to last byte, by model", MODEL,
                                          LATENCY_BUCKETS),
    "loralab_time_to_first_token_seconds": MetricSpec("histogram", "Arrival to first generated token, by model",
                                                      MODEL, LATENCY_BUCKETS),
}


def _make(name: str, spec: MetricSpec, registry: CollectorRegistry):
    if spec.kind == "counter":
        return Counter(name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(name, spec.help, spec.labels, registry=registry)
    return Histogram(name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)


class Metrics:
    """This server's metric values (thread-safe, as prometheus_client's are); every name must be one of
    METRICS and every call give exactly its label names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics = {name: _make(name, spec, self.registry) for name, spec in METRICS.items()}

    def _series(self, name: str, labels: dict[str, str] | None):
        metric = self._metrics[name]
        return metric.labels(**{k: str(v) for k, v in labels.items()}) if METRICS[name].labels else metric

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        self._series(name, labels).inc(value)

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._series(name, labels).set(float(value))

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._series(name, labels).observe(value)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's or gauge's current value, a histogram's count (0 if never set); for tests and benchmarks."""
        sample = name + "_count" if METRICS[name].kind == "histogram" else name
        return self.registry.get_sample_value(sample, labels or {}) or 0.0

    def total(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A histogram's sum of observed values (0 if none)."""
        return self.registry.get_sample_value(name + "_sum", labels or {}) or 0.0

    def render(self) -> str:
        """The Prometheus text exposition (what GET /metrics answers, CONTENT_TYPE)."""
        return generate_latest(self.registry).decode("utf-8")
