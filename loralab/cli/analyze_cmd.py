"""Spectra, subspace similarity and ΔW-versus-W amplification of trained LoRA adapters, as an HTML report with CSV/JSON numbers.

One adapter folder: singular value spectrum, effective and stable rank of every ΔW.
Two adapter folders: also the paper's subspace similarity φ(i, j) per module (e.g. r=8 vs r=64, two seeds).
With --base MODEL (a builtin name, model folder, .gguf file or cached hub id, as train takes): also ΔW versus W (paper Table 7) and the amplification factor per module.
With --base and --intruders: also the intruder dimensions of W0 + ΔW (Shuttleworth et al. 2024) per module.
"""
from __future__ import annotations

import argparse
import math

from loralab.errors import LoraLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument

    parser.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR",
                        help="one or two adapter folders (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--base", metavar="MODEL", default=None,
                        help="the base model (builtin name, model folder, .gguf file or cached hub id): adds ΔW "
                             "versus W and the amplification factor")
    add_output_argument(parser, "folder for report.html, CSV/JSON and figures (required)", metavar="DIR")
    parser.add_argument("--factor", choices=["A", "B"], default="A",
                        help="subspace similarity on A's right-singular vectors (paper, default) or B's left ones")
    parser.add_argument("--trials", type=int, default=20, help="random draws per baseline (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baselines (default 0)")
    parser.add_argument("--intruders", action="store_true",
                        help="with --base: count intruder dimensions of W0 + ΔW (singular vectors unlike every one of W0)")
    parser.add_argument("--intruder-k", type=int, default=10, metavar="K",
                        help="top singular vectors of W0 + ΔW examined for intruders (default 10)")
    parser.add_argument("--intruder-threshold", type=float, default=0.5, metavar="EPS",
                        help="a singular vector is an intruder when its max |cosine| to W0's is below EPS (default 0.5)")
    parser.add_argument("--no-split-fused", action="store_true",
                        help="analyse a fused projection (GPT-2 c_attn q,v) as one ΔW instead of one per slice")


def run(args: argparse.Namespace) -> int:
    from loralab.analysis.intruders import check_intruder_settings
    from loralab.analysis.report import OUTPUT_KIND, analyze_adapters, is_analysis_folder, report_inputs, write_report
    from loralab.cli.model_args import resolve_model_arg
    from loralab.cli.output_args import required_output
    from loralab.files import check_output_folder

    output = required_output(args, "the report folder")
    if len(args.adapters) > 2:
        raise LoraLabError(f"analyze takes one or two adapter folders, got {len(args.adapters)}; "
                           f"run it once per pair to compare more")
    if args.trials < 1:
        raise LoraLabError(f"--trials must be ≥ 1, got {args.trials}")
    if args.intruders:
        check_intruder_settings(args.intruder_k, args.intruder_threshold)
        if args.base is None:
            raise LoraLabError("--intruders compares W0 + ΔW with the base weights W0; pass --base MODEL")
    inputs = report_inputs({"adapters": args.adapters, "base": args.base})
    check_output_folder(output, OUTPUT_KIND, inputs, reuse=True, recognise=is_analysis_folder)  # before any work
    if args.base is not None:
        # The folder a builtin name / .gguf file / hub id resolves to is read too: the report may not go there.
        base, base_inputs = resolve_model_arg(args.base)
        if base_inputs != (base,):
            check_output_folder(output, OUTPUT_KIND, [*inputs, *base_inputs], reuse=True,
                                recognise=is_analysis_folder)
    report = analyze_adapters(args.adapters, base=args.base, factor=args.factor, trials=args.trials,
                              seed=args.seed, split_fused=not args.no_split_fused, intruders=args.intruders,
                              intruder_k=args.intruder_k, intruder_threshold=args.intruder_threshold)
    written = write_report(report, output)

    for a in report.adapters:
        print(f"{a.label}: {len(a.spectra)} ΔW")
        print(f"  {'module':<48} {'r':>4} {'‖ΔW‖_F':>10} {'eff.rank':>9} {'st.rank':>8}"
              + (f" {'amplif.':>9}" if a.amplification else ""))
        amps = {m.name: m for m in a.amplification or []}
        for s in a.spectra:
            line = f"  {s.name[-48:]:<48} {s.r:>4} {s.frobenius:>10.4g} {s.effective_rank:>9.3f} {s.stable_rank:>8.3f}"
            if s.name in amps:
                amp = amps[s.name].amplification
                line += f" {amp:>9.3g}" if math.isfinite(amp) else f" {'–':>9}"
            print(line)
    for a in report.adapters:
        if a.intruders is not None:
            found = [f"{m.name} ({m.count})" for m in a.intruders if m.count]
            print(f"{a.label}: {sum(m.count for m in a.intruders)} intruder dimension(s) among the top "
                  f"{args.intruder_k} singular vectors at ε = {args.intruder_threshold}"
                  + (f": {', '.join(found)}" if found else ""))
    if report.similarity:
        print(f"subspace similarity ({report.similarity[0].factor}): {len(report.similarity)} shared modules")
        print(f"  {'module':<48} {'φ(1,1)':>7} {'random':>7} {'mean φ':>7} {'random':>7}")
        for s in report.similarity:
            print(f"  {s.name[-48:]:<48} {s.top_overlap:>7.3f} {s.random_mean[0][0]:>7.3f} {s.mean_phi:>7.3f} "
                  f"{s.mean_expected:>7.3f}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"report: {written['html']}")
    return 0
