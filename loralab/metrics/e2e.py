"""E2E NLG evaluation: read the data, group references by meaning representation, score outputs with
the five metrics of the LoRA paper's Table 3 (BLEU, NIST, METEOR, ROUGE-L, CIDEr).

Like the official e2e-metrics script, every distinct meaning representation (MR) is one segment with
all of its references, and a system produces one output per MR, in the order MRs first appear.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from loralab.errors import LoraLabError, choose
from loralab.metrics.bleu import corpus_bleu
from loralab.metrics.cider import corpus_cider_d
from loralab.metrics.meteor import corpus_meteor
from loralab.metrics.meteor_jar import OFFICIAL, corpus_meteor_official, meteor_implementation
from loralab.metrics.nist import ReferenceLength, corpus_nist
from loralab.metrics.rouge import corpus_rouge_l

METRIC_NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LoraLabError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoraLabError(f"{path} is a folder; give the text file itself") from None
    except UnicodeDecodeError as exc:
        raise LoraLabError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                           f"save the file as UTF-8") from None


def parse_e2e_line(line: str, where: str) -> tuple[str, str] | None:
    """(meaning representation, text) of one `mr||text` line, both stripped; None for a blank line.
    `where` ("file:line") starts the error message of a malformed line."""
    if not line.strip():
        return None
    parts = line.split("||")
    if len(parts) != 2:
        raise LoraLabError(f"{where}: an E2E line is `meaning representation||reference text` "
                           f"with exactly one `||`, this one has {len(parts) - 1}")
    mr, text = parts[0].strip(), parts[1].strip()
    if not mr or not text:
        missing = "meaning representation" if not mr else "reference text"
        raise LoraLabError(f"{where}: empty {missing}; every line needs both sides of `||`")
    return mr, text


def read_e2e(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(meaning representation, reference text) pairs of an E2E file with one `mr||text` per line,
    both stripped of surrounding whitespace. Blank lines are skipped."""
    path = Path(path)
    pairs = []
    for number, line in enumerate(_read_lines(path), start=1):
        pair = parse_e2e_line(line, f"{path}:{number}")
        if pair is None:
            continue
        mr, text = pair
        pairs.append((mr, text))
    if not pairs:
        raise LoraLabError(f"{path}: the file holds no `mr||text` lines")
    return pairs


def group_references(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Group (mr, reference) pairs by MR: (distinct MRs in order of first appearance, the list of
    references of each MR in file order). The official script groups only *consecutive* equal MRs;
    the E2E files list each MR's lines together, where the two agree."""
    grouped: dict[str, list[str]] = {}
    for mr, reference in pairs:
        grouped.setdefault(mr, []).append(reference)
    return list(grouped), list(grouped.values())


def read_e2e_references(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """(MRs, references per MR) of an E2E file: `group_references(read_e2e(path))`."""
    return group_references(read_e2e(path))


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise LoraLabError("hypotheses and references must be lists (one entry per segment), not a string")
    if not hypotheses:
        raise LoraLabError("nothing to score: the hypothesis list is empty")
    if len(hypotheses) != len(references):
        raise LoraLabError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups; "
                           f"give one hypothesis per meaning representation")
    for index, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hypothesis, str):
            raise LoraLabError(f"hypothesis {index} is a {type(hypothesis).__name__}, expected a string")
        if isinstance(refs, str) or not refs:
            raise LoraLabError(f"segment {index} needs a non-empty list of reference strings, got {refs!r:.60}")
        if not all(isinstance(r, str) for r in refs):
            raise LoraLabError(f"segment {index}: every reference must be a string")


METEOR_CHOICES = ("auto", "official", "loralab")


def score_e2e(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
              nist_reference_length: ReferenceLength = "official", meteor: str = "auto") -> dict[str, float]:
    """The five E2E metrics of `hypotheses` (one output string per segment) against `references`
    (a non-empty list of reference strings per segment), on the scales the LoRA paper prints:
    {"BLEU": 0-100, "NIST": raw (≈8.9), "METEOR": 0-100, "ROUGE_L": 0-100, "CIDEr": coco scale (≈2.5)}.

    nist_reference_length: see `loralab.metrics.nist.corpus_nist` ("official" matches the script).
    meteor: "official" = the Meteor 1.5 jar the E2E challenge runs (needs Java + pycocoevalcap's jar),
    "loralab" = loralab's exact+stem reimplementation, "auto" = the jar when available, else loralab's;
    `loralab.metrics.meteor_jar.meteor_implementation()` names what "auto" picks.
    """
    _check_inputs(hypotheses, references)
    choose(meteor, METEOR_CHOICES, "METEOR implementation")
    use_jar = meteor == "official" or (meteor == "auto" and meteor_implementation() == OFFICIAL)
    return {
        "BLEU": corpus_bleu(hypotheses, references),
        "NIST": corpus_nist(hypotheses, references, reference_length=nist_reference_length),
        "METEOR": (corpus_meteor_official if use_jar else corpus_meteor)(hypotheses, references),
        "ROUGE_L": corpus_rouge_l(hypotheses, references),
        "CIDEr": corpus_cider_d(hypotheses, references),
    }


def read_predictions(path: str | os.PathLike[str]) -> list[str]:
    """One system output per line (surrounding whitespace stripped; a blank line is an empty output)."""
    return [line.strip() for line in _read_lines(Path(path))]


def score_file(predictions_path: str | os.PathLike[str], references_path: str | os.PathLike[str],
               nist_reference_length: ReferenceLength = "official", meteor: str = "auto") -> dict[str, float]:
    """Score a predictions file (one line per distinct MR of the E2E file, in first-appearance order)
    against an E2E `mr||text` file; returns `score_e2e`'s dict."""
    _, references = read_e2e_references(references_path)
    predictions = read_predictions(predictions_path)
    # blank lines after the last output are an editor's trailing newlines, not empty outputs
    while len(predictions) > len(references) and not predictions[-1]:
        predictions.pop()
    if len(predictions) != len(references):
        raise LoraLabError(f"{predictions_path} has {len(predictions)} lines but {references_path} has "
                           f"{len(references)} distinct meaning representations; write one output per MR, "
                           f"in the order the MRs first appear")
    return score_e2e(predictions, references, nist_reference_length, meteor)
