"""Training, evaluation and prediction: data reading, batching, and the loops built on them."""
