"""benchmarks/adapter_insert.py on a tiny model: a row per count of resident adapters, positive times."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.adapter_insert import main, table  # noqa: E402


def test_a_tiny_run_reports_every_resident_count(capsys):
    rows = main(["--resident", "1", "3", "--rounds", "1"])
    assert [r["resident"] for r in rows] == [1, 3]
    assert all(r[key] > 0 for r in rows for key in ("insert", "ready", "delete"))
    out = capsys.readouterr().out
    assert "| 3 |" in out and table(rows) in out
