"""One way to name a model everywhere in loralab: a builtin name, a model folder, a GGUF file, or a
Hugging Face hub id already in the local hub cache.

    folder = resolve_model_spec("smollm2-135m-instruct")     # de-quantized once, cached, then reused
    source = resolve_model_source("bert-base-uncased")       # ModelSource(kind="hub", folder=<snapshot>, ...)
    model = load_model("all-minilm-l6-v2", task="sequence-classification", num_labels=3)
    tokenizer = load_tokenizer("path/to/model.Q4_K_M.gguf")

Everything loads from local files only, in fp32 unless `load_model(..., dtype="bf16")` asks otherwise: nothing
is downloaded (hub ids resolve from the cache huggingface_hub keeps, as with HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from loralab.errors import LoraLabError, choose
from loralab.models.builtin import BUILTIN_MODELS, builtin_model, builtin_model_dir
from loralab.models.gguf import cached_folder_with_fingerprint, ensure_plain_model, gguf_cache_dir, source_record
from loralab.precision import dtype_of
from loralab.quantization.saved import check_loadable, from_bitsandbytes, saved_quantization

# The heads a model loads with, and transformers' Auto class for each: "base" (none) and the heads tasks ask for
# (loralab.data.tasks: each TaskKind.model_task is one of these; the task list sits above models and reads them).
_AUTO_CLASSES = {"base": "AutoModel", "sequence-classification": "AutoModelForSequenceClassification",
                 "causal-lm": "AutoModelForCausalLM"}
MODEL_TASKS = tuple(_AUTO_CLASSES)
SOURCE_KINDS = ("builtin", "folder", "gguf", "hub")


@dataclass(frozen=True)
class ModelSource:
    """What a model spec resolved to.

    spec: the string as given. kind: "builtin" (a packaged model, loralab.models.BUILTIN_MODELS), "folder"
    (a transformers folder), "gguf" (a .gguf file, or a folder holding one) or "hub" (a hub id found in
    the local Hugging Face cache).
    folder: the plain transformers folder that is loaded (for GGUF sources the de-quantized cache folder,
    for hub ids the cached snapshot).
    name: loralab's portable name for the weights: the builtin name, the hub id, or the absolute path of
    the folder or GGUF file given.
    gguf_fingerprint: the GGUF file's content fingerprint (loralab.models.gguf_fingerprint) when the weights
    came from a GGUF file, else None. revision: the hub commit (the snapshot's name) for hub ids, else None.
    """

    spec: str
    kind: str
    folder: Path
    name: str
    gguf_fingerprint: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"model source kind must be one of {SOURCE_KINDS}, not {self.kind!r}")

    def record(self) -> dict:
        """loralab's portable description of these weights, kept in an adapter's metadata: kind, name,
        gguf_fingerprint, revision (no machine-specific folder). `source_from_record` finds them again."""
        return {"kind": self.kind, "name": self.name, "gguf_fingerprint": self.gguf_fingerprint,
                "revision": self.revision}

    @property
    def base_model_name_or_path(self) -> str:
        """What transformers and PEFT can load this model from (PEFT's `base_model_name_or_path`): the hub
        id for a hub model in transformers layout, else the absolute path of the loaded folder."""
        if self.kind == "hub" and self.gguf_fingerprint is None:
            return self.name
        return os.path.abspath(self.folder)


def hf_hub_cache() -> Path:
    """The folder huggingface_hub downloads repositories into, read from the environment at call time:
    $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
    else ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def is_hub_id(text: str) -> bool:
    """True when `text` is spelled like a hub repository id ("name" or "namespace/name")."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except ValueError:  # huggingface_hub's HFValidationError
        return False
    return True


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` in the local hub cache (refs/main -> snapshots/<commit>), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(hf_hub_cache()), local_files_only=True))
    except (FileNotFoundError, ValueError):  # LocalEntryNotFoundError, IncompleteSnapshotError, validation
        return None


def _fingerprint_of(converted: Path) -> str | None:
    return source_record(converted).get("fingerprint")


def _from_folder(spec: str, kind: str, name: str, path: Path, cache_dir: str | os.PathLike | None,
                 revision: str | None = None) -> ModelSource:
    """A folder holding config.json as it is, or the one .gguf file inside it de-quantized."""
    if (path / "config.json").is_file():
        return ModelSource(spec, kind, path, name, revision=revision)
    gguf_files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if not gguf_files:
        raise LoraLabError(f"model folder {path} holds neither config.json nor a .gguf file; give a transformers "
                           "model folder or a .gguf file")
    if len(gguf_files) > 1:
        names = ", ".join(p.name for p in gguf_files)
        raise LoraLabError(f"model folder {path} holds {len(gguf_files)} .gguf files ({names}); "
                           f"pass one of them, e.g. {gguf_files[0]}")
    converted = ensure_plain_model(gguf_files[0], cache_dir)
    if kind == "folder":
        kind, name = "gguf", os.path.abspath(gguf_files[0])
    return ModelSource(spec, kind, converted, name, _fingerprint_of(converted), revision)


def _not_found(text: str) -> LoraLabError:
    builtins = ", ".join(BUILTIN_MODELS)
    if not is_hub_id(text):
        return LoraLabError(f"model {text!r} not found: no such file or folder, and not a builtin model ({builtins}); "
                            "give a model folder, a .gguf file or a builtin name")
    return LoraLabError(
        f"model {text!r} not found: not a builtin model ({builtins}), no such file or folder, and not in the "
        f"Hugging Face cache {hf_hub_cache()}; download it on a connected machine (`hf download {text}`) into "
        "that cache (HF_HOME / HF_HUB_CACHE), or give a model folder or a .gguf file")


def resolve_model_source(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ModelSource:
    """Where the model `spec` names comes from, and the plain transformers folder to load it from.

    spec, tried in this order: a builtin name (loralab.models.BUILTIN_MODELS); an existing path: a model
    folder holding config.json, a folder holding exactly one .gguf file, or a .gguf file; a hub id
    ("bert-base-uncased", "HuggingFaceTB/SmolLM2-135M") whose snapshot is in the local Hugging Face cache
    (hf_hub_cache(); never downloaded). GGUF weights are de-quantized to fp32 once and cached (see
    loralab.models.gguf; cache_dir overrides loralab's cache root). A folder with config.json is used as
    it is, even if it also holds GGUF files; so is a cached hub snapshot.
    """
    text = os.fspath(spec)
    if text in BUILTIN_MODELS:
        location = builtin_model_dir(text)
        if builtin_model(text).kind != "gguf":
            return ModelSource(text, "builtin", location, text)
        converted = ensure_plain_model(location, cache_dir)
        return ModelSource(text, "builtin", converted, text, _fingerprint_of(converted))

    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoraLabError(f"model file {path} is not a .gguf file; give a .gguf file or the model folder "
                               "holding config.json")
        converted = ensure_plain_model(path, cache_dir)
        return ModelSource(text, "gguf", converted, os.path.abspath(path), _fingerprint_of(converted))
    if path.is_dir():
        return _from_folder(text, "folder", os.path.abspath(path), path, cache_dir)
    snapshot = _cached_snapshot(text) if is_hub_id(text) else None
    if snapshot is None:
        raise _not_found(text)
    return _from_folder(text, "hub", text, snapshot, cache_dir, revision=snapshot.name)


def source_of_loaded(name_or_path: str | os.PathLike | None,
                     cache_dir: str | os.PathLike | None = None) -> ModelSource | None:
    """How the weights of a model loaded from `name_or_path` (transformers' `model.name_or_path`) were found,
    as resolve_model_source would have said: a de-quantized GGUF folder names its GGUF file (a builtin one by
    the builtin name), a hub cache snapshot its repository and commit, a builtin folder its name. None when it
    cannot be told (a model built in memory, a folder that no longer exists)."""
    text = os.fspath(name_or_path or "")
    path = Path(text).expanduser()
    if not text:
        return None
    if not path.is_dir():
        try:
            return resolve_model_source(text, cache_dir)     # a builtin name or a cached hub id
        except LoraLabError:
            return None
    record = source_record(path)
    if record.get("fingerprint") and record.get("source"):
        gguf = Path(record["source"])
        kind, name, revision = _origin_of(gguf.parent, gguf)
        return ModelSource(text, kind, path, name, record["fingerprint"], revision)
    kind, name, revision = _origin_of(path, path)
    return ModelSource(text, kind, path, name, revision=revision)


def _origin_of(folder: Path, weights: Path) -> tuple[str, str, str | None]:
    """(kind, name, revision) of weights at `weights` inside `folder`: a hub cache snapshot
    (models--ORG--NAME/snapshots/COMMIT), a builtin model's file or folder, else the plain path."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return "hub", folder.parent.parent.name[len("models--"):].replace("--", "/"), folder.name
    for name in BUILTIN_MODELS:
        try:
            if os.path.samefile(builtin_model_dir(name), weights):
                return "builtin", name, None
        except (LoraLabError, OSError):
            continue
    kind = "gguf" if weights.is_file() or weights.suffix.lower() == ".gguf" else "folder"
    return kind, os.path.abspath(weights), None


def source_from_record(record: dict, cache_dir: str | os.PathLike | None = None) -> ModelSource:
    """The weights a `ModelSource.record()` describes, found on this machine: the builtin model (its GGUF
    fingerprint checked), the GGUF file (or, where the file is gone, the cached folder converted from a file
    with the same fingerprint), the hub snapshot of the recorded commit (else the cached one, with a warning),
    or the folder. LoraLabError (one line) saying why they cannot be found."""
    kind, name = record.get("kind"), record.get("name")
    fingerprint, revision = record.get("gguf_fingerprint"), record.get("revision")
    if kind not in SOURCE_KINDS or not isinstance(name, str) or not name:
        raise LoraLabError(f"model record {record!r} is not a loralab model description")
    if kind == "gguf" and not Path(name).is_file() and fingerprint:
        folder = cached_folder_with_fingerprint(fingerprint, cache_dir)
        if folder is None:
            raise LoraLabError(f"GGUF file {name} is not here, and no folder converted from it (fingerprint "
                               f"{fingerprint[:16]}) is in the cache {gguf_cache_dir(cache_dir)}")
        return ModelSource(name, "gguf", folder, name, fingerprint)
    if kind == "hub" and revision:
        snapshot = hf_hub_cache() / ("models--" + name.replace("/", "--")) / "snapshots" / revision
        if snapshot.is_dir():
            return _checked(_from_folder(name, "hub", name, snapshot, cache_dir, revision=revision), fingerprint)
    if kind == "folder" and not Path(name).is_dir():
        raise LoraLabError(f"model folder {name} does not exist")
    source = _checked(resolve_model_source(name, cache_dir), fingerprint)
    if kind == "hub" and revision and source.revision != revision:
        warnings.warn(f"hub model {name}: commit {revision} is not in the cache; using the cached commit "
                      f"{source.revision}", stacklevel=2)
    return source


def _checked(source: ModelSource, fingerprint: str | None) -> ModelSource:
    if fingerprint and source.gguf_fingerprint != fingerprint:
        found = (source.gguf_fingerprint or "not a GGUF file")[:16]
        raise LoraLabError(f"{source.kind} model {source.name!r} here is not the GGUF file the adapter was made "
                           f"for (fingerprint {found} here, {fingerprint[:16]} recorded)")
    return source


def gguf_file_of(spec: str | os.PathLike) -> Path | None:
    """The GGUF file `spec` names, read as resolve_model_source reads it (a builtin GGUF model, a .gguf file,
    a folder or cached hub snapshot holding exactly one .gguf file and no config.json), without de-quantizing
    anything; None when `spec` names a transformers folder (errors as resolve_model_source's)."""
    text = os.fspath(spec)
    if text in BUILTIN_MODELS:
        return builtin_model_dir(text) if builtin_model(text).kind == "gguf" else None
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoraLabError(f"model file {path} is not a .gguf file; give a .gguf file or the model folder "
                               "holding config.json")
        return path
    folder = path if path.is_dir() else (_cached_snapshot(text) if is_hub_id(text) else None)
    if folder is None:
        raise _not_found(text)
    if (folder / "config.json").is_file():
        return None
    gguf_files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if len(gguf_files) != 1:
        _from_folder(text, "folder", text, folder, None)     # its one line for no or several .gguf files
    return gguf_files[0]


def resolve_model_spec(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain transformers folder (config.json + weights + tokenizer) for `spec`: resolve_model_source's
    `folder` (a builtin name, a model folder, a .gguf file or a folder holding one, or a cached hub id)."""
    return resolve_model_source(spec, cache_dir).folder


def load_model(spec: str | os.PathLike, task: str = "causal-lm", num_labels: int | None = None,
               cache_dir: str | os.PathLike | None = None, dtype: str = "fp32", **kwargs):
    """The model `spec` names (see resolve_model_spec) with the head `task` asks for, from local files, its
    weights in `dtype` ("fp32", "bf16" or "fp16"; loralab.precision: the frozen base's precision).

    task: "causal-lm" (AutoModelForCausalLM), "sequence-classification" (AutoModelForSequenceClassification,
    a freshly initialised head with `num_labels` outputs unless the folder already has one) or "base"
    (AutoModel, no head). kwargs go to `from_pretrained` (e.g. attn_implementation="eager").
    A folder saved quantized by bitsandbytes (nf4 or int8; a quantization_config in config.json) loads with
    loralab's own quantized layers holding the same codes; other saved quantizations are a one-line error.
    """
    import transformers

    choose(task, MODEL_TASKS, "model task")
    if num_labels is not None:
        if task != "sequence-classification":
            raise LoraLabError(f"num_labels={num_labels} only applies to task 'sequence-classification', "
                               f"not {task!r}; drop it or change the task")
        if num_labels < 1:
            raise LoraLabError(f"num_labels must be at least 1, got {num_labels}")
        kwargs["num_labels"] = num_labels
    folder = resolve_model_spec(spec, cache_dir)
    model_class = auto_model_class(task)
    kwargs.setdefault("dtype", dtype_of(dtype))
    kwargs["local_files_only"] = True
    saved = _saved_quantization(folder)      # a checkpoint saved quantized: checked before anything loads
    try:
        model = model_class.from_pretrained(str(folder), **kwargs)
    except ValueError as exc:
        # e.g. a BERT folder asked for task causal-lm: transformers lists the classes it knows.
        first_line = (str(exc).strip().splitlines() or ["ValueError"])[0]
        raise LoraLabError(f"cannot load {folder} for task {task!r}: {first_line}") from exc
    if saved:
        from_bitsandbytes(model)
    return model


def _saved_quantization(folder: Path) -> dict | None:
    """The folder's quantization_config when loralab can load it (else a one-line LoraLabError); None for
    a full-precision checkpoint (loralab.quantization.saved)."""
    config = saved_quantization(folder)
    if config is not None:
        check_loadable(folder, config)
    return config


def auto_model_class(task: str) -> type:
    """transformers' Auto class that builds a model with the head `task` (a MODEL_TASKS value)."""
    import transformers

    choose(task, MODEL_TASKS, "model task")
    return getattr(transformers, _AUTO_CLASSES[task])


def load_tokenizer(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None, **kwargs):
    """The tokenizer saved with the model `spec` names (see resolve_model_spec), from local files only."""
    import transformers

    folder = resolve_model_spec(spec, cache_dir)
    kwargs["local_files_only"] = True
    return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
