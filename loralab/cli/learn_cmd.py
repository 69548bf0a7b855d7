"""Learn LoRA by running it: five lessons, one per stage of the learning route; list them or run one.

    loralab learn                   # the lessons, with what each teaches
    loralab learn 3 --quick         # lesson 3 on a tiny random model (seconds): mechanics only
    loralab learn 3                 # lesson 3 on all-MiniLM-L6-v2 and SST-2 (a few minutes on 2 CPU cores)
    loralab learn 3 --lang zh       # the Chinese edition (中文版), from the same cached training runs
    loralab learn 3 r=1,4,16 lr=1e-3   # knobs: lesson 3's experiment with other values (`loralab learn` lists
                                    # each lesson's knobs); cached apart, page in runs/lessons/03-knobs-r1,4,16-lr0.001
    loralab learn 3 --exercises     # your answers: writes runs/lessons/exercises/lesson_3.en.py (answers
                                    # blank, hints in the comments) once, runs it, checks what you wrote

A run writes runs/lessons/NN/index.html (the executed lesson: text, code, output and figures in one
self-contained page), the figures as PNG files, and run.json. Training runs the lessons share are cached in
runs/lessons/cache/ (runs/lessons/cache-quick/ in quick mode), so lesson 4 reuses what lesson 3 trained.
Pages of other editions go next to it: runs/lessons/NN-zh, runs/lessons/NN-exercises(-zh), and a knob run's
in runs/lessons/NN-knobs-VALUES(-zh), so the default page is never overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loralab.errors import LoraLabError, choose


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument

    parser.add_argument("lesson", nargs="?", type=int, metavar="N", help="the lesson to run (1-5); none: list them")
    parser.add_argument("knobs", nargs="*", metavar="NAME=VALUE",
                        help="re-run the lesson's experiment with other values, e.g. r=1,4,16 lr=1e-3 (the same "
                             "key=value syntax as `loralab train`; `loralab learn` lists each lesson's knobs)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init model and a few sentences: seconds; checks the mechanics, not the numbers")
    add_output_argument(parser, "output folder (default: runs/lessons/NN)", metavar="DIR")
    parser.add_argument("--cache", default=None,
                        help="folder of the training runs lessons share (default: runs/lessons/cache[-quick])")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: fastest on cores shared with other jobs)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the lesson's output while it runs")
    parser.add_argument("--lang", default="en",
                        help="the lesson's language: en (default) or zh (中文; code stays English)")
    parser.add_argument("--exercises", action="store_true",
                        help="exercise mode: the answers are yours. The first run writes an exercise copy (answers "
                             "None, hints in comments) under runs/lessons/exercises/; edit it and run again")


def list_lessons(lang: str = "en") -> str:
    from loralab.lessons import FOLDER, LESSONS
    from loralab.lessons.kit import KNOBS
    from loralab.lessons.knobs import show

    if lang == "zh":
        lines = ["五课对应学习路线的五个阶段(概念对照表:" f"{FOLDER / 'README.md'}):", ""]
        for lesson in LESSONS:
            lines.append(f"  {lesson.number}  {lesson.heading('zh')}")
            lines += [f"     旋钮 {knob.name}=…:{knob.what_zh}(默认 {show(knob.default)})"
                      for knob in KNOBS.get(lesson.number, ())]
        lines += ["", "运行一课:`loralab learn N --lang zh`(加 --quick 用微型模型几秒内检查,加 --exercises 自己作答);",
                  "生成 runs/lessons/NN-zh/index.html。"]
        return "\n".join(lines)
    lines = ["The five lessons follow the five stages of the route (concept map: "
             f"{FOLDER / 'README.md'}):", ""]
    for lesson in LESSONS:
        lines.append(f"  {lesson.number}  {lesson.title}")
        lines.append(f"     concepts: {', '.join(lesson.concepts)}")
        lines += [f"     knob {knob.line()}" for knob in KNOBS.get(lesson.number, ())]
    lines += ["", "Run one with `loralab learn N` (add --quick for a seconds-long check on a tiny model); it writes",
              "runs/lessons/NN/index.html. Knobs re-run a lesson's experiment with other values: `loralab learn 3 "
              "r=1,4,16 lr=1e-3`", "(cached apart; page in runs/lessons/NN-knobs-…). The lesson files are notebooks in jupytext's percent format:",
              f"{FOLDER}/lesson_*.py"]
    return "\n".join(lines)


def page_folder(lesson, lang: str, exercises: bool, knobs: dict | None = None) -> Path:
    """runs/lessons/NN, with -exercises, -knobs-VALUES and -zh for the other editions and knob runs, so that the
    pages live side by side (a knob run never replaces the default page)."""
    from loralab.lessons.knobs import folder_suffix

    suffix = (("-exercises" if exercises else "") + folder_suffix(knobs or {})
              + ("" if lang == "en" else f"-{lang}"))
    return Path("runs", "lessons", lesson.folder_name + suffix)


def exercise_copy(lesson, lang: str) -> tuple[Path, bool]:
    """The learner's exercise copy of `lesson` (runs/lessons/exercises/lesson_N.LANG.py): written once, never
    replaced (it holds the learner's answers). Returns (its path, whether it was written now)."""
    from loralab.files import check_output_file, write_text
    from loralab.lessons.runner import exercise_source

    path = Path("runs", "lessons", "exercises", f"lesson_{lesson.number}.{lang}.py")
    if path.exists():
        if not path.is_file():
            raise LoraLabError(f"{path} is not a file; move it away to get a fresh exercise copy")
        return path, False
    check_output_file(path, [lesson.path])
    write_text(path, exercise_source(lesson.path.read_text(encoding="utf-8"), lang))
    return path, True


def run(args: argparse.Namespace) -> int:
    from loralab.lessons import get_lesson

    if args.lesson is None:
        print(list_lessons(args.lang))
        return 0
    lesson = get_lesson(args.lesson)
    from loralab.lessons.kit import KNOBS
    from loralab.lessons.knobs import parse_knobs, show

    knobs = parse_knobs(KNOBS.get(lesson.number, ()), args.knobs, lesson.number)
    if args.threads < 1:
        raise LoraLabError(f"--threads must be at least 1, got {args.threads}")
    from loralab.lessons import LANGUAGES

    choose(args.lang, LANGUAGES, "lesson language (--lang)")
    from loralab.lessons.runner import run_lesson

    out = Path(args.output or page_folder(lesson, args.lang, args.exercises, knobs))
    cache = Path(args.cache or Path("runs", "lessons", "cache-quick" if args.quick else "cache"))
    source = None
    if args.exercises:
        source, written = exercise_copy(lesson, args.lang)
        print(f"{'wrote' if written else 'checking your answers in'} the exercise copy {source}", flush=True)
    print(f"lesson {lesson.number}: {lesson.heading(args.lang)} ({'quick' if args.quick else 'normal'} mode"
          f"{', exercises' if args.exercises else ''}"
          f"{''.join(f', {k}={show(v)}' for k, v in knobs.items())})", flush=True)

    def progress(done: int, total: int, cell) -> None:
        if args.quiet:
            return
        print(f"--- cell {done}/{total} (line {cell.line})", flush=True)

    result = run_lesson(lesson, out, cache, quick=args.quick, threads=args.threads, echo=not args.quiet,
                        on_cell=progress, lang=args.lang, exercises=args.exercises, source=source,
                        knobs=knobs)
    page = out / "index.html"
    failed = result.failed
    if isinstance(getattr(failed, "exception", None), LoraLabError):   # e.g. data or a model package missing
        raise LoraLabError(f"lesson {lesson.number} cannot run here: {failed.exception} (page: {page})")
    file = source or lesson.file
    if failed is not None:
        last = failed.error.strip().splitlines()[-1]
        print(f"loralab learn: lesson {lesson.number} stopped in the cell starting at line {failed.cell.line} of "
              f"{file}: {last}; the page shows the traceback: {page}", file=sys.stderr)
        return 1
    wrong = result.disagreements
    if wrong:
        print(f"loralab learn: lesson {lesson.number} disagrees with itself: {len(wrong)} worked solution(s) "
              f"failed their check ({', '.join(c['key'] for c in wrong)}); the page shows them: {page}",
              file=sys.stderr)
        return 1
    score = result.namespace["checks"].score_line() if hasattr(result.namespace.get("checks"), "score_line") else ""
    print(f"lesson {lesson.number} ran in {result.seconds:.0f} s ({result.cpu_seconds:.0f} CPU s); {score}; "
          f"wrote {page}")
    if args.exercises:
        print(f"fill in the answers in {source} and run `loralab learn {lesson.number} --exercises"
              f"{'' if args.lang == 'en' else ' --lang ' + args.lang}{' --quick' if args.quick else ''}` again")
    return 0
