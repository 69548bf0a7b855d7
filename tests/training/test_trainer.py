"""The trainer on tiny random-init models: determinism, accumulation, target-only causal LM loss, regression,
the NaN guard and its last good checkpoint, callbacks and stopping at a step boundary."""
from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from transformers import AutoTokenizer

import loralab
from loralab.data.batching import PadCollator
from loralab.training.checkpoint import latest_checkpoint, load_checkpoint
from loralab.training.config import TrainConfig
from loralab.data.encoding import Task, encode_examples
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.data.readers import ReadOptions, read_examples
from loralab.training.evaluation import evaluate
from loralab.training.inputs import head_modules, load_model_for
from loralab.training.trainer import Trainer, TrainerCallback, TrainingDiverged, TrainingInterrupted


def test_training_learns_and_is_bitwise_deterministic(classifier_run, tmp_path):
    results = []
    for run in range(2):
        model, config, train, dev, collator, label_map = classifier_run()
        trainer = Trainer(model, config, train, dev, collator, tmp_path / f"run{run}", label_map)
        state = trainer.fit()
        results.append((trainer.best_state, state))
    (best_a, state_a), (best_b, state_b) = results
    assert best_a.keys() == best_b.keys()
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    train_losses = [r["loss"] for r in state_a["history"] if r["split"] == "train"]
    assert state_a["step"] == 24 and len(train_losses) >= 2  # 96 examples / 8 = 12 steps per epoch, 2 epochs
    assert train_losses[-1] < train_losses[0]  # it learns the training data
    assert [r for r in state_a["history"] if r["split"] == "dev"] == [r for r in state_b["history"] if r["split"] == "dev"]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradient_accumulation_matches_one_big_batch(classifier_run, tmp_path):
    model, config, train, dev, collator, label_map = classifier_run(grad_accum=2)
    trainer = Trainer(model, config, train, dev, collator, tmp_path, label_map)
    trainer.optimizer.step = lambda: None  # keep weights fixed; look at the accumulated gradient
    halves = [list(range(0, 4)), list(range(4, 8))]
    trainer._step(halves)
    # _step zeroes the grads after the update; recompute them the same way and compare with one batch of 8.
    model.zero_grad()
    for half in halves:
        (model(**collator([train[i] for i in half])).loss / 2).backward()
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model(**collator([train[i] for i in range(8)])).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(accumulated[name], param.grad, atol=1e-6, rtol=1e-5)


def test_causal_lm_loss_covers_only_the_target_and_training_lowers_it(tiny_gpt2_dir, e2e_file, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    task = Task("causal-lm", max_length=64)
    examples = read_examples(e2e_file, ReadOptions(format="e2e"))
    data = encode_examples(examples, tokenizer, task)
    model = load_model_for(str(tiny_gpt2_dir), "causal-lm", None, tokenizer)
    loralab.inject(model, loralab.LoraConfig(r=8, targets="all-linear"))
    collator = PadCollator(tokenizer.pad_token_id)
    # The model's own loss on a right-padded batch equals ours, computed on target tokens only.
    batch = collator([data[0], data[1]])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        own = model(**batch).loss
    shift_labels = batch["labels"][:, 1:]
    mask = shift_labels != -100
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][mask], shift_labels[mask])
    assert float(own) == pytest.approx(float(manual), rel=1e-5)
    prompt_len = len(tokenizer(examples[0].text + "\n")["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all() and (batch["labels"][0, prompt_len:] != -100).any()

    before = evaluate(model, data, "causal-lm", collator).metrics
    config = TrainConfig(model=str(tiny_gpt2_dir), train_file=str(e2e_file), task="causal-lm", batch_size=8,
                         lr=2e-2, epochs=20, progress=False, checkpoint_every=0, warmup_ratio=0.0)
    trainer = Trainer(model, config, data, data, collator, tmp_path)
    trainer.fit()
    trainer.load_best()
    after = evaluate(model, data, "causal-lm", collator).metrics
    assert after["loss"] < before["loss"] - 0.3
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))


