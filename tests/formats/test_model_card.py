"""The README.md model card in each adapter folder: what it says, and a user's own README is never overwritten."""
import json

from safetensors.torch import load_file

import loralab
from loralab import LoraConfig
from loralab.formats.model_card import CARD_MARKER
from loralab.models import ModelSource
from loralab.testing import tiny_model


def test_card_names_base_task_settings_parameters_and_how_to_load(tmp_path):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, alpha=8, targets=["query", "value"], task_type="SEQ_CLS", rslora=True))
    source = ModelSource("bert-base-uncased", "hub", tmp_path, "bert-base-uncased", revision="0123abcd")
    folder = loralab.save_adapter(model, tmp_path / "ad", source=source)
    card = (folder / "README.md").read_text()
    values = sum(t.numel() for t in load_file(str(folder / "adapter_model.safetensors")).values())
    assert card.startswith('---\nbase_model: "bert-base-uncased"\nlibrary_name: peft\n')
    assert CARD_MARKER in card
    for line in ["| base model | `bert-base-uncased` (loralab: hub `bert-base-uncased`, commit 0123abcd) |",
                 "| task_type | `SEQ_CLS` |", "| rank r / lora_alpha | 4 / 8 (rsLoRA scale alpha/√r) |",
                 "| variant / init | lora / kaiming |", "| adapted modules | 4 (query, value) |",
                 "| modules_to_save | classifier |", f"| trainable parameters | {values:,} (the values in "
                 "adapter_model.safetensors) |", f"model = loralab.from_pretrained({str(folder)!r})",
                 "from peft import AutoPeftModelForSequenceClassification",
                 f"model = AutoPeftModelForSequenceClassification.from_pretrained({str(folder)!r}, num_labels=3)"]:
        assert line in card.splitlines(), line
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]          # the SEQ_CLS head, as PEFT saves it


def test_a_readme_loralab_did_not_write_is_kept_and_its_own_is_rewritten(tmp_path):
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2))
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    loralab.save_adapter(model, folder)
    assert (folder / "README.md").read_text() == "# my notes\n"
    (folder / "README.md").unlink()
    loralab.save_adapter(model, folder)
    first = (folder / "README.md").read_text()
    assert "AutoPeftModelForCausalLM" in first and "base model | not recorded" in first
    loralab.inject(model, LoraConfig(r=4, targets=["q_proj"]), adapter="wider")
    loralab.save_adapter(model, folder, adapter="wider")
    assert "| rank r / lora_alpha | 4 / 16 |" in (folder / "README.md").read_text()
