"""Why LoRA works, measured on trained adapters (paper §7): spectra and ranks of ΔW, subspace
similarity between adapters, ΔW versus the base weight W, and intruder dimensions of W0 + ΔW. See docs/analysis.md."""
from loralab.analysis.amplification import (ModuleAmplification, amplification_of, compare_with_base,
                                            expected_random_projection_norm, projection_norm, random_orthonormal,
                                            top_r_projection_norm)
from loralab.analysis.deltas import LowRankDelta, deltas_from_adapter, load_deltas, make_delta
from loralab.analysis.intruders import ModuleIntruders, adapter_intruders, intruders_of, reduce_intruders
from loralab.analysis.report import AnalysisReport, analyze_adapters, write_report
from loralab.analysis.spectrum import (LowRankSVD, ModuleSpectrum, adapter_spectra, effective_rank, lowrank_svd,
                                       spectrum_of, stable_rank)
from loralab.analysis.subspace import (ModuleSimilarity, compare_adapters, expected_random_grid,
                                       expected_random_similarity, phi, random_similarity_baseline,
                                       right_singular_vectors, similarity_grid)

__all__ = [
    "LowRankDelta", "make_delta", "deltas_from_adapter", "load_deltas",
    "LowRankSVD", "lowrank_svd", "effective_rank", "stable_rank", "ModuleSpectrum", "spectrum_of", "adapter_spectra",
    "right_singular_vectors", "similarity_grid", "phi", "expected_random_similarity", "expected_random_grid",
    "random_similarity_baseline", "ModuleSimilarity", "compare_adapters",
    "projection_norm", "top_r_projection_norm", "random_orthonormal", "expected_random_projection_norm",
    "ModuleAmplification", "amplification_of", "compare_with_base",
    "ModuleIntruders", "intruders_of", "adapter_intruders", "reduce_intruders",
    "AnalysisReport", "analyze_adapters", "write_report",
]
