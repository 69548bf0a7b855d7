"""E2E NLG metrics as the LoRA paper reports them (Table 3): BLEU, NIST, METEOR, ROUGE-L, CIDEr.

    from loralab.metrics import score_file
    score_file("predictions.txt", "../shared/data/e2e/test.txt")
    # {"BLEU": …, "NIST": …, "METEOR": …, "ROUGE_L": …, "CIDEr": …} on the paper's scales
    # (its LoRA row reads 70.4, 8.85, 46.8, 71.8, 2.53)

See docs/metrics.md for how each metric is computed and how it differs from the official script.
"""
from loralab.metrics.bleu import corpus_bleu
from loralab.metrics.cider import cider_d_segments, corpus_cider_d
from loralab.metrics.e2e import (METRIC_NAMES, group_references, read_e2e, read_e2e_references, read_predictions,
                                 score_e2e, score_file)
from loralab.metrics.meteor import MeteorParameters, corpus_meteor
from loralab.metrics.nist import corpus_nist
from loralab.metrics.rouge import corpus_rouge_l, lcs_length
from loralab.metrics.tokenize import coco_tokens, mteval_tokens

__all__ = [
    "METRIC_NAMES", "MeteorParameters", "cider_d_segments", "coco_tokens", "corpus_bleu", "corpus_cider_d",
    "corpus_meteor", "corpus_nist", "corpus_rouge_l", "group_references", "lcs_length", "mteval_tokens",
    "read_e2e", "read_e2e_references", "read_predictions", "score_e2e", "score_file",
]
