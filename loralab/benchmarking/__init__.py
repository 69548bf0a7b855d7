"""Renamed `loralab.timing` (issue 19: not to be confused with the `benchmarks/` scripts); `loralab.benchmarking.latency`
and `loralab.benchmarking.memory` stay as aliases until the release after 0.1."""
