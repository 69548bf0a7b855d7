"""A real text-regression set for measuring `loralab train`'s defaults on a user's regression file: VADER's
human sentiment-intensity ratings of tweets, written as train/dev TSV files (`sentence<TAB>label`).

    .venv/bin/python -m benchmarks.regression_data runs/vader-tweets            # 0-5 scale, 1,700 train, 800 dev
    .venv/bin/python -m benchmarks.regression_data runs/vader-raw --scale raw --train-limit 0

Source: the `vaderSentiment` 3.3.2 source distribution on PyPI (MIT licence, C.J. Hutto 2016) ships
`additional_resources/hutto_ICWSM_2014.tar.gz`, the data of Hutto & Gilbert, "VADER: A Parsimonious Rule-based
Model for Sentiment Analysis of Social Media Text", ICWSM 2014. Its `tweets_GroundTruth.txt` holds 4,200
tweets, each with the mean of 20 human ratings of its sentiment intensity on a scale from -4 (extremely
negative) to +4 (extremely positive): `id<TAB>mean rating<TAB>text`. The installed wheel lacks that folder,
so the script downloads the source distribution with pip (`pip download --no-deps --no-binary :all:`) into
`--cache` unless it is there already.

The split: the 4,200 tweets shuffled with random.Random(0); the first 800 are dev, the rest train, of which
the first `--train-limit` (default 1,700; 0: all 3,400) are written. `--scale 0-5` (default) maps the rating
linearly from [-4, 4] onto [0, 5], (y + 4) · 5/8, the range of the 0-5 files issue 23 describes (STS-B's
scale); `--scale raw` keeps the ratings. Labels are rounded to 6 decimals.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
SDIST_FILE = "vaderSentiment-3.3.2.tar.gz"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
CORPUS_FILE = "hutto_ICWSM_2014/tweets_GroundTruth.txt"
DEV_SIZE = 800
TRAIN_LIMIT = 1700
SCALES = {"0-5": lambda y: (y + 4) * 5 / 8, "raw": lambda y: y}


def fetch_sdist(cache: Path) -> Path:
    """The vaderSentiment source distribution in `cache`, downloaded from PyPI with pip when missing."""
    path = cache / SDIST_FILE
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", str(cache)], check=True)
    return path


def read_ratings(sdist: Path) -> list[tuple[str, float]]:
    """(tweet, mean intensity rating in [-4, 4]) in file order, from the archive inside the sdist."""
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(CORPUS_FILE).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            _, rating, tweet = line.split("\t", 2)
            rows.append((tweet.replace("\t", " "), float(rating)))
    return rows


def split_rows(rows: list[tuple[str, float]], train_limit: int = TRAIN_LIMIT, scale: str = "0-5",
               seed: int = 0) -> dict[str, list[tuple[str, float]]]:
    """{"train", "dev"}: shuffled with random.Random(seed), dev the first DEV_SIZE, train the next train_limit
    (0: all), labels mapped by SCALES[scale] and rounded to 6 decimals."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    to_scale = SCALES[scale]
    scaled = [(text, round(to_scale(y), 6)) for text, y in shuffled]
    train = scaled[DEV_SIZE:]
    return {"train": train[:train_limit] if train_limit else train, "dev": scaled[:DEV_SIZE]}


def tsv(rows: list[tuple[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["sentence", "label"])
    writer.writerows(rows)
    return buffer.getvalue()


def write_split(out: Path, splits: dict[str, list[tuple[str, float]]], inputs: tuple[Path, ...] = ()) -> list[Path]:
    """out/train.tsv and out/dev.tsv, each checked by loralab's output policy and written atomically."""
    from loralab.files import check_output_file, write_text

    paths = [Path(out) / f"{name}.tsv" for name in splits]
    for path in paths:
        check_output_file(path, inputs)
    return [write_text(path, tsv(rows)) for path, rows in zip(paths, splits.values())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for train.tsv and dev.tsv")
    parser.add_argument("--scale", choices=sorted(SCALES), default="0-5", help="labels' scale (default 0-5)")
    parser.add_argument("--train-limit", type=int, default=TRAIN_LIMIT, help="training tweets (0: all 3,400)")
    parser.add_argument("--cache", type=Path, default=Path("cache/vader"), help="where the sdist is kept")
    args = parser.parse_args(argv)
    sdist = fetch_sdist(args.cache)
    splits = split_rows(read_ratings(sdist), args.train_limit, args.scale)
    for path in write_split(args.out, splits, (sdist,)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
