"""measure_step_times on the quick model: exact trained-value counts, ratios relative to the first method."""
from pathlib import Path

import pytest

from loralab.experiments.common import quick_model_dir
from loralab.experiments.step_time import measure_step_times


def test_step_times_side_by_side(tmp_path: Path):
    model = quick_model_dir(tmp_path / "model")
    rows = measure_step_times(str(model), [("full", "full", {}), ("head and biases", "bitfit", {})],
                              batch_size=4, seq_len=8, rounds=2)
    assert [r["method"] for r in rows] == ["full", "head and biases"]
    assert rows[0]["trained_values"] > rows[1]["trained_values"] > 66   # bitfit: every bias + the 66-value head
    for row in rows:
        assert row["cpu_ms_per_step"] > 0 and row["wall_ms_per_step"] > 0
        assert row["cpu_vs_first"] == pytest.approx(row["cpu_ms_per_step"] / rows[0]["cpu_ms_per_step"])
