"""How the files in tests/golden/v0.1/ were made: run once against loralab 0.1.0 (commit f89891f), the layout
that adapters and checkpoints had before the architecture work. Kept for the record; running it again with a
newer loralab would write the newer layout, which is not what the golden tests are for.

    python tests/golden/make_golden_v0_1.py          # writes tests/golden/v0.1/

Each adapter folder gets `expected.safetensors` holding the logits the adapted tiny model gave on
`tiny_inputs(model)`. The run folder `run-bert/` holds a `loralab train` run on a tiny BERT as it stood at its
step-9 checkpoint (of 12) (dropout 0, so resuming does not depend on restoring the random generators) and
`final-adapter.safetensors`, the adapter tensors the same run reached when left to finish.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import loralab
from loralab import LoraConfig
from loralab.testing import model_output, tiny_inputs, tiny_model

HERE = Path(__file__).resolve().parent
OUT = HERE / "v0.1"
ADAPTERS = {
    # name: (family, LoraConfig fields)
    "bert-dora": ("bert", dict(r=4, alpha=8, dora=True, modules_to_save=["classifier"])),
    "gpt2-sliced": ("gpt2", dict(r=2, alpha=4)),
    "llama-pissa": ("llama", dict(r=2, alpha=4, init="pissa", targets=["q_proj", "v_proj"])),
    "bert-bias": ("bert", dict(r=2, alpha=2, bias="all", targets=["query", "value", "dense"],
                               rank_pattern={"layer.1.attention.self.value": 3})),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def write_adapters() -> None:
    for name, (family, fields) in ADAPTERS.items():
        model = tiny_model(family, seed=0)
        torch.manual_seed(0)
        loralab.inject(model, LoraConfig(**fields))
        randomize(model)
        folder = OUT / f"adapter-{name}"
        loralab.save_adapter(model, folder, base_model_name_or_path=f"tiny-{family}")
        save_file({"logits": model_output(model, tiny_inputs(model)).contiguous()}, str(folder / "expected.safetensors"))


def write_run() -> None:
    sys.path.insert(0, str(HERE.parent / "training"))
    from conftest import write_sst2_slice, write_tiny_bert  # noqa: E402
    from safetensors.torch import load_file

    from loralab.cli.main import main

    work = OUT / "_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_dir = write_tiny_bert(work / "tiny-bert")
    files = {s: write_sst2_slice(work, start, count, f"{s}.tsv")
             for s, start, count in (("train", 0, 48), ("dev", 1000, 24), ("test", 2000, 24))}
    common = ["--model", str(model_dir), "--train-file", str(files["train"]), "--dev-file", str(files["dev"]),
              "--test-file", str(files["test"]), "--max-length", "32", "--batch-size", "8", "--epochs", "2",
              "--lr", "5e-3", "--checkpoint-every", "3", "--eval-every", "6", "--threads", "1", "--no-progress"]
    torch.set_num_threads(1)
    full = work / "full"
    assert main(["train", "--output", str(full), *common]) == 0
    final = load_file(str(full / "checkpoints" / "step-000012" / "adapter" / "adapter_model.safetensors"))
    # Keep the run as it stood at its step-9 checkpoint (mid-way through epoch 2 of 12 steps).
    run = OUT / "run-bert"
    shutil.rmtree(run, ignore_errors=True)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000009", run / "checkpoints" / "step-000009")
    (run / "checkpoints" / "LATEST").write_text("step-000009\n")
    config = json.loads((full / "config.json").read_text())
    for key in ("model", "train_file", "dev_file", "test_file"):
        config[key] = f"<{key}>"          # the test fills in its own tiny model and data paths
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in final.items()}, str(run / "final-adapter.safetensors"))
    assert json.loads((run / "checkpoints" / "step-000009" / "state.json").read_text())["step"] == 9
    shutil.rmtree(work)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    write_adapters()
    write_run()
    print(f"wrote {OUT}")
