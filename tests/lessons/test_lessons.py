"""Every lesson in quick mode: it runs to the end, all its check-yourself answers agree, its page and figures
are written, and the numbers it computes are the ones worked out here independently (the quick model: a
2-layer BERT, hidden 32, MLP 37, 2-way head; tiny LLaMA hidden 32, 2 KV heads of 8)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from loralab.lessons import LESSONS, get_lesson
from loralab.lessons.runner import exercise_source, run_lesson

D, LAYERS, FFN, HEAD = 32, 2, 37, 32 * 2 + 2
GPT3_PARAMS = 174_604_259_328
# Lessons and their check-yourself counts; a lesson that loses an exercise should fail loudly.
CHECKS = {1: 5, 2: 6, 3: 6, 4: 7, 5: 6}
PREDICTIONS = {1: 0, 2: 1, 3: 3, 4: 1, 5: 1}


@pytest.mark.parametrize("number", [lesson.number for lesson in LESSONS])
def test_lesson_runs_and_verifies_its_answers(quick_lessons, number):
    run, out = quick_lessons[number]
    assert run.failed is None, run.failed.error
    checks = run.namespace["checks"]
    exercises, predictions = checks.of_kind("exercise"), checks.of_kind("prediction")
    assert len(exercises) == CHECKS[number] and all(c["status"] == "right" for c in exercises)
    # a prediction is checked against the measurement: right or wrong, never missing in the answered page
    assert len(predictions) == PREDICTIONS[number] and all(c["status"] in ("right", "wrong") for c in predictions)
    assert run.disagreements == []
    summary = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert summary["failed"] is False and summary["quick"] is True and summary["lang"] == "en"
    assert len(summary["checks"]) == CHECKS[number] + PREDICTIONS[number]
    figures = sorted((out / "figures").glob("*.png"))
    assert figures and len(figures) == sum(len(c["figures"]) for c in summary["cells"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(figures)
    assert f"Score: {CHECKS[number]} of {CHECKS[number]} right, 0 wrong, 0 missing" in page
    assert summary["score"].startswith(f"Score: {CHECKS[number]} of {CHECKS[number]} right")
    assert '<html lang="en">' in page and page.count('<details class="hint">') >= CHECKS[number]


def test_lesson_1_numbers(quick_lessons):
    ns = quick_lessons[1][0].namespace
    assert ns["answer_1"] == 8 * (FFN + D)                      # rank-8 factors of the 37×32 MLP matrix
    assert ns["full_states"] == 16 * GPT3_PARAMS and ns["lora_states"] < ns["full_states"]
    assert ns["budgets"]["gpt3-175b"].skeleton.total_params == GPT3_PARAMS
    assert ns["answer_4"] == 16 * GPT3_PARAMS
    assert ns["W_q"].shape == (D, D) and ns["W_up"].shape == (FFN, D)
    errors = ns["relative_errors"](ns["W_q"])
    assert errors[0] == pytest.approx(1.0) and errors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(errors, errors[1:]))      # Eckart-Young error falls with r


def test_lesson_2_numbers(quick_lessons):
    ns = quick_lessons[2][0].namespace
    assert ns["h"].tolist() == [15.0, 2.0, 22.0, -6.0]
    assert ns["init_gap"] == 0.0 and ns["grad_A"] == 0.0 and ns["grad_B"] > 0
    start, losses, (grad_a, grad_b) = ns["swapped"]                 # A = 0, B random
    assert start == 0.0 and grad_b == 0.0 and grad_a > 0 and losses[-1] < losses[0]
    assert ns["measured_1"] == "a" == ns["prediction_1"]
    assert ns["drift"] < 1e-5                                   # ten merged task switches, float32 rounding
    assert set(ns["table"]) == {"sst2", "mrpc"}
    norms = ns["delta_norms"]
    # with a constant scale s = α the update grows with r; dividing by r keeps it from growing
    assert norms["α (no division)"][-1] > norms["α/r (the paper)"][-1]
    assert norms["α/r (the paper)"][-1] <= norms["α/r (the paper)"][0]


def test_lesson_2_lora_from_scratch_peft_and_pictures(quick_lessons, quick_lessons_zh):
    ns = quick_lessons[2][0].namespace
    logit_gap, grad_gap = ns["gaps"]                            # the learner's LoRALinear vs loralab.inject
    assert logit_gap <= 1e-6 and grad_gap <= 1e-6 and len(ns["mine"]) == 4      # Wq, Wv of 2 layers
    (check,) = [c for c in quick_lessons[2][0].checks if c["key"] == "answer_0"]
    assert check["status"] == "right" and check["concept"] == "low-rank"
    if importlib.util.find_spec("peft") is not None:
        assert ns["peft_gap"] is not None and ns["peft_gap"] <= 1e-5          # PEFT's PeftModel, same logits
    errors = [ns["rel_error"][r] for r in ns["recon_ranks"]]
    assert all(a >= b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-5  # full rank rebuilds Wq
    for runs, label in ((quick_lessons, "training: two parallel paths"), (quick_lessons_zh, "训练时:两条并行支路")):
        page = (runs[2][1] / "index.html").read_text(encoding="utf-8")
        assert page.count('<div class="diagram"><svg') == 1 and label in page and "W0 + (α/r)·B·A" in page


def test_lesson_2_a_wrong_from_scratch_forward_is_wrong_not_a_traceback(quick_lessons, tmp_path):
    copy = exercise_source(get_lesson(2).path.read_text(encoding="utf-8"), "en").replace(
        "answer_0 = None  # your answer", "answer_0 = lambda layer, x: layer.base(x) + (x @ layer.A.T) @ layer.B.T", 1)
    source = tmp_path / "lesson_2.en.py"
    source.write_text(copy, encoding="utf-8")
    cache = next(iter(quick_lessons.values()))[1].parent / "cache"
    run = run_lesson(get_lesson(2), tmp_path / "out", cache, quick=True, exercises=True, source=source)
    assert run.failed is None, run.failed.error
    (check,) = [c for c in run.checks if c["key"] == "answer_0"]
    assert check["status"] == "wrong" and "|Δlogits| = " in check["answer"]      # the scale α/r left out


def test_lesson_3_numbers(quick_lessons):
    ns = quick_lessons[3][0].namespace
    assert ns["gpt3"][8].trainable_params == 2 * 96 * 8 * (12288 + 12288)
    assert ns["gpt3"][1].trainable_params == 4_718_592 and ns["gpt3"][4].trainable_params == 18_874_368
    assert ns["costs"]["MiniLM"] == {"Wq": LAYERS * 8 * 2 * D, "Wq, Wv": 2 * LAYERS * 8 * 2 * D,
                                     "Wq, Wk, Wv, Wo": 4 * LAYERS * 8 * 2 * D,
                                     "all linear": LAYERS * 8 * (4 * 2 * D + 2 * (D + FFN)) + 8 * 2 * D}
    # tiny LLaMA: q, o 32×32; k, v 16×32 (2 KV heads of 8)
    assert ns["costs"]["SmolLM2"]["Wq, Wv"] == LAYERS * 8 * ((32 + 32) + (32 + 16))
    assert sorted(ns["runs"]) == [1, 2, 4, 8, 16] and ns["head_only"].trainable == HEAD
    for r, run in ns["runs"].items():
        assert run.trainable == 2 * LAYERS * r * 2 * D + HEAD
        assert len(run.losses) == 6
    assert ns["lowest"] in ns["RANKS"] and ns["final_loss"][ns["lowest"]] == min(ns["final_loss"].values())


def test_lesson_3_targets_at_an_equal_budget(quick_lessons):
    """Section 5: Table 5's Wq / Wv / Wq,Wv / all-four rows of `loralab experiment targets`' grid, one budget."""
    ns = quick_lessons[3][0].namespace
    runs = ns["target_runs"]
    assert list(runs) == ["Wq", "Wv", "Wq,Wv", "Wq,Wk,Wv,Wo"]
    assert {label: ns["grid"][label][1] for label in runs} == {"Wq": 8, "Wv": 8, "Wq,Wv": 4, "Wq,Wk,Wv,Wo": 2}
    assert set(ns["budget"].values()) == {LAYERS * 8 * 2 * D}          # 16·L·d in every row
    assert all(run.trainable == LAYERS * 8 * 2 * D + HEAD for run in runs.values())
    assert runs["Wq,Wv"] is ns["runs"][4] or runs["Wq,Wv"].folder == ns["runs"][4].folder   # section 4's r = 4 run
    assert runs["Wq"].settings["options"]["targets"] == ["query"]
    assert runs["Wq,Wk,Wv,Wo"].settings["options"]["targets"] == ["query", "key", "value", "attention.output.dense"]
    assert ns["best_5"] in runs and ns["TABLE_5"]["Wq,Wv"] == (73.7, 91.3)


def test_lesson_4_numbers(quick_lessons):
    ns = quick_lessons[4][0].namespace
    work = ns["work"]
    assert work["lora_merged"] == work["base"]                  # same calls, same FLOPs
    assert work["lora_unmerged"][0] - work["base"][0] == 2 * 2 * LAYERS     # A·x and B·(A·x) per adapted layer
    assert work["houlsby"][0] - work["base"][0] == 2 * 2 * LAYERS           # down and up, 2 adapters per block
    runs = ns["runs"]
    assert runs["LoRA r=8 (Wq, Wv)"].trainable == 2 * LAYERS * 8 * 2 * D + HEAD
    assert runs["prefix-tuning, l=16"].trainable == LAYERS * 2 * 16 * D + HEAD
    assert runs["Houlsby adapters, m=8"].trainable == 2 * LAYERS * (2 * D * 8 + D + 8) + HEAD
    phi = ns["similarity"][ns["query"]].phi
    assert len(phi) == 8 and len(phi[0]) == 16 and all(0 <= v <= 1 + 1e-9 for row in phi for v in row)
    assert {row.config for row in ns["rows"]} == {"base", "houlsby", "lora_unmerged", "lora_merged"}
    assert ns["answer_5"] == 0


def test_lesson_4_data_size(quick_lessons, quick_lessons_zh):
    """Section 5: LoRA and full fine-tuning on nested subsets (16, 32 of the quick recipe's 48), the same steps;
    two seeds at the smallest size (median and min–max), cached as `-s1` beside the seed-0 run."""
    ns = quick_lessons[4][0].namespace
    assert ns["SIZES"] == (16, 32, 48) and ns["SEEDS"] == {16: 2, 32: 1, 48: 1}
    cache = ns["S"].cache
    for method, name in (("LoRA", "sst2-lora-alpha16.0-r8"), ("full", "sst2-full")):
        runs = ns["by_size"][method]
        assert [len(runs[n]) for n in (16, 32, 48)] == [2, 1, 1]
        assert all(len(run.losses) == 6 for seeds in runs.values() for run in seeds)
        assert [run.settings.get("train_size") for run in runs[16] + runs[32]] == [16, 16, 32]
        assert "train_size" not in runs[48][0].settings
        assert [run.settings.get("seed") for run in runs[16]] == [None, 1]     # seed 0 keeps the one-seed key
        assert [run.folder.name for run in runs[16]] == [f"{name}-n16", f"{name}-n16-s1"]
        assert all((cache / run.folder.name / "run.json").is_file() for run in runs[16])
        assert runs[16][1].losses != runs[16][0].losses                  # another seed, another run
        median, low, high = ns["spread"](method, 16)
        accuracies = sorted(run.dev_accuracy for run in runs[16])
        assert (low, high) == (accuracies[0], accuracies[-1]) and median == sum(accuracies) / 2   # two seeds
    assert sorted(p.name for p in cache.glob("sst2-*-n*")) == sorted(
        f"{name}-n{n}{s}" for name in ("sst2-lora-alpha16.0-r8", "sst2-full") for n, s in
        (("16", ""), ("16", "-s1"), ("32", "")))
    assert ns["by_size"]["LoRA"][48] == [ns["runs"]["LoRA r=8 (Wq, Wv)"]]     # the recipe's whole set: section 1's run
    assert ns["by_size"]["LoRA"][16][1].trainable == 2 * LAYERS * 8 * 2 * D + HEAD
    assert ns["answer_7"] == 3.0 and ns["passes"][48] == 1.0
    assert ns["PAPER_TABLE16"]["lora"][0] == 63.8 and ns["PAPER_TABLE16"]["full"][0] == 60.2
    # the verdict on the smallest set reads the seed ranges: ahead only when they do not overlap
    (_, lora_low, lora_high), (_, full_low, full_high) = ns["spread"]("LoRA", 16), ns["spread"]("full", 16)
    expected = "ahead" if lora_low > full_high else "behind" if lora_high < full_low else "within"
    assert ns["leads_5"][16] == expected
    zh = quick_lessons_zh[4][0].namespace
    # the Chinese edition trains nothing: every seed's run is read back from the cache
    assert all(run.reused for seeds in zh["by_size"]["full"].values() for run in seeds)
    assert zh["leads_5"] == ns["leads_5"]


def test_train_run_seed_changes_the_initialisation(quick_lessons):
    """kit.train_run(seed=...): another head and dropout, the same cache layout; seed 0 is the one-seed run."""
    ns = quick_lessons[4][0].namespace
    s0, s1 = ns["by_size"]["LoRA"][16][:2]
    assert s0.settings == {k: v for k, v in s1.settings.items() if k != "seed"} and s1.settings["seed"] == 1
    assert s0.losses[0] != s1.losses[0]


def test_subsets_are_nested_and_seeded():
    from loralab.lessons.kit import subset

    rows = list(range(50))
    assert set(subset(rows, 10)) <= set(subset(rows, 30)) and subset(rows, 30) == sorted(subset(rows, 30))
    assert subset(rows, 10) == subset(rows, 10) and len(subset(rows, 50)) == 50


def test_lesson_5_numbers(quick_lessons):
    ns = quick_lessons[5][0].namespace
    m, k = ns["m"], ns["k"]
    assert ns["D"] == m * k + m + 2 * m + 2
    assert ns["P_all"].shape == (ns["D"], max(ns["DIMS"]))
    assert set(ns["updates"]) == {f"bert.encoder.layer.{i}.attention.self.{w}" for i in range(LAYERS)
                                  for w in ("query", "value")}
    assert ns["answer_4"] == 2 * LAYERS * 1 * 2 * D
    assert ns["flops"]["prefix"] - ns["flops"]["base"] == 2 * LAYERS * 2 * 32 * 16 * D


def test_lesson_5_forgetting(quick_lessons, quick_lessons_zh):
    """Section 4: the paraphrase AUC of the base, LoRA's and full fine-tuning's encoders (64 MRPC dev pairs in quick
    mode), kept next to the runs and read back by the Chinese edition; the adapter off gives the base exactly."""
    ns = quick_lessons[5][0].namespace
    assert len(ns["pairs"]) == 64 and set(ns["auc"]) == {"base", "LoRA", "full"}
    assert all(0.0 <= a <= 1.0 for a in ns["auc"].values())
    assert ns["forgetting"]["full"] == pytest.approx(ns["auc"]["base"] - ns["auc"]["full"], abs=0)
    assert ns["off_gap"] == 0.0 and ns["on_gap"] > 0.0            # off: the base bit for bit; on: the adapter acts
    saved = json.loads((ns["lora8"].folder / "probe.json").read_text(encoding="utf-8"))
    assert saved == {"key": {"model": ns["S"].model, "probe": "mrpc dev", "pairs": 64}, "value": ns["auc"]["LoRA"]}
    assert quick_lessons_zh[5][0].namespace["auc"] == ns["auc"]


def test_remembered_reads_back_only_the_same_key(tmp_path):
    from loralab.lessons.kit import remembered

    calls = []
    compute = lambda: calls.append(1) or 0.25          # noqa: E731
    assert remembered(tmp_path / "v.json", {"a": 1}, compute) == 0.25
    assert remembered(tmp_path / "v.json", {"a": 1}, compute) == 0.25 and len(calls) == 1
    assert remembered(tmp_path / "v.json", {"a": 2}, compute) == 0.25 and len(calls) == 2


def test_lessons_reuse_cached_runs(quick_lessons):
    """Lesson 4 reads back lesson 3's r=8 and r=16 adapters, lesson 5 lesson 4's full fine-tuning."""
    lesson_4 = quick_lessons[4][0].namespace["runs"]
    assert lesson_4["LoRA r=8 (Wq, Wv)"].reused and lesson_4["LoRA r=16 (Wq, Wv)"].reused
    assert quick_lessons[5][0].namespace["full_run"].reused


@pytest.mark.slow
@pytest.mark.parametrize("number", [lesson.number for lesson in LESSONS])
def test_lesson_normal_mode(lessons_ready, tmp_path_factory, number):
    """The real thing: all-MiniLM-L6-v2 (a few minutes per lesson on 2 CPU cores)."""
    from loralab.lessons import get_lesson
    from loralab.lessons.runner import run_lesson

    root = tmp_path_factory.getbasetemp() / "lessons-normal"
    run = run_lesson(get_lesson(number), root / f"{number:02d}", root / "cache", quick=False)
    assert run.failed is None, run.failed.error
    assert run.disagreements == []           # every worked solution right (a prediction may disagree with a run)
