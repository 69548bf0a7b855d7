"""Using trained adapters: loading a base model with one or several adapters (load.py), and `loralab serve`:
one base model, many adapters, OpenAI-compatible HTTP with mixed-adapter batches (settings, api, service,
engine, app, server, metrics; the playground page in static/). Generation itself: loralab.generation."""
