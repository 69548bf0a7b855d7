"""The pure helpers of the serving benchmarks (the benchmarks themselves never run in tests): the side-by-side
with llama.cpp (request bodies, llama-server's command, percentiles, the table), the store suite's spreads and
table, and the thread benchmark's table."""
from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import against_llama, serve_store, threads  # noqa: E402


def test_requests_name_the_adapter_each_server_s_way():
    ours = against_llama.request_body("loralab", 7, "hi", 32)
    theirs = against_llama.request_body("llama.cpp", 7, "hi", 32)
    assert ours["model"] == "a0007" and "lora" not in ours
    assert theirs["lora"] == [{"id": 7, "scale": 1.0}] and theirs["model"] == against_llama.BASE
    assert against_llama.request_body("llama.cpp", None, "hi", 32)["lora"] == []      # unlisted adapters: scale 0
    assert against_llama.request_body("loralab", None, "hi", 32)["model"] == against_llama.BASE
    for body in (ours, theirs):
        assert body["temperature"] == 0 and body["max_tokens"] == 32 and body["stream"]
        assert body["stream_options"] == {"include_usage": True}


def test_llama_server_gets_the_same_threads_one_slot_per_client_and_every_adapter_unapplied():
    cmd = against_llama.llama_server_command(Path("/b/llama-server"), Path("m.gguf"), [Path("a.gguf"), Path("b.gguf")],
                                             threads=2, clients=16, port=9000)
    assert cmd[:3] == ["/b/llama-server", "-m", "m.gguf"]
    pairs = dict(zip(cmd[1::2], cmd[2::2]))
    assert pairs["-t"] == pairs["-tb"] == "2" and pairs["-np"] == "16" and pairs["-c"] == str(16 * 256)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--lora"] == ["a.gguf", "b.gguf"]
    assert cmd[-1] == "--lora-init-without-apply"
    assert "--lora-init-without-apply" not in against_llama.llama_server_command(Path("s"), Path("m"), [], 1, 1, 1)
    ours = against_llama.loralab_command(Path("/root"), threads=2, clients=16, port=9001, max_adapters=108)
    assert ours[ours.index("--threads") + 1] == "2" and ours[ours.index("--max-adapters") + 1] == "108"


def test_percentiles_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert against_llama.percentile(values, 50) == 50.0 and against_llama.percentile(values, 99) == 99.0
    assert against_llama.percentile([3.0], 99) == 3.0 and math.isnan(against_llama.percentile([], 50))
    tally = against_llama.Tally(latency=[1.0, 2.0, 3.0, 4.0], first_token=[0.1] * 4, tokens=120, wall=2.0)
    summary = tally.summary()
    assert (summary["tokens_per_s"], summary["requests_per_s"], summary["p50_s"], summary["ttft_p50_s"]) == \
        (60.0, 2.0, 2.0, 0.1)


def test_the_side_by_side_table_divides_loralab_by_llama_cpp():
    row = dict(tokens_per_s=50.0, requests_per_s=1.5, p50_s=1.0, p99_s=2.0, ttft_p50_s=0.2, errors=0)
    results = {"loralab": {"8 adapters": {**row, "tokens_per_s": 100.0}, "base model": row},
               "llama.cpp": {"8 adapters": row}}
    text = against_llama.table(results).splitlines()
    assert len(text) == 4 and text[2].startswith("| 8 adapters | 50.0 |") and text[2].endswith("| 2.00× |")
    assert text[3].startswith("| base model | – | – | – | – | 50.0 |") and text[3].endswith("| – |")
    assert [load.label for load in against_llama.Config(on_disk=1000, distinct=100).loads()] == [
        "base model", "1 adapter", "8 adapters", "100 of 1000 adapters", "8 adapters, busy process"]
    only = against_llama.Config(only=("busy", "8"), repeats=3).loads()
    assert [(load.label, load.adapters, load.busy) for load in only] == [("8 adapters", 8, False),
                                                                         ("8 adapters, busy process", 8, True)]


def test_store_suite_spreads_and_table():
    assert serve_store.suite_runs(1000, quick=False) == [("uniform over 100", 100, None), ("uniform over all", 1000, None),
                                                          ("Zipf 1.1 over all", 1000, 1.1), ("one adapter", 1, None)]
    assert serve_store.suite_runs(100, quick=True)[0] == ("uniform over 10", 10, None)
    row = dict(requests_per_s=10.0, hit_ratio=0.5, loads_per_s=1.0, evictions_per_s=0.5, mean_load_ms=3.0,
               resident="1.0 / 2.0", cold="5.0 / 9.0")
    text = serve_store.suite_table([{"label": "uniform over 100", **row},
                                    {"label": "one adapter", **row, "requests_per_s": 20.0}]).splitlines()
    assert "| 0.50× |" in text[2] and "| 1.00× |" in text[3]


def test_thread_table_gives_busy_over_idle():
    text = threads.table({"threads=2 wait=default": {"idle": 20.0, "busy": 5.0}}).splitlines()
    assert text[2] == "| threads=2 wait=default | 20.0 | 5.0 | 0.25 |"
    assert math.isnan(threads.ratio(1.0, 0.0))
    assert threads.Setting(2, "PASSIVE").env()["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in threads.Setting(2).env() and threads.Setting(1).label == "threads=1"


def test_decode_benchmark_loads_and_tables():
    from benchmarks import decode

    assert decode.names_for("base", 3) == [None] * 3 and decode.names_for("1 adapter", 2) == ["a0", "a0"]
    assert decode.names_for("8 adapters", 10) == [f"a{i % 8}" for i in range(10)]
    before, after = decode.PATHS
    text = decode.table({"base": {"tokens_per_s": {before: 50.0, after: 80.0}, "same_tokens": "48/48"}})
    assert text.splitlines()[-1] == "| base | 50.0 | 80.0 | 1.60× | 48/48 |"
    row = {"tokens_per_s": 40.0, "p50_s": 1.0, "p99_s": 2.0, "errors": 0, "mismatches": 1}
    server = decode.server_table({"1 adapter": {before: row, after: {**row, "tokens_per_s": 60.0, "mismatches": 0}}})
    assert server.splitlines()[-1] == "| 1 adapter | 40.0 | 60.0 | 1.50× | 1.00 / 2.00 | 1.00 / 2.00 | 0 | 1 |"
