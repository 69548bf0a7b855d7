"""Using trained adapters: loading a base model with one or several adapters (generation: loralab.generation)."""
