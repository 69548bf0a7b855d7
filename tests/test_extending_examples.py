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


def test_layer_kind_forward_equals_its_merge():
    from loralab.core.kinds import KINDS
    before = dict(KINDS)
    assert load("layer_kind").demo() < 1e-5
    assert dict(KINDS) == before


def test_init_gives_orthonormal_a_and_starts_at_the_base():
    from loralab.core.inits import INITS
    orthogonality, at_start = load("init").demo()
    assert orthogonality < 1e-5 and at_start == 0.0
    assert "orthogonal-a" not in INITS


def test_quantization_scheme_only_rounds_w0():
    from loralab.quantization import QUANTIZE_CHOICES, SCHEMES
    difference = load("quantization_scheme").demo()
    assert 0 < difference < 1e-2                    # fp16 rounding of W0, nothing else
    assert "half" not in SCHEMES and "half" not in QUANTIZE_CHOICES


def test_row_strategy_equals_each_row_alone():
    from loralab.core.rows import ROW_STRATEGIES
    assert load("row_strategy").demo() < 1e-5
    assert "row-by-row" not in ROW_STRATEGIES


def test_tracker_writes_what_was_logged():
    from loralab.training.tracking import REPORTERS
    assert load("tracker").demo() == [["1", "train/loss", "0.7", "0.0"], ["2", "train/loss", "0.5", "1.0"],
                                      ["2", "eval/accuracy", "0.8", "1.0"]]
    assert "csv" not in REPORTERS


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_recipe_is_linked_from_developers_md(path):
    assert f"(examples/extending/{path.name})" in (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
