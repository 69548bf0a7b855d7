"""Benchmarks of loralab against PEFT (see README.md); `python benchmarks/run.py`."""
