"""Re-measure the per-row cost model's constant on this machine: where masked stops beating grouped.

    .venv/bin/python -m benchmarks.rows_calibrate                 # one thread, ~1 min
    .venv/bin/python -m benchmarks.rows_calibrate --threads 2 --rounds 40 --json out.json

One LoraLayer (Linear width→width, `adapters` adapters of rank r, random factors) under
torch.inference_mode; a batch of `rows` rows cycling the adapters, at each length in `seqs` (tokens per
row). Each length times the masked and the grouped strategy (forced by name, calls alternating, after
warm-up) and takes the medians (the base layer's own time is in both and cancels). The crossover is where
masked − grouped changes sign, interpolated linearly in N·R (tokens × summed rank) between the two
lengths around it (of several, the one most lengths agree with): the value to use for
`loralab.core.rows.MASKED_MAX_WORK`, or to set as $LORALAB_MASKED_MAX_WORK without editing the code.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmarks.suites import alternate, median_ms


@dataclass(frozen=True)
class CalibrationConfig:
    rows: int = 32
    adapters: int = 8
    r: int = 8
    width: int = 576
    seqs: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
    rounds: int = 20
    seed: int = 0


def mixed_layer(config: CalibrationConfig) -> nn.Module:
    from loralab.core.kinds import kind_of
    from loralab.core.lora import LoraFactors, LoraLayer
    from loralab.core.variants import VARIANTS

    torch.manual_seed(config.seed)
    base = nn.Linear(config.width, config.width)
    layer = LoraLayer(base, kind_of(base))
    for i in range(config.adapters):
        f = LoraFactors(config.width, config.width, config.r, 2.0 * config.r, variant=VARIANTS["lora"])
        layer.add_adapter(f"a{i}", f, "kaiming")
        with torch.no_grad():
            f.B.normal_(0, 0.05)
    return layer.eval()


def calibrate(config: CalibrationConfig, log=print) -> dict:
    """Median ms of masked and grouped per length, and the crossover N·R (None: no sign change measured)."""
    from loralab.core.rows import GROUPED, MASKED, RowPlan

    layer = mixed_layer(config)
    names = [f"a{i % config.adapters}" for i in range(config.rows)]
    rank = config.r * min(config.adapters, config.rows)
    table = []
    for seq in config.seqs:
        x = torch.randn(config.rows, seq, config.width)

        def run(strategy: str):
            def call():
                layer.row_plan = RowPlan(names, strategy)
                try:
                    with torch.inference_mode():
                        return layer(x)
                finally:
                    layer.row_plan = None
            return call
        times = alternate({MASKED: run(MASKED), GROUPED: run(GROUPED)}, rounds=config.rounds, warmup=2)
        row = {"seq": seq, "work": config.rows * seq * rank, **{s: median_ms(t) for s, t in times.items()}}
        table.append(row)
        log(f"  {config.rows} x {seq:>3} tokens, N·R {row['work']:>9,}: masked {row[MASKED]:8.3f} ms, "
            f"grouped {row[GROUPED]:8.3f} ms")
    return {"config": asdict(config), "table": table, "masked_max_work": crossover(table)}


def crossover(table: list[dict]) -> int | None:
    """The N·R threshold that agrees best with the measured winners (masked at or below it, grouped above):
    among the sign changes of masked − grouped, each interpolated linearly, the one that misclassifies the
    fewest lengths (noise can make one length flip). 0 when grouped always won; None when masked always won."""
    wins = [row["masked"] <= row["grouped"] for row in table]
    if not any(wins):
        return 0
    candidates = []
    for before, after in zip(table, table[1:]):
        lead, lag = before["masked"] - before["grouped"], after["masked"] - after["grouped"]
        if lead <= 0 < lag:
            candidates.append(round(before["work"] + (after["work"] - before["work"]) * -lead / (lag - lead)))
    if not candidates:
        return None
    return min(candidates, key=lambda t: sum((row["work"] <= t) != won for row, won in zip(table, wins)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=CalibrationConfig.rounds)
    parser.add_argument("--rows", type=int, default=CalibrationConfig.rows)
    parser.add_argument("--adapters", type=int, default=CalibrationConfig.adapters)
    parser.add_argument("--r", type=int, default=CalibrationConfig.r)
    parser.add_argument("--width", type=int, default=CalibrationConfig.width)
    parser.add_argument("--seqs", type=int, nargs="+", default=list(CalibrationConfig.seqs))
    parser.add_argument("--json", metavar="PATH", help="also write the table and the constant as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = CalibrationConfig(rows=args.rows, adapters=args.adapters, r=args.r, width=args.width,
                               seqs=tuple(args.seqs), rounds=args.rounds)
    print(f"per-row crossover, {args.threads} thread(s), {config.adapters} adapters of rank {config.r}, "
          f"{config.width}->{config.width}:")
    result = calibrate(config)
    found = result["masked_max_work"]
    if found is None:
        print("masked won at every measured length: the crossover lies beyond them; add longer --seqs")
    else:
        print(f"MASKED_MAX_WORK = {found:_}   (or run with LORALAB_MASKED_MAX_WORK={found})")
    if args.json:
        from loralab.files import write_json
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
