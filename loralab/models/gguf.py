"""GGUF files as plain fp32 transformers folders, de-quantized once and cached.

transformers can read a GGUF causal LM (`from_pretrained(folder, gguf_file=NAME)`), but it de-quantizes
every tensor on every load (about 20 s for the 135M-parameter SmolLM2 on two CPU cores) and marks the
result as quantized, which blocks `save_pretrained`, `.float()` and friends. `ensure_plain_model` does
the conversion once, clears those flags, and saves model (safetensors, fp32) and tokenizer (with its chat
template) as an ordinary folder; later calls return that folder, which loads in about a second.

Cache layout: `<cache root>/gguf/<file stem>-<16 hex digits>/`, where the cache root is the `cache_dir`
argument, else $LORALAB_CACHE, else ~/.cache/loralab. The hex digits are a content fingerprint of the
file (see `gguf_fingerprint`), not its mtime or location: moving, copying or touching the file reuses the
folder, while a changed file (or a renamed one, the stem being part of the name) is converted again. A folder appears only complete: it is built under a `.tmp-*` name in the same
parent and renamed into place. Remove the `gguf/` folder (or call `clear_gguf_cache`) to free the space.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from loralab.errors import LoraLabError

CACHE_ENV = "LORALAB_CACHE"
# Bump when the folder written by `_convert_gguf` changes in a way old folders should not be reused.
CACHE_FORMAT = 1
SOURCE_RECORD = "loralab-gguf-source.json"  # written last inside the folder: provenance + completeness marker
GGUF_MAGIC = b"GGUF"

# Fingerprint sampling: the head holds the metadata (architecture, shapes, vocabulary), the tail and the
# evenly spaced samples hold tensor data, so two files differing in weights or metadata differ here.
_HEAD_TAIL_BYTES = 1 << 20
_SAMPLE_COUNT = 16
_SAMPLE_BYTES = 64 << 10
_WHOLE_FILE_BELOW = 4 << 20

logger = logging.getLogger(__name__)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The loralab cache folder: `cache_dir`, else $LORALAB_CACHE, else ~/.cache/loralab (not created here)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "loralab"


def gguf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted GGUF models live: `<cache root>/gguf`."""
    return cache_root(cache_dir) / "gguf"


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when `path` is a file starting with the GGUF magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def gguf_fingerprint(path: str | os.PathLike) -> str:
    """A hex SHA-256 over the file's size and sampled content: the cache key.

    Files up to 4 MiB are hashed whole. Larger ones contribute their first and last MiB plus 16 evenly
    spaced 64 KiB samples (about 3 MiB read whatever the file size), so keying a multi-GB file costs
    milliseconds. Two files with equal size and equal samples but different bytes elsewhere would share
    a key; for real GGUF files (header with names and shapes, dense tensor data) that does not happen.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"loralab-gguf-cache-v{CACHE_FORMAT}:{size}:".encode())
    with open(path, "rb") as handle:
        if size <= _WHOLE_FILE_BELOW:
            digest.update(handle.read())
        else:
            spans = [(0, _HEAD_TAIL_BYTES), (size - _HEAD_TAIL_BYTES, _HEAD_TAIL_BYTES)]
            spans += [(size * k // (_SAMPLE_COUNT + 1), _SAMPLE_BYTES) for k in range(1, _SAMPLE_COUNT + 1)]
            for offset, length in spans:
                handle.seek(offset)
                digest.update(handle.read(length))
    return digest.hexdigest()


def cached_folder_for(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder `ensure_plain_model` uses for this file (it may not exist yet)."""
    path = Path(gguf_path).expanduser()
    return _folder_for(path, gguf_fingerprint(path), cache_dir)


def _folder_for(path: Path, fingerprint: str, cache_dir: str | os.PathLike | None) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "model"
    return gguf_cache_dir(cache_dir) / f"{stem}-{fingerprint[:16]}"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / SOURCE_RECORD).is_file()


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise LoraLabError("reading GGUF files needs the gguf package: pip install gguf")


