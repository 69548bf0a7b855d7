"""Server metrics in Prometheus' text exposition format (counters, gauges, histograms with labels).

    metrics.inc("loralab_requests_total", {"endpoint": "/v1/completions", "model": "sst2", "status": "200"})
    metrics.observe("loralab_request_seconds", {"model": "sst2"}, 0.42)
    text = metrics.render()           # what GET /metrics returns
"""
from __future__ import annotations

import bisect
import math
import threading

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# name -> (type, help, buckets for histograms)
METRICS = {
    "loralab_requests_total": ("counter", "Requests answered, by endpoint, model (base or adapter) and status", None),
    "loralab_prompt_tokens_total": ("counter", "Prompt tokens of finished generation requests, by model", None),
    "loralab_generation_tokens_total": ("counter", "Generated tokens, by model", None),
    "loralab_classified_inputs_total": ("counter", "Inputs classified, by model", None),
    "loralab_queue_depth": ("gauge", "Requests (choices) waiting for a batch row", None),
    "loralab_running_rows": ("gauge", "Rows in the running batch", None),
    "loralab_adapters_loaded": ("gauge", "Adapters loaded on the base model", None),
    "loralab_adapter_lookups_total": ("counter", "Requests naming an adapter, by result: hit (resident) or miss "
                                      "(loaded from --adapter-root first)", None),
    "loralab_adapter_hit_ratio": ("gauge", "Adapter lookups that found the adapter resident, over all lookups", None),
    "loralab_adapter_loads_total": ("counter", "Adapters loaded from --adapter-root on first use or after eviction",
                                    None),
    "loralab_adapter_load_failures_total": ("counter", "Loads from --adapter-root refused (bad folder, not found)",
                                            None),
    "loralab_adapter_evictions_total": ("counter", "Least-recently-used adapters unloaded to make room", None),
    "loralab_adapter_resident_bytes": ("gauge", "Bytes of the resident adapters: tensors and their rank-padded slots (fp32)", None),
    "loralab_adapter_slot_bytes": ("gauge", "Bytes the per-layer adapter slot stacks hold (allocated capacity)", None),
    "loralab_adapter_load_seconds": ("histogram", "A store load from its start (reading the files) to the adapter "
                                     "on the model", LATENCY_BUCKETS),
    "loralab_batch_rows": ("histogram", "Rows per model forward (decoding step or classifier batch)", BATCH_BUCKETS),
    "loralab_batch_adapters": ("histogram", "Distinct adapters (the base counted as one) per forward", BATCH_BUCKETS),
    "loralab_request_seconds": ("histogram", "Request latency from arrival to last byte, by model", LATENCY_BUCKETS),
    "loralab_time_to_first_token_seconds": ("histogram", "Arrival to first generated token, by model",
                                            LATENCY_BUCKETS),
}


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class Metrics:
    """Thread-safe metric values; every name must be one of METRICS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float | _Histogram]] = {name: {} for name in METRICS}

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        key = _key(labels)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            self._values[name][_key(labels)] = float(value)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        key = _key(labels)
        with self._lock:
            series = self._values[name]
            if key not in series:
                series[key] = _Histogram(METRICS[name][2])
            series[key].observe(value)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's or gauge's current value (0 if never set); for tests and the load test."""
        with self._lock:
            v = self._values[name].get(_key(labels), 0.0)
            return float(sum(v.counts)) if isinstance(v, _Histogram) else v

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help_text, _) in METRICS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for key, v in sorted(self._values[name].items()):
                    lines += _histogram_lines(name, key, v) if isinstance(v, _Histogram) else \
                        [f"{name}{_labels(key)} {_number(v)}"]
        return "\n".join(lines) + "\n"


def _key(labels: dict[str, str] | None) -> tuple:
    return tuple(sorted((labels or {}).items()))


def _labels(key: tuple, extra: tuple = ()) -> str:
    pairs = [*key, *extra]
    if not pairs:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
               for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


def _number(v: float) -> str:
    return "+Inf" if math.isinf(v) else repr(float(v)) if v != int(v) else str(int(v))


def _histogram_lines(name: str, key: tuple, h: _Histogram) -> list[str]:
    lines, total = [], 0
    for bound, count in zip((*h.buckets, math.inf), h.counts):
        total += count
        lines.append(f"{name}_bucket{_labels(key, (('le', _number(bound)),))} {total}")
    return lines + [f"{name}_sum{_labels(key)} {_number(h.sum)}", f"{name}_count{_labels(key)} {total}"]
