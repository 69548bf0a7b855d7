"""Tiny random-init transformers models for tests and examples (no download, built from configs).

    model = tiny_model("llama")            # a 2-layer LLaMA with hidden size 32
    ids = tiny_inputs(model)                # a (2, 7) batch of token ids for it
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from loralab.adapters.state import lora_layers, trainable_copies

# family -> (config class name, model class name, config kwargs)
_TINY = {
    "bert": ("BertConfig", "BertForSequenceClassification",
             dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=3)),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification",
                dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=2,
                     pad_token_id=1, max_position_embeddings=40)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=48, max_position_embeddings=64)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=48, max_position_embeddings=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=48, max_position_embeddings=64)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48, word_embed_proj_dim=32,
                 max_position_embeddings=64)),
    "t5": ("T5Config", "T5ForConditionalGeneration",
           dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4)),
    "vit": ("ViTConfig", "ViTForImageClassification",
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
                 patch_size=4, num_labels=3)),
}
FAMILIES = tuple(_TINY)
VOCAB = 100


def tiny_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A random-init model of the family in eval mode (dropout off), deterministic for a seed."""
    import transformers

    config_cls, model_cls, kwargs = _TINY[family]
    kwargs = {**kwargs, **overrides}
    if family != "vit":
        kwargs.setdefault("vocab_size", VOCAB)
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).eval()


def tiny_inputs(model: nn.Module, batch: int = 2, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Keyword inputs matching a tiny model: token ids (plus decoder ids for T5) or pixels for ViT."""
    g = torch.Generator().manual_seed(seed)
    model_type = model.config.model_type
    if model_type == "vit":
        size = model.config.image_size
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    if model_type == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids}


def model_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's main output tensor (logits) for comparisons."""
    with torch.no_grad():
        return model(**inputs).logits


def randomize_trainable(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Add N(0, scale²) noise to every parameter that requires grad (fresh LoRA factors start with B = 0, a
    no-op; this makes them do something), deterministic for a seed. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def fill_adapter(model: nn.Module, adapter: str, seed: int, std: float = 0.3) -> None:
    """Give an adapter random non-zero values, as training would: every factor tensor (A, B and a
    variant's extras) drawn from N(0, std²), and its modules_to_save copies shifted by N(0, std²) noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = [p for _, layer in lora_layers(model) if adapter in layer.lora_adapters
                   for p in layer.lora_adapters[adapter].parameters()]
        for p in tensors:
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for _, wrapper in trainable_copies(model):
            if adapter in wrapper.trainable_copies:
                for p in wrapper.trainable_copies[adapter].parameters():
                    p.add_(torch.randn(p.shape, generator=g) * std)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block. Tiny models gain nothing from more, and on a busy shared
    machine OpenMP threads spin-waiting for descheduled peers make tiny ops 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
