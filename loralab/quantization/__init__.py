"""Quantized frozen bases for LoRA (QLoRA-style): the base model's Linear weights stored in int8, NF4 or
bf16, LoRA trained on top in full precision, gradients flowing through the quantized layers.

    import loralab
    from loralab.quantization import quantize, merge_into_quantized
    quantize(model, "nf4")                          # before or after loralab.inject
    loralab.inject(model, loralab.LoraConfig(r=8))
    ...train; loralab.save_adapter(...) writes plain LoRA factors, loadable on the fp32 base...
    report = merge_into_quantized(model, mode="requantize")     # or "dequantize"

Schemes register by name (`@register_scheme`, in SCHEMES; the offered ones are QUANTIZE_CHOICES, what
`--quantize` takes); see docs/precision.md for errors, memory and speed.
"""
from loralab.quantization import bf16, int8, kind, nf4  # noqa: F401  (registers the schemes and the layer kind)
from loralab.quantization.base import (QUANTIZE_CHOICES, SCHEMES, QuantizedLinear, QuantScheme, get_scheme,
                                       register_scheme)
from loralab.quantization.bf16 import BF16Linear, BF16Scheme
from loralab.quantization.int8 import FbgemmInt8Linear, Int8Linear, Int8Scheme
from loralab.quantization.merge import MergeReport, merge_into_quantized
from loralab.quantization.model import (QuantizedMemory, dequantize_model, quantize, quantized_memory,
                                        register_quantizable)
from loralab.quantization.nf4 import NF4Linear, NF4Scheme

__all__ = ["QUANTIZE_CHOICES", "SCHEMES", "BF16Linear", "BF16Scheme", "FbgemmInt8Linear", "Int8Linear", "Int8Scheme", "MergeReport",
           "NF4Linear", "NF4Scheme", "QuantScheme", "QuantizedLinear", "QuantizedMemory", "dequantize_model",
           "get_scheme", "merge_into_quantized", "quantize", "quantized_memory", "register_quantizable",
           "register_scheme"]
