"""Measurements of speed: forward latency of the base model, adapter layers and LoRA (paper Table 1)."""