def test_regression_trains_and_reports_correlations(tiny_bert_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    score = {"good": 4.0, "bad": 1.0, "fine": 3.0, "awful": 0.0, "great": 5.0, "poor": 1.5}
    examples = [Example(text=f"{a} and {b}", label=(score[a] + score[b]) / 2) for a in words for b in words]
    label_map = LabelMap.from_examples(examples, regression=True)
    task = Task("regression", max_length=16)
    data = encode_examples(examples, tokenizer, task, label_map)
    torch.manual_seed(0)
    model = load_model_for(str(tiny_bert_dir), "regression", label_map, tokenizer)
    assert model.config.num_labels == 1
    config = TrainConfig(model=str(tiny_bert_dir), train_file="x", task="regression", batch_size=6, lr=1e-2,
                         epochs=15, progress=False, checkpoint_every=0, eval_every=0, dtype="fp32")
    loralab.inject(model, config.lora_config(head_modules(model)))
    trainer = Trainer(model, config, data, data, PadCollator(tokenizer.pad_token_id), tmp_path, label_map)
    state = trainer.fit()
    trainer.load_best()
    metrics = evaluate(model, data, "regression", PadCollator(tokenizer.pad_token_id), label_map=label_map).metrics
    assert config.best_metric == "pearson" and metrics["pearson"] == pytest.approx(state["best"])
    assert metrics["pearson"] > 0.6 and set(metrics) == {"loss", "pearson", "spearman", "mse"}
    dev_mse = [r["mse"] for r in state["history"] if r["split"] == "dev"]
    assert dev_mse[-1] < dev_mse[0] / 2


def _poison_forward(model, at_call: int) -> None:
    """Make the `at_call`-th training forward return NaN embeddings (a diverging step)."""
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == at_call else output

    model.bert.embeddings.register_forward_hook(poison)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(classifier_run, tmp_path):
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100)
    _poison_forward(model, 5)  # the 5th training forward: step 5
    trainer = Trainer(model, config, train, dev, collator, tmp_path, label_map)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5.*step-000004.*--lr"):
        trainer.fit()
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step-000004"
    state = load_checkpoint(latest, model, trainer.optimizer, trainer.scheduler)
    assert state["step"] == 4 and state["sane"] is True
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Blowup(TrainerCallback):
    """After step `at`, set the classifier's bias to ±6.5e8: the loss stays finite, the weights do not stay sane."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, trainer, step, loss):
        if step == self.at:
            bias = next(p for n, p in trainer.model.named_parameters() if p.requires_grad and n.endswith("bias"))
            with torch.no_grad():
                bias.copy_(torch.tensor([6.5e8, -6.5e8]))


def test_nan_stop_names_the_last_sane_checkpoint_not_a_blown_up_one(classifier_run, tmp_path):
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100)
    _poison_forward(model, 7)
    trainer = Trainer(model, config, train, dev, collator, tmp_path, label_map, callbacks=[_Blowup(at=5)])
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    message = str(caught.value)
    assert "loss became nan at step 7" in message and "last good checkpoint is" in message
    assert f"{tmp_path / 'checkpoints' / 'step-000004'}" in message and "later step-000006" in message
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000004"
    assert not (tmp_path / "checkpoints" / "step-000006").exists()   # 6.5e8 weights: not kept as a resume point


def test_resume_skips_checkpoints_whose_weights_were_not_sane_and_says_which(classifier_run, tmp_path):
    """Issue 18: a run that ends (or is killed) with blown-up but finite weights keeps checkpoints marked
    sane: false; --resume must continue from the last sane one, not from them."""
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100, max_steps=8)
    Trainer(model, config, train, dev, collator, tmp_path, label_map, callbacks=[_Blowup(at=5)]).fit()
    folder = tmp_path / "checkpoints"
    assert latest_checkpoint(folder).name == "step-000008"
    assert [json.loads((folder / n / "state.json").read_text())["sane"] for n in ("step-000004", "step-000006",
                                                                                 "step-000008")] == [True, False, False]

    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100, max_steps=8)
    said = []
    resumed = Trainer(model, config, train, dev, collator, tmp_path, label_map, log=said.append)
    assert resumed.resume()
    assert said[0] == ("resuming from step-000004, the last checkpoint whose weights were sane; step-000006 and "
                       "step-000008 were not and are removed")
    assert resumed.state["step"] == 4 and latest_checkpoint(folder).name == "step-000004"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("step-")) == ["step-000004"]
    state = resumed.fit()
    assert state["step"] == 8 and state["sane"] is True and resumed.weights_record()[1] < 10


def test_resume_with_no_sane_checkpoint_says_so_and_suggests_a_lower_lr(classifier_run, tmp_path):
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100)
    _poison_forward(model, 3)
    trainer = Trainer(model, config, train, dev, collator, tmp_path, label_map, callbacks=[_Blowup(at=1)])
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    assert str(caught.value) == ("the loss became nan at step 3; training stopped and no sane checkpoint was written "
                                 "yet. Lower the learning rate (--lr, e.g. --lr 0.0005) or lengthen the warm-up "
                                 "(--warmup-ratio, --max-warmup-steps), and "
                                 f"start again with `loralab train --output {tmp_path} --overwrite --lr 0.0005`")
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=2, eval_every=100)
    with pytest.raises(loralab.LoraLabError) as caught:
        Trainer(model, config, train, dev, collator, tmp_path, label_map).fit(resume=True)
    assert str(caught.value) == (f"no checkpoint in {tmp_path / 'checkpoints'} has sane weights: step-000002 was not "
                                 "(weights not finite or above 1000x their start), so there is nothing to resume "
                                 f"from. Start over with a lower learning rate: `loralab train --output {tmp_path} "
                                 "--overwrite --lr 0.0005`")
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"   # nothing removed by the refusal


_DROPOUT = {"eval_every": 6, "lora": {"r": 8, "alpha": 16.0, "dropout": 0.1}}  # draws from the restored RNG


class _StopAt(TrainerCallback):
    def __init__(self, at: int, signum: int):
        self.at, self.signum, self.seen = at, signum, []

    def on_step_end(self, trainer, step, loss):
        self.seen.append(step)
        if step == self.at:
            trainer.request_stop(self.signum)


def test_stop_request_checkpoints_at_the_step_boundary_and_resume_ends_identical(classifier_run, tmp_path):
    model, config, train, dev, collator, label_map = classifier_run(**_DROPOUT)
    straight = Trainer(model, config, train, dev, collator, tmp_path / "straight", label_map)
    straight.fit()

    model, config, train, dev, collator, label_map = classifier_run(**_DROPOUT)
    stopper = _StopAt(7, signal.SIGTERM)
    trainer = Trainer(model, config, train, dev, collator, tmp_path / "stopped", label_map, callbacks=[stopper])
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at step 7 of 24.*step-000007.*--resume") as caught:
        trainer.fit()
    assert caught.value.exit_status == 143 and stopper.seen == list(range(1, 8))
    assert latest_checkpoint(tmp_path / "stopped" / "checkpoints").name == "step-000007"

    model, config, train, dev, collator, label_map = classifier_run(**_DROPOUT)
    resumed = Trainer(model, config, train, dev, collator, tmp_path / "stopped", label_map)
    state = resumed.fit(resume=True)
    assert state["step"] == 24
    assert all(torch.equal(straight.best_state[k], resumed.best_state[k]) for k in straight.best_state)
    assert [r for r in straight.state["history"] if r["split"] == "dev"] == \
        [r for r in state["history"] if r["split"] == "dev"]
