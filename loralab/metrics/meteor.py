"""METEOR in the form of Meteor 1.5 (Denkowski & Lavie 2014) for English, without WordNet synonyms
or paraphrase tables.

What the official E2E script runs is coco-caption's wrapper around meteor-1.5.jar (`-l en -norm`,
default "rank" task). We reproduce its scoring and alignment search, with two matchers instead of four:

- matchers: exact (weight 1.0) and Snowball-English stem (weight 0.6; the jar uses the same Snowball
  stemmer). The jar's synonym (WordNet, 0.8) and paraphrase-table (0.6) matchers need data files that
  cannot be fetched here, so words that only they would align stay unaligned and our METEOR is
  slightly lower than the jar's. Our function-word list is our own, not the jar's frequency-derived one.
- alignment: every candidate match, then the jar's beam search (width 40) over reference positions,
  preferring more covered words (exact matches counted 1, others 0.5), then fewer chunks, then a
  smaller total distance |i − j| between matched positions. Matches that are the only candidate for
  both of their words are fixed before the search, as in the jar.
- scoring (parameters α=0.85, β=0.20, γ=0.60, δ=0.75):
      P = Σ_m w_m (δ·m_content_hyp + (1−δ)·m_function_hyp) / (δ·|hyp content| + (1−δ)·|hyp function|)
      R = the same on the reference side
      Fmean = P·R / (α·P + (1−α)·R)
      Pen = γ · (chunks / mean matched words)^β,  0 when every word matched in one chunk
      METEOR = Fmean · (1 − Pen)
- several references: each segment keeps its best-scoring reference; the corpus score comes from the
  segment statistics summed over the corpus (not a mean of segment scores), a fully matched one-chunk
  segment adding no chunks — exactly how the jar's aggregate score works.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from loralab.errors import LoraLabError
from loralab.metrics.tokenize import coco_tokens

EXACT, STEM = 0, 1
MODULES = (EXACT, STEM)

# Closed-class English words (articles, pronouns, prepositions, conjunctions, auxiliaries, particles)
# that METEOR weighs by 1 − δ instead of δ. Our own list.
FUNCTION_WORDS = frozenset("""
a an the this that these those each every either neither some any no all both few many much more most
other another such what which whose whatever whichever several enough own same
i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its
itself we us our ours ourselves they them their theirs themselves who whom one ones someone something
anyone anything everyone everything nobody nothing somebody anybody everybody
about above across after against along amid among around as at before behind below beneath beside
besides between beyond by despite down during except for from in inside into like near of off on onto
out outside over past per since through throughout till to toward towards under underneath until up
upon via with within without
and but or nor so yet because although though if unless whereas while whether than then once when
whenever where wherever why how
am is are was were be been being have has had having do does did doing will would shall should can
could may might must 'm 're 's 've 'll 'd n't not
also too very just only even there here now again still already ever never always often quite rather
yes however thus therefore indeed else almost perhaps
""".split())


@dataclass(frozen=True)
class MeteorParameters:
    """Meteor 1.5's English "rank" parameters (the jar's defaults for `-l en`).

    alpha: precision/recall balance of Fmean (0-1); beta: exponent of the fragmentation penalty;
    gamma: maximum penalty (0-1); delta: weight of content versus function words (0-1);
    exact_weight / stem_weight: credit for a match by each matcher (0-1);
    beam_size: alignment search width (paths kept per reference position).
    """
    alpha: float = 0.85
    beta: float = 0.20
    gamma: float = 0.60
    delta: float = 0.75
    exact_weight: float = 1.0
    stem_weight: float = 0.6
    beam_size: int = 40

    def __post_init__(self) -> None:
        for name in ("alpha", "gamma", "delta", "exact_weight", "stem_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LoraLabError(f"METEOR {name} must lie in [0, 1], got {value}")
        if self.beta <= 0.0:
            raise LoraLabError(f"METEOR beta must be positive, got {self.beta}")
        if self.beam_size < 1:
            raise LoraLabError(f"METEOR beam_size must be at least 1, got {self.beam_size}")

    @property
    def module_weights(self) -> tuple[float, float]:
        return (self.exact_weight, self.stem_weight)


# The jar's aligner ranks partial alignments with its own weights, independent of the scoring ones.
_SEARCH_WEIGHTS = (1.0, 0.5)


@dataclass
class MeteorStats:
    """Sufficient statistics of one hypothesis/reference alignment (or a sum of them). Counts are
    words; the `*_matches` lists hold one count per matcher (exact, stem)."""
    hyp_length: int = 0
    ref_length: int = 0
    hyp_function_words: int = 0
    ref_function_words: int = 0
    hyp_content_matches: list[int] = field(default_factory=lambda: [0, 0])
    hyp_function_matches: list[int] = field(default_factory=lambda: [0, 0])
    ref_content_matches: list[int] = field(default_factory=lambda: [0, 0])
    ref_function_matches: list[int] = field(default_factory=lambda: [0, 0])
    chunks: int = 0

    @property
    def hyp_matches(self) -> int:
        return sum(self.hyp_content_matches) + sum(self.hyp_function_matches)

    @property
    def ref_matches(self) -> int:
        return sum(self.ref_content_matches) + sum(self.ref_function_matches)

    @property
    def is_perfect(self) -> bool:
        """Every word of both sides matched, in one chunk (Meteor gives it no fragmentation penalty)."""
        return (self.hyp_matches == self.hyp_length and self.ref_matches == self.ref_length
                and self.chunks == 1)

    def add(self, other: "MeteorStats") -> None:
        """Accumulate `other` into this sum, the way the jar aggregates a corpus."""
        self.hyp_length += other.hyp_length
        self.ref_length += other.ref_length
        self.hyp_function_words += other.hyp_function_words
        self.ref_function_words += other.ref_function_words
        for mine, theirs in ((self.hyp_content_matches, other.hyp_content_matches),
                             (self.hyp_function_matches, other.hyp_function_matches),
                             (self.ref_content_matches, other.ref_content_matches),
                             (self.ref_function_matches, other.ref_function_matches)):
            for m in MODULES:
                mine[m] += theirs[m]
        if not other.is_perfect:
            self.chunks += other.chunks


def meteor_score(stats: MeteorStats, params: MeteorParameters = MeteorParameters()) -> float:
    """METEOR in [0, 1] from (segment or summed) statistics."""
    d, w = params.delta, params.module_weights
    hyp_weighted_length = d * (stats.hyp_length - stats.hyp_function_words) + (1 - d) * stats.hyp_function_words
    ref_weighted_length = d * (stats.ref_length - stats.ref_function_words) + (1 - d) * stats.ref_function_words
    hyp_weighted = sum(w[m] * (d * stats.hyp_content_matches[m] + (1 - d) * stats.hyp_function_matches[m])
                       for m in MODULES)
    ref_weighted = sum(w[m] * (d * stats.ref_content_matches[m] + (1 - d) * stats.ref_function_matches[m])
                       for m in MODULES)
    if hyp_weighted_length <= 0 or ref_weighted_length <= 0:
        return 0.0
    precision = hyp_weighted / hyp_weighted_length
    recall = ref_weighted / ref_weighted_length
    if precision <= 0.0 or recall <= 0.0:
        return 0.0
    f_mean = precision * recall / (params.alpha * precision + (1 - params.alpha) * recall)
    if stats.is_perfect:
        fragmentation = 0.0
    else:
        fragmentation = stats.chunks / ((stats.hyp_matches + stats.ref_matches) / 2)
    penalty = params.gamma * fragmentation ** params.beta
    return max(f_mean * (1.0 - penalty), 0.0)


@functools.lru_cache(maxsize=1)
def _stemmer():
    try:
        from nltk.stem.snowball import SnowballStemmer
    except ImportError:
        raise LoraLabError("METEOR needs the `nltk` package for its Snowball stemmer: pip install nltk") from None
    return SnowballStemmer("english")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


# A partial alignment: (search coverage, chunks, distance, used-hypothesis bitmask, end of the open
# chunk in the hypothesis or -1, matches as (ref position, hyp position, module) tuples)
_Path = tuple[float, int, int, int, int, tuple[tuple[int, int, int], ...]]


def _extend(path: _Path, j: int, i: int, module: int) -> _Path:
    coverage, chunks, distance, used, open_end, matches = path
    if open_end != -1 and i != open_end:
        chunks += 1                          # the open chunk breaks: not contiguous in the hypothesis
    return (coverage + 2 * _SEARCH_WEIGHTS[module], chunks, distance + abs(j - i), used | (1 << i), i + 1,
            matches + ((j, i, module),))


def _skip(path: _Path) -> _Path:
    coverage, chunks, distance, used, open_end, matches = path
    return (coverage, chunks + (open_end != -1), distance, used, -1, matches)


def _rank(path: _Path) -> tuple[float, int, int]:
    return (-path[0], path[1], path[2])


def align(hypothesis: Sequence[str], reference: Sequence[str],
          params: MeteorParameters = MeteorParameters()) -> MeteorStats:
    """Align one tokenized hypothesis with one tokenized reference and return its statistics."""
    identical = list(hypothesis) == list(reference)
    candidates: list[list[tuple[int, int]]] = [[] for _ in reference]    # per ref position: (hyp pos, module)
    hyp_coverage = [0] * len(hypothesis)
    for j, ref_word in enumerate(reference):
        for i, hyp_word in enumerate(hypothesis):
            if hyp_word == ref_word:
                candidates[j].append((i, EXACT))
                hyp_coverage[i] += 1
    if not identical:                        # the jar skips the other matchers for identical sentences
        hyp_stems = [_stem(word) for word in hypothesis]
        for j, ref_word in enumerate(reference):
            ref_stem = _stem(ref_word)
            for i, hyp_word in enumerate(hypothesis):
                if hyp_stems[i] == ref_stem and hyp_word != ref_word:
                    candidates[j].append((i, STEM))
                    hyp_coverage[i] += 1

    fixed: dict[int, tuple[int, int]] = {}
    used = 0
    for j, options in enumerate(candidates):
        if len(options) == 1 and hyp_coverage[options[0][0]] == 1:
            fixed[j] = options[0]
            used |= 1 << options[0][0]

    paths: list[_Path] = [(0.0, 0, 0, used, -1, ())]
    for j in range(len(reference)):
        paths.sort(key=_rank)
        extended: list[_Path] = []
        for path in paths[:params.beam_size]:
            if j in fixed:
                extended.append(_extend(path, j, *fixed[j]))
                continue
            for i, module in candidates[j]:
                if not path[3] >> i & 1:
                    extended.append(_extend(path, j, i, module))
            extended.append(_skip(path))
        paths = extended
    paths.sort(key=_rank)
    paths = [_skip(path) for path in paths[:params.beam_size]]      # close the last open chunk
    paths.sort(key=_rank)
    best = paths[0]

    stats = MeteorStats(hyp_length=len(hypothesis), ref_length=len(reference),
                        hyp_function_words=sum(word in FUNCTION_WORDS for word in hypothesis),
                        ref_function_words=sum(word in FUNCTION_WORDS for word in reference),
                        chunks=best[1])
    for j, i, module in best[5]:
        if hypothesis[i] in FUNCTION_WORDS:
            stats.hyp_function_matches[module] += 1
        else:
            stats.hyp_content_matches[module] += 1
        if reference[j] in FUNCTION_WORDS:
            stats.ref_function_matches[module] += 1
        else:
            stats.ref_content_matches[module] += 1
    return stats


def best_reference_stats(hypothesis: Sequence[str], references: Sequence[Sequence[str]],
                         params: MeteorParameters = MeteorParameters()) -> MeteorStats:
    """Statistics against the reference with the highest segment METEOR (the first one on a tie)."""
    best, best_score = MeteorStats(hyp_length=len(hypothesis)), -1.0
    for reference in references:
        stats = align(hypothesis, reference, params)
        score = meteor_score(stats, params)
        if score > best_score:
            best, best_score = stats, score
    return best


def corpus_meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                  params: MeteorParameters = MeteorParameters()) -> float:
    """Corpus METEOR of `hypotheses` against `references` (coco tokenization), on 0-100 like the paper."""
    total = MeteorStats()
    for hypothesis, refs in zip(hypotheses, references):
        total.add(best_reference_stats(coco_tokens(hypothesis), [coco_tokens(r) for r in refs], params))
    return 100.0 * meteor_score(total, params)