def _drop_quantization_flags(model) -> None:
    """Make a GGUF-loaded model an ordinary fp32 model in transformers' eyes.

    The weights are already de-quantized fp32 tensors in plain nn.Linear layers; only the bookkeeping
    still says "gguf", and with it save_pretrained refuses to write and .float()/.half() raise.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize `gguf_path` with transformers and save model + tokenizer into the existing `out_dir`."""
    import torch
    import transformers

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    except (ValueError, KeyError, NotImplementedError) as exc:
        # transformers says ValueError for an architecture or tokenizer it cannot map from GGUF.
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraLabError(f"transformers {transformers.__version__} cannot load {gguf_path} as a causal LM "
                           f"({first_line}); use a GGUF of a supported architecture or a transformers "
                           "model folder") from exc
    _drop_quantization_flags(model)
    # A GGUF has no tokenizer length limit, so transformers sets a huge sentinel; the model's context is the limit.
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > 10 * context:
        tokenizer.model_max_length = context
    tokenizer.init_kwargs.pop("local_files_only", None)  # a load option, not a property of the tokenizer
    model.save_pretrained(out_dir)  # safetensors; tied weights (lm_head = embed_tokens) are stored once
    tokenizer.save_pretrained(out_dir)  # tokenizer.json + config, including the chat template


def ensure_plain_model(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain fp32 transformers folder for a GGUF causal LM, converted on the first call and reused after.

    gguf_path: any GGUF file transformers' GGUF loader can read (LLaMA, Mistral, Qwen2, ... causal LMs).
    cache_dir: the cache root (default $LORALAB_CACHE, else ~/.cache/loralab); the folder goes under `gguf/`.
    Returns the folder, loadable with `from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`.
    Concurrent first calls each convert; the first rename wins and the others discard their copy.
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise LoraLabError(f"GGUF file {path} does not exist; give the path to a .gguf file")
    if not is_gguf_file(path):
        raise LoraLabError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                           "give a .gguf model file or a transformers model folder")
    fingerprint = gguf_fingerprint(path)
    target = _folder_for(path, fingerprint, cache_dir)
    if _is_complete(target):
        return target

    _require_gguf_package()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("de-quantizing %s into %s (once; later loads reuse the folder)", path, target)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        _convert_gguf(path, scratch)
        _write_source_record(scratch, path, fingerprint, time.perf_counter() - started)
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # a folder someone emptied by hand; the atomic rename never leaves one
        try:
            os.replace(scratch, target)
        except OSError:
            if not _is_complete(target):  # a concurrent conversion winning the rename is fine, anything else not
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _write_source_record(folder: Path, gguf_path: Path, fingerprint: str, seconds: float) -> None:
    import transformers

    stat = gguf_path.stat()
    record = {
        "source": str(gguf_path.resolve()), "size_bytes": stat.st_size, "mtime": stat.st_mtime,
        "fingerprint": fingerprint, "cache_format": CACHE_FORMAT, "transformers_version": transformers.__version__,
        "conversion_seconds": round(seconds, 3), "dtype": "float32",
    }
    text = json.dumps(record, indent=2) + "\n"
    # The folder itself is still a scratch folder, so a plain write is already all-or-nothing for readers.
    (folder / SOURCE_RECORD).write_text(text, encoding="utf-8")


def cached_folder_with_fingerprint(fingerprint: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The complete converted folder in the cache made from a GGUF file with this content fingerprint (wherever
    that file was), or None: the exact same weights, even where the file itself is not."""
    for folder in gguf_cache_dir(cache_dir).glob(f"*-{fingerprint[:16]}"):
        record = source_record(folder)
        if _is_complete(folder) and record.get("fingerprint") == fingerprint:
            return folder
    return None


def source_record(folder: str | os.PathLike) -> dict:
    """The provenance a converted folder keeps (source GGUF path, fingerprint, ...); {} for any other folder."""
    path = Path(folder) / SOURCE_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def list_cached_models(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The converted folders in the cache, sorted by name (unfinished `.tmp-*` folders are not listed)."""
    root = gguf_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_complete(p))


def clear_gguf_cache(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Delete every converted GGUF folder (and leftovers of interrupted conversions); returns what was removed.

    The next `ensure_plain_model` call for a file converts it again.
    """
    root = gguf_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and (entry.name.startswith(".tmp-") or (entry / SOURCE_RECORD).is_file()
                               or (entry / "config.json").is_file()):
            shutil.rmtree(entry)
            removed.append(entry)
    return removed
