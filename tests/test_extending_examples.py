"""The extension recipes of examples/extending/ run, leave loralab's registries as they found them, and are
linked from DEVELOPERS.md."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "extending"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_forward_equals_its_merge():
    from loralab.core.variants import VARIANTS
    assert load("variant").demo() < 1e-5
    assert "negated" not in VARIANTS


def test_architecture_gives_its_default_targets():
    from loralab.models.architectures import ARCHITECTURES
    assert load("architecture").demo() == ("wq", "wv")
    assert "my-model" not in ARCHITECTURES


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_recipe_is_linked_from_developers_md(path):
    assert f"(examples/extending/{path.name})" in (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
