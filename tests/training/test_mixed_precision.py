"""Training in bf16 and fp16 (frozen base 16-bit, adapter and optimizer state fp32, autocast; fp16 with a loss
scaler), device-independent checkpoints (a run trained on a GPU resumes on a CPU and the reverse: the GPU side
is mocked here, and a marked test runs it for real on a GPU), and bad device/dtype input that writes nothing."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from loralab.cli.main import main
from loralab.training import state_files
from loralab.training.checkpoint import latest_checkpoint, read_checkpoint
from loralab.training.trainer import Trainer, TrainerCallback, TrainingInterrupted


def _args(model_dir, files, output, *extra: str) -> list[str]:
    return ["train", "--output", str(output), "--model", str(model_dir), "--train-file", str(files["train"]),
            "--dev-file", str(files["dev"]), "--max-length", "32", "--batch-size", "8", "--epochs", "1",
            "--lr", "5e-3", "--eval-every", "6", "--checkpoint-every", "3", "--threads", "1", "--no-progress",
            *extra]


def _train_losses(folder) -> list[float]:
    history = json.loads((folder / "metrics.json").read_text())["history"]
    return [row["loss"] for row in history if row["split"] == "train"]


def test_bf16_run_trains_fp32_adapter_close_to_the_fp32_run(tiny_bert_dir, sst2_files, tmp_path, capsys):
    assert main(_args(tiny_bert_dir, sst2_files, tmp_path / "fp32", "--log-every", "1")) == 0
    assert main(_args(tiny_bert_dir, sst2_files, tmp_path / "bf16", "--log-every", "1", "--dtype", "bf16")) == 0
    fp32, bf16 = _train_losses(tmp_path / "fp32"), _train_losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 12
    # bf16 frozen weights and autocast shift each loss by a few bf16 roundings (u = 2**-8 relative)
    assert bf16 == pytest.approx(fp32, abs=0.02)
    saved = load_file(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    state = read_checkpoint(latest_checkpoint(tmp_path / "bf16" / "checkpoints"))
    assert {t.dtype for t in state.trainable.values()} == {torch.float32}
    assert {t.dtype for entry in state.optimizer["state"].values() for k, t in entry.items() if k != "step"} \
        == {torch.float32}
    # the bf16-trained adapter on the fp32 base (eval's default) scores what it scored in training
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "bf16" / "adapter"), "--model", str(tiny_bert_dir),
                 "--file", str(sst2_files["dev"]), "--no-progress", "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    trained = json.loads((tmp_path / "bf16" / "metrics.json").read_text())["dev"]
    assert evaluated["loss"] == pytest.approx(trained["loss"], abs=0.02)


def test_fp16_run_on_cpu_scales_the_loss_and_resumes_the_scale(tiny_bert_dir, sst2_files, tmp_path, capsys):
    output = tmp_path / "fp16"
    assert main(_args(tiny_bert_dir, sst2_files, output, "--dtype", "fp16", "--max-steps", "6")) == 0
    assert "fp16 on the CPU runs, but slowly" in capsys.readouterr().err    # one warning line naming bf16
    state = json.loads((latest_checkpoint(output / "checkpoints") / "state.json").read_text())
    assert state["grad_scaler"]["scale"] > 0 and "_growth_tracker" in state["grad_scaler"]
    losses = _train_losses(output)
    assert all(loss == loss for loss in losses)                              # finite: no NaN
    assert main(_args(tiny_bert_dir, sst2_files, output, "--resume", "--max-steps", "12", "--dtype", "bf16")) == 0
    resumes = json.loads((output / "resumes.json").read_text())
    assert resumes[-1]["changed"]["dtype"] == ["fp16", "bf16"]


def test_resume_of_a_gpu_checkpoint_on_a_cpu_and_the_reverse(classifier_run, tmp_path, monkeypatch):
    """A GPU run's checkpoint holds CUDA generator states too (capture_rng); on a machine without CUDA the
    resume ignores them and continues exactly like an uninterrupted CPU run. Tensors are written from the CPU
    and read with the parameters' device and dtype (optimizer.load_state_dict), so no device is recorded."""
    straight = _trainer(classifier_run, tmp_path / "straight")
    straight.fit()

    fake_cuda_state = [torch.arange(16, dtype=torch.uint8)]
    with monkeypatch.context() as gpu:           # "train on a GPU": CUDA generator states are captured
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        gpu.setattr(torch.cuda, "get_rng_state_all", lambda: fake_cuda_state)
        with pytest.raises(TrainingInterrupted):
            _trainer(classifier_run, tmp_path / "moved", callbacks=[_StopAt(9)]).fit()
    checkpoint = read_checkpoint(latest_checkpoint(tmp_path / "moved" / "checkpoints"))
    assert torch.equal(checkpoint.rng["cuda"][0], fake_cuda_state[0])
    assert all(t.device.type == "cpu" for t in checkpoint.trainable.values())

    resumed = _trainer(classifier_run, tmp_path / "moved")                   # "on the CPU"
    resumed.fit(resume=True)
    assert all(torch.equal(straight.best_state[k], resumed.best_state[k]) for k in straight.best_state)

    # The reverse: a CPU run's checkpoint, resumed where CUDA is present, sets no CUDA generator.
    cpu_checkpoint = read_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    assert "cuda" not in cpu_checkpoint.rng
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state_files.restore_rng(cpu_checkpoint.rng)
    assert restored == []


def _trainer(classifier_run, output, callbacks=()) -> Trainer:
    model, config, train, dev, collator, label_map = classifier_run(checkpoint_every=3)
    return Trainer(model, config, train, dev, collator, output, label_map, callbacks=callbacks)


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            trainer.request_stop()


@pytest.mark.parametrize("flags, message", [
    (("--device", "cuda"), "no CUDA GPU is visible"),
    (("--device", "cuda:3"), "no CUDA GPU is visible"),
    (("--device", "tpu"), "device must be one of auto, cpu, cuda, cuda:N or mps"),
    (("--fsdp",), "fsdp shards the model across processes; launch with torchrun"),
])
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_bad_device_input_is_one_line_and_writes_nothing(tiny_bert_dir, sst2_files, tmp_path, capsys, flags, message):
    output = tmp_path / "run"
    assert main(_args(tiny_bert_dir, sst2_files, output, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not output.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_gpu_resume_on_cpu_and_back(tiny_bert_dir, sst2_files, tmp_path):
    output = tmp_path / "run"
    assert main(_args(tiny_bert_dir, sst2_files, output, "--device", "cuda", "--dtype", "bf16",
                      "--max-steps", "6")) == 0
    assert main(_args(tiny_bert_dir, sst2_files, output, "--resume", "--device", "cpu", "--dtype", "fp32",
                      "--max-steps", "9")) == 0
    assert main(_args(tiny_bert_dir, sst2_files, output, "--resume", "--device", "cuda", "--max-steps", "12")) == 0
    assert json.loads((output / "metrics.json").read_text())["steps"] == 12
