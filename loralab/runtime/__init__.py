"""A model ready to run, below training, serving, eval, predict and the CLI: where it runs (`Runtime`: device,
dtype, quantization, resolved once from the registries), what an adapter folder says (`AdapterFolder` and the
readers of loralab.runtime.folder: task info, base model, task, labels) and loading (`load_base`,
`load_with_adapters`, `from_pretrained`).

    runtime = Runtime.resolve("auto", "bf16", "nf4")
    model, tokenizer = load_base("smollm2-135m", "causal-lm", runtime)
    loaded = load_with_adapters({"default": Path("runs/e2e/adapter")}, runtime=runtime)
"""
from loralab.runtime.device import Runtime, check_quantize
from loralab.runtime.folder import (TASK_FILENAME, AdapterFolder, adapter_task_and_labels, check_adapter_folder,
                                    read_task_info, resolve_base)
from loralab.runtime.load import (Loaded, from_pretrained, load_base, load_model_for, load_with_adapters,
                                  parse_adapter_specs, quantize_base)

__all__ = ["TASK_FILENAME", "AdapterFolder", "Loaded", "Runtime", "adapter_task_and_labels", "check_adapter_folder",
           "check_quantize", "from_pretrained", "load_base", "load_model_for", "load_with_adapters",
           "parse_adapter_specs", "quantize_base", "read_task_info", "resolve_base"]
