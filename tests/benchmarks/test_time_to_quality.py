"""benchmarks/time_to_quality.py: the threshold, time and steps to it, medians over seeds and the ratio, on
hand-made curves; and that loralab's row reads its settings from loralab's own CLI defaults."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import time_to_quality as ttq  # noqa: E402

# (step, training seconds so far, dev accuracy)
CURVE = [(10, 2.0, 0.50), (20, 4.0, 0.78), (30, 6.0, 0.81), (40, 8.0, 0.90)]


def test_reach_is_the_first_evaluation_at_or_above_the_threshold():
    assert ttq.best_accuracy(CURVE) == 0.90
    assert ttq.reach(CURVE, 0.81) == (30, 6.0)         # exactly at the threshold counts
    assert ttq.reach(CURVE, 0.80) == (30, 6.0)
    assert ttq.reach(CURVE, 0.50) == (10, 2.0)
    assert ttq.reach(CURVE, 0.91) is None


def test_median_counts_a_run_that_never_got_there_as_infinitely_slow():
    assert ttq.median_or_none([3.0, 1.0, 2.0]) == 2.0
    assert ttq.median_or_none([1.0, None, 2.0]) == 2.0
    assert ttq.median_or_none([1.0, None, None]) is None
    assert ttq.median_or_none([1.0, 3.0]) == 2.0


def _run(curve, steps, seconds):
    return {"curve": curve, "steps": steps, "seconds": seconds}


def test_summary_threshold_medians_and_ratio():
    fast = [(10, 1.0, 0.70), (20, 2.0, 0.85), (30, 3.0, 0.88)]
    slow = [(10, 3.0, 0.60), (20, 6.0, 0.80), (30, 9.0, 0.90)]
    never = [(10, 3.0, 0.50), (20, 6.0, 0.55), (30, 9.0, 0.60)]
    summary = ttq.summarize({
        "loralab": [_run(fast, 30, 3.0), _run(fast, 30, 3.3), _run(slow, 30, 9.0)],
        "peft_docs": [_run(slow, 30, 9.0), _run(slow, 30, 9.3), _run(never, 30, 9.0)],
    })
    assert summary["best_accuracy"] == 0.90
    assert summary["threshold"] == pytest.approx(0.81)
    ll, peft = summary["rows"]["loralab"], summary["rows"]["peft_docs"]
    # loralab reaches 0.81 at (20, 2.0), (20, 2.0), (30, 9.0): medians 2.0 s and 20 steps
    assert (ll["time_to_threshold_s"], ll["steps_to_threshold"], ll["reached"]) == (2.0, 20, 3)
    assert ll["best_accuracy"] == 0.88
    assert ll["seconds_per_step"] == pytest.approx(0.11)
    # PEFT: (30, 9.0), (30, 9.0), never: medians 9.0 s and 30 steps
    assert (peft["time_to_threshold_s"], peft["steps_to_threshold"], peft["reached"]) == (9.0, 30, 2)
    assert ll["ratio_vs_anchor"] == pytest.approx(4.5)
    assert peft["ratio_vs_anchor"] == 1.0


def test_summary_without_a_time_has_no_ratio():
    never = [(10, 1.0, 0.1), (20, 2.0, 0.2)]
    summary = ttq.summarize({"loralab": [_run(CURVE, 40, 8.0)], "peft_docs": [_run(never, 20, 2.0)]})
    assert summary["rows"]["peft_docs"]["time_to_threshold_s"] is None
    assert summary["rows"]["loralab"]["ratio_vs_anchor"] is None
    table = ttq.markdown_table("sst2", summary).splitlines()
    assert table[0].startswith("**sst2**: threshold 81.0 % = 90 % of the best dev accuracy of any run (90.0 %)")
    assert table[-1] == "| PEFT + Trainer, PEFT docs' settings | 20.0 % | — | — | 0.100 | — | 0/1 |"
    assert all(line.count("|") == 8 for line in table[2:])
    title = ttq.markdown_table("mrpc", summary, majority=0.684).splitlines()[0]
    assert title.endswith("(90.0 %); the commonest label alone scores 68.4 %; medians over seeds")


@pytest.mark.needs_shared_data("glue/MRPC/train.tsv")
def test_loralab_row_reads_the_cli_defaults(shared_data):
    from loralab.training.config import TrainConfig

    bench = ttq.Bench(data_root=shared_data / "glue", steps=5, eval_examples=80, threads=1, dev_limit=20)
    config = ttq.loralab_config(bench, "mrpc", seed=3)
    defaults = TrainConfig.__dataclass_fields__
    for name in ("lr", "epochs", "batch_size", "warmup_ratio", "max_warmup_steps", "scheduler", "weight_decay",
                 "lora_plus_ratio"):
        assert getattr(config, name) == defaults[name].default, name
    assert (config.seed, config.eval_every, config.threads, config.dev_limit) == (3, 5, 1, 20)   # 80 examples of 16
    assert (ttq.eval_interval(bench, 32), ttq.eval_interval(bench, 8, grad_accum=2), ttq.eval_interval(bench, 128)) \
        == (2, 5, 1)
    assert config.task == "pair-classification" and config.read_options["text_pair_column"] == 4
    recipe = ttq.loralab_recipe(config, _bert(), train_examples=2576)
    assert recipe.training["learning_rate"] == config.lr
    assert recipe.training["warmup_steps"] == 10         # 6 % of 3 epochs × 161 batches of 16 = 29, capped
    assert ttq.loralab_recipe(config, _bert(), train_examples=67_349).training["warmup_steps"] == 10
    assert recipe.lora["r"] == config.lora["r"] and recipe.lora["lora_alpha"] == config.lora["alpha"]
    assert recipe.lora["target_modules"] == "all-linear"             # train's default, in PEFT's spelling
    assert math.isclose(recipe.lora["lora_dropout"], config.lora["dropout"])


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16))
