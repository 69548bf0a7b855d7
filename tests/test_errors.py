"""loralab.errors: `choose` / `unknown`, the one message for a value outside a fixed set of choices."""
from __future__ import annotations

import pytest

from loralab.errors import LoraLabError, choose, unknown


def test_choose_returns_a_known_value_unchanged():
    assert choose("bf16", {"fp32": 4, "bf16": 2}, "dtype") == "bf16"
    assert choose(3, range(1, 6), "lesson") == 3


def test_choose_names_the_value_and_lists_the_choices_in_their_order():
    with pytest.raises(LoraLabError) as raised:
        choose("fp8", ("fp32", "bf16", "fp16"), "dtype")
    assert str(raised.value) == "unknown dtype 'fp8'; choose one of fp32, bf16, fp16"


def test_the_tail_is_appended_as_is_and_classes_are_named():
    message = str(unknown(int, [float, complex], "layer kind", " (or register one)"))
    assert message == "unknown layer kind int; choose one of float, complex (or register one)"


def test_an_unhashable_value_is_an_unknown_choice_not_a_type_error():
    with pytest.raises(LoraLabError, match=r"^unknown bias mode \['all'\]; choose one of none, all, lora_only$"):
        choose(["all"], {"none": 0, "all": 1, "lora_only": 2}, "bias mode")


def test_every_unknown_choice_message_in_the_package_comes_from_choose():
    """No module hand-writes the message again (grep for it): the text lives in loralab/errors.py only."""
    from pathlib import Path

    import loralab

    root = Path(loralab.__file__).parent
    writers = sorted(str(path.relative_to(root)) for path in root.rglob("*.py")
                     if "choose one of" in path.read_text(encoding="utf-8"))
    assert writers == ["errors.py"]
