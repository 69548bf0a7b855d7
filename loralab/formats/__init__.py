"""Adapter files. Importing any of formats' modules registers the inject hooks that give an adapted model PEFT's
`save_pretrained` (formats/peft.py) and transformers' adapter methods (formats/transformers_methods.py)."""
from loralab.formats import transformers_methods  # noqa: F401  (registers its inject hook)
