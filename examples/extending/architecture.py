"""Recipe: a model family. Copy this file, set your model_type and module names.

One `register_architecture(Architecture(...))` and the paper's default targets (Wq, Wv), budget roles and task
heads of every model whose `config.model_type` is listed follow from the table.
Run: python examples/extending/architecture.py
"""
import torch
import transformers

from loralab.models.architectures import ARCHITECTURES, Architecture, register_architecture
from loralab.surgery.presets import preset_for


def demo() -> tuple[str, ...]:
    """Registers the family for the demo only; returns the default targets it gives a model of its type."""
    with ARCHITECTURES.scoped():
        register_architecture(Architecture(model_types=("my-model",), q="wq", k="wk", v="wv", o="wo",
                                           head=("head",)))
        model = torch.nn.Module()
        model.config = transformers.PretrainedConfig()
        model.config.model_type = "my-model"
        return tuple(preset_for(model).targets)


if __name__ == "__main__":
    print(demo())
