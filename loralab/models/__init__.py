"""Loading models: builtin packaged models, GGUF files de-quantized once into a cached fp32 folder, hub ids
from the local Hugging Face cache, and thin fp32/offline wrappers around transformers' from_pretrained.

    from loralab.models import load_model, load_tokenizer, resolve_model_spec
    model = load_model("smollm2-135m-instruct")                 # builtin GGUF -> cached plain folder
    model = load_model("all-minilm-l6-v2", task="sequence-classification", num_labels=2)
    folder = resolve_model_spec("~/models/qwen2.5-0.5b.Q8_0.gguf")   # any GGUF causal LM transformers reads
    source = resolve_model_source("bert-base-uncased")         # a hub id in the local cache: kind "hub"
    source_from_record(source.record())                         # the same weights found again (adapters keep records)
"""
from loralab.models.builtin import (BUILTIN_MODELS, DEFAULT_MODEL_FOR_TASK, BuiltinModel, builtin_model,
                                    builtin_model_dir, builtin_model_path, default_model_for_task)
from loralab.models.gguf import (CACHE_ENV, cache_root, cached_folder_for, cached_folder_with_fingerprint,
                                 clear_gguf_cache, ensure_plain_model, gguf_cache_dir, gguf_fingerprint, is_gguf_file,
                                 list_cached_models)
from loralab.models.loading import (MODEL_TASKS, SOURCE_KINDS, ModelSource, auto_model_class, gguf_file_of,
                                    hf_hub_cache, is_hub_id, load_model, load_tokenizer, resolve_model_source,
                                    resolve_model_spec, source_from_record, source_of_loaded)

__all__ = [
    "BUILTIN_MODELS", "BuiltinModel", "CACHE_ENV", "DEFAULT_MODEL_FOR_TASK", "MODEL_TASKS", "ModelSource",
    "SOURCE_KINDS", "auto_model_class", "builtin_model", "builtin_model_dir", "builtin_model_path", "cache_root",
    "cached_folder_for", "cached_folder_with_fingerprint", "clear_gguf_cache", "default_model_for_task",
    "ensure_plain_model", "gguf_cache_dir", "gguf_file_of", "gguf_fingerprint", "hf_hub_cache", "is_gguf_file",
    "is_hub_id", "list_cached_models", "load_model", "load_tokenizer", "resolve_model_source", "resolve_model_spec",
    "source_from_record", "source_of_loaded",
]
