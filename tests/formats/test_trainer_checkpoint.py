"""transformers' Trainer (and TRL's SFTTrainer) on a model loralab adapted: checkpoints hold the adapter,
resume gives the uninterrupted run's adapter, load_best_model_at_end restores the best checkpoint's adapter."""
import os

import pytest
import torch
from safetensors.torch import load_file

import loralab
from loralab import LoraConfig
from loralab.formats.trainer_checkpoint import is_trainer_checkpoint, trainable_state
from loralab.testing import one_thread, tiny_model

transformers = pytest.importorskip("transformers")


def _data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 6), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": int(ids[i, 0] % 3)}
            for i in range(n)]


def _trainer(out, max_steps: int = 8, **kwargs):
    model = tiny_model("bert")
    torch.manual_seed(0)                     # the same LoRA init in every run
    loralab.inject(model, LoraConfig(r=2, alpha=4, task_type="SEQ_CLS"))
    args = transformers.TrainingArguments(
        output_dir=str(out), report_to=[], use_cpu=True, per_device_train_batch_size=4, max_steps=max_steps,
        save_steps=2, eval_steps=2, eval_strategy="steps", learning_rate=1e-2, seed=0, logging_steps=100,
        disable_tqdm=True, **kwargs)
    return transformers.Trainer(model=model, args=args, train_dataset=_data(16, 0), eval_dataset=_data(8, 1))


def _adapter_files(folder) -> dict:
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_folders_hold_the_adapter_and_the_trainable_tensors(tmp_path):
    with one_thread():
        trainer = _trainer(tmp_path / "run", max_steps=4)
        trainer.train()
    for step in (2, 4):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        assert {"adapter_config.json", "adapter_model.safetensors", "model.safetensors"} <= set(os.listdir(folder))
        assert loralab.read_adapter(folder).factors          # a loralab/PEFT adapter folder
    # model.safetensors: only what trains, named as the model names it (what Trainer reloads), not the base
    saved = load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    assert _same(saved, {k: v.contiguous() for k, v in trainable_state(trainer.model).items()})
    assert not any(".base_layer." in k or "original_module" in k for k in saved)
    # the last checkpoint's adapter is the trained one
    assert _same(_adapter_files(tmp_path / "run" / "checkpoint-4"), _adapter_files(_saved(trainer, tmp_path / "final")))


def _saved(trainer, folder):
    trainer.save_model(str(folder))
    assert not (folder / "model.safetensors").exists()   # a plain save stays a PEFT adapter folder
    return folder


class StopAt(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resume_from_checkpoint_gives_the_uninterrupted_runs_adapter(tmp_path):
    with one_thread():
        whole = _trainer(tmp_path / "whole")
        whole.train()
        interrupted = _trainer(tmp_path / "resumed")
        interrupted.add_callback(StopAt(4))                 # the same schedule, stopped after checkpoint-4
        interrupted.train()
        resumed = _trainer(tmp_path / "resumed")
        resumed.train(resume_from_checkpoint=True)
    assert interrupted.state.global_step == 4 and resumed.state.global_step == 8
    expected = _adapter_files(_saved(whole, tmp_path / "a"))
    got = _adapter_files(_saved(resumed, tmp_path / "b"))
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6
    # and the resumed run really moved on from checkpoint-4
    assert not _same(got, _adapter_files(tmp_path / "resumed" / "checkpoint-4"))


def test_load_best_model_at_end_restores_the_best_checkpoints_adapter(tmp_path):
    with one_thread():
        trainer = _trainer(tmp_path / "run", load_best_model_at_end=True, metric_for_best_model="loss")
        trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    losses = {f"checkpoint-{h['step']}": h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert os.path.basename(best) == min(losses, key=losses.get)
    assert os.path.basename(best) != "checkpoint-8"       # the test means something: the best is not the last
    assert _same(_adapter_files(_saved(trainer, tmp_path / "end")), _adapter_files(best))


def test_only_trainer_checkpoint_folders_get_the_trainable_tensors():
    assert is_trainer_checkpoint("out/checkpoint-12")
    assert not is_trainer_checkpoint("out/checkpoint-best") and not is_trainer_checkpoint("out/adapter")


# ------------------------------------------------------------------------------------------------
# TRL's SFTTrainer: the injected model is the path (TRL's peft_config takes only peft.PeftConfig objects)
# ------------------------------------------------------------------------------------------------
def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<pad>", "<s>", "</s>", *[f"w{i}" for i in range(40)]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")


def _sft(tmp_path, **kwargs):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    text = [" ".join(f"w{(i + j) % 40}" for j in range(8)) for i in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], use_cpu=True, max_steps=4, save_steps=2,
                         per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=100, disable_tqdm=True,
                         max_length=16)
    return trl.SFTTrainer(args=args, train_dataset=datasets.Dataset.from_dict({"text": text}),
                          processing_class=_word_tokenizer(), **kwargs)


def test_sft_trainer_trains_and_checkpoints_an_injected_model(tmp_path):
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, alpha=4))
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    with one_thread():
        trainer = _sft(tmp_path, model=model)
        trainer.train()
        trainer.save_model(str(tmp_path / "adapter"))
    after = trainable_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)          # it trained
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "adapter"))
    assert "model.safetensors" in os.listdir(tmp_path / "sft" / "checkpoint-4")
    reloaded = loralab.load_adapter(tiny_model("llama"), tmp_path / "adapter")
    assert _same(trainable_state(reloaded), {k: v for k, v in after.items()})


def test_sft_trainer_peft_config_is_trls_and_refuses_a_loralab_config(tmp_path):
    pytest.importorskip("peft")
    with pytest.raises((TypeError, ValueError), match=r"must be a `peft.PeftConfig` instance"):
        _sft(tmp_path, model=tiny_model("llama"), peft_config=LoraConfig(r=2))
