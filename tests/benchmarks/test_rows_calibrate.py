"""benchmarks/rows_calibrate.py: the crossover read from a table of timings, and a tiny run's shape."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.rows_calibrate import CalibrationConfig, calibrate, crossover  # noqa: E402


def _table(*rows):
    return [{"work": work, "masked": masked, "grouped": grouped} for work, masked, grouped in rows]


def test_crossover_interpolates_the_sign_change():
    # masked − grouped: −1 at 1,000, +3 at 5,000: zero a quarter of the way
    assert crossover(_table((1_000, 1.0, 2.0), (5_000, 6.0, 3.0))) == 2_000
    # one noisy length (2,000) does not move the threshold that most lengths agree with
    table = _table((1_000, 1.0, 2.0), (2_000, 2.5, 2.0), (3_000, 2.0, 2.5), (4_000, 1.0, 1.5), (8_000, 9.0, 4.0))
    assert crossover(table) == 4_364            # 4,000 + 4,000 · 0.5 / 5.5; 1,667 would misplace two lengths
    assert crossover(_table((1_000, 3.0, 2.0), (2_000, 5.0, 2.0))) == 0          # grouped always won
    assert crossover(_table((1_000, 1.0, 2.0), (2_000, 1.0, 2.0))) is None       # masked always won


def test_a_tiny_calibration_reports_every_length():
    config = CalibrationConfig(rows=4, adapters=2, r=2, width=16, seqs=(1, 3), rounds=1)
    result = calibrate(config, log=lambda line: None)
    assert [row["seq"] for row in result["table"]] == [1, 3]
    assert [row["work"] for row in result["table"]] == [4 * 1 * 4, 4 * 3 * 4]
    assert all(row["masked"] > 0 and row["grouped"] > 0 for row in result["table"])
    assert result["masked_max_work"] == crossover(result["table"])
