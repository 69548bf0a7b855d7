"""Learn LoRA by running it: five lessons, one per stage of the learning route; list them or run one.

    loralab learn                   # the lessons, with what each teaches
    loralab learn 3 --quick         # lesson 3 on a tiny random model (seconds): mechanics only
    loralab learn 3                 # lesson 3 on all-MiniLM-L6-v2 and SST-2 (a few minutes on 2 CPU cores)

A run writes runs/lessons/NN/index.html (the executed lesson: text, code, output and figures in one
self-contained page), the figures as PNG files, and run.json. Training runs the lessons share are cached in
runs/lessons/cache/ (runs/lessons/cache-quick/ in quick mode), so lesson 4 reuses what lesson 3 trained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loralab.errors import LoraLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lesson", nargs="?", type=int, metavar="N", help="the lesson to run (1-5); none: list them")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init model and a few sentences: seconds; checks the mechanics, not the numbers")
    parser.add_argument("--out", default=None, help="output folder (default: runs/lessons/NN)")
    parser.add_argument("--cache", default=None,
                        help="folder of the training runs lessons share (default: runs/lessons/cache[-quick])")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: fastest on cores shared with other jobs)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the lesson's output while it runs")


def list_lessons() -> str:
    from loralab.lessons import LESSONS, FOLDER

    lines = ["The five lessons follow the five stages of the route (concept map: "
             f"{FOLDER / 'README.md'}):", ""]
    for lesson in LESSONS:
        lines.append(f"  {lesson.number}  {lesson.title}")
        lines.append(f"     concepts: {', '.join(lesson.concepts)}")
    lines += ["", "Run one with `loralab learn N` (add --quick for a seconds-long check on a tiny model); it writes",
              "runs/lessons/NN/index.html. The lesson files are notebooks in jupytext's percent format:",
              f"{FOLDER}/lesson_*.py"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from loralab.lessons import get_lesson

    if args.lesson is None:
        print(list_lessons())
        return 0
    lesson = get_lesson(args.lesson)
    if args.threads < 1:
        raise LoraLabError(f"--threads must be at least 1, got {args.threads}")
    from loralab.lessons.runner import run_lesson

    out = Path(args.out or Path("runs", "lessons", lesson.folder_name))
    cache = Path(args.cache or Path("runs", "lessons", "cache-quick" if args.quick else "cache"))
    print(f"lesson {lesson.number}: {lesson.title} ({'quick' if args.quick else 'normal'} mode)", flush=True)

    def progress(done: int, total: int, cell) -> None:
        if args.quiet:
            return
        print(f"--- cell {done}/{total} (line {cell.line})", flush=True)

    result = run_lesson(lesson, out, cache, quick=args.quick, threads=args.threads, echo=not args.quiet,
                        on_cell=progress)
    page = out / "index.html"
    failed = result.failed
    if isinstance(getattr(failed, "exception", None), LoraLabError):   # e.g. data or a model package missing
        raise LoraLabError(f"lesson {lesson.number} cannot run here: {failed.exception} (page: {page})")
    if failed is not None:
        last = failed.error.strip().splitlines()[-1]
        print(f"loralab learn: lesson {lesson.number} stopped in the cell starting at line {failed.cell.line} of "
              f"{lesson.file}: {last}; the page shows the traceback: {page}", file=sys.stderr)
        return 1
    checks = result.namespace.get("checks")
    verified = len(getattr(checks, "results", []))
    print(f"lesson {lesson.number} ran in {result.seconds:.0f} s ({result.cpu_seconds:.0f} CPU s); {verified} check-yourself answers verified; "
          f"wrote {page}")
    return 0
