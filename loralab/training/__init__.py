"""Training and evaluation: the run config, the loop, checkpoints, data parallelism, metrics and plots
(data reading, tokenizing and batching live in loralab.data)."""
