"""The model card (`README.md`) written into each adapter folder, like the one PEFT writes: the base model,
the task, the LoRA settings, the trainable parameters, and how to load it with loralab and with PEFT.

A README.md that loralab did not write (no CARD_MARKER line) is left as it is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loralab.files import write_text

CARD_NAME = "README.md"
CARD_MARKER = "<!-- written by loralab: rewritten at each save; delete this line to keep your own edits -->"
# PEFT's AutoPeftModel class for each task_type (peft.auto), for the "load it with PEFT" snippet.
AUTO_PEFT_CLASSES = {"SEQ_CLS": "AutoPeftModelForSequenceClassification", "CAUSAL_LM": "AutoPeftModelForCausalLM",
                     "TOKEN_CLS": "AutoPeftModelForTokenClassification", "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
                     "QUESTION_ANS": "AutoPeftModelForQuestionAnswering",
                     "FEATURE_EXTRACTION": "AutoPeftModelForFeatureExtraction"}


@dataclass(frozen=True)
class CardFacts:
    """What the card says. base: base_model_name_or_path (None if unknown); base_record: loralab's portable
    description of the base (ModelSource.record()) or None; config: the PEFT adapter_config.json dict;
    variant, init: loralab's names; modules: adapted module names; parameters: values stored in the file
    (factors, extra tensors, biases, saved modules); num_labels: outputs of a saved classifier head."""
    base: str | None
    base_record: dict | None
    config: dict
    variant: str
    init: str
    modules: tuple[str, ...]
    parameters: int
    num_labels: int | None = None


def card_text(facts: CardFacts, folder: str) -> str:
    """The README.md text: YAML front matter (base_model, library_name, tags) as the hub reads it, then the card."""
    c = facts.config
    task = c.get("task_type")
    short = sorted({m.rsplit(".", 1)[-1] for m in facts.modules})
    front = ["---", f"base_model: {json.dumps(facts.base)}" if facts.base else None, "library_name: peft",
             "tags: [lora, loralab]", "---"]
    where = f"`{facts.base}`" if facts.base else "not recorded"
    if facts.base_record:
        r = facts.base_record
        where += f" (loralab: {r['kind']} `{r['name']}`" + (f", GGUF fingerprint {r['gguf_fingerprint'][:16]}"
                                                          if r.get("gguf_fingerprint") else "") + \
            (f", commit {r['revision']}" if r.get("revision") else "") + ")"
    rows = [("base model", where), ("task_type", f"`{task}`" if task else "not recorded"),
            ("rank r / lora_alpha", f"{c['r']} / {c['lora_alpha']:g}"
             + (" (rsLoRA scale alpha/√r)" if c.get("use_rslora") else "")),
            ("variant / init", f"{facts.variant} / {facts.init}"), ("dropout", str(c.get("lora_dropout"))),
            ("adapted modules", f"{len(facts.modules)} ({', '.join(short)})"),
            ("modules_to_save", ", ".join(c.get("modules_to_save") or []) or "none"), ("bias", c.get("bias")),
            ("trainable parameters", f"{facts.parameters:,} (the values in adapter_model.safetensors)")]
    peft_class = AUTO_PEFT_CLASSES.get(task, "AutoPeftModel")
    labels = f", num_labels={facts.num_labels}" if task == "SEQ_CLS" and facts.num_labels else ""
    lines = [*filter(None, front), CARD_MARKER, "", f"# LoRA adapter for {facts.base or 'its base model'}", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             "## Load it", "", "With loralab (finds the base model from the adapter's own record):", "",
             "```python", "import loralab", f"model = loralab.from_pretrained({folder!r})", "```", "",
             "With PEFT:", "", "```python", f"from peft import {peft_class}",
             f"model = {peft_class}.from_pretrained({folder!r}{labels})", "```", ""]
    return "\n".join(lines)


def write_card(folder: Path, text: str) -> Path | None:
    """Write README.md unless the folder holds one loralab did not write. Returns the path written, or None."""
    path = Path(folder) / CARD_NAME
    if path.is_file() and CARD_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return None
    return write_text(path, text)
