"""benchmarks/regression_data.py on a fake vaderSentiment sdist of the same layout: the ratings read from the
archive inside the archive, the seeded split, the 0-5 mapping, and files loralab reads back as regression."""
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import regression_data as rd  # noqa: E402


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def sdist(tmp_path):
    lines = [f"{i}\t{(i % 9) - 4}\ttweet number {i} with a \"quote\"\tand a tab" for i in range(1, 1001)]
    inner = _tar({rd.CORPUS_FILE: ("\r\n".join(lines) + "\r\n").encode()})
    path = tmp_path / rd.SDIST_FILE
    path.write_bytes(_tar({rd.INNER_ARCHIVE: inner}))
    return path


def test_ratings_split_and_scale(sdist, tmp_path):
    rows = rd.read_ratings(sdist)
    assert len(rows) == 1000 and rows[0] == ('tweet number 1 with a "quote" and a tab', -3.0)
    assert rd.fetch_sdist(tmp_path) == sdist             # already in the cache: no download
    splits = rd.split_rows(rows, train_limit=150)
    assert [len(s) for s in splits.values()] == [150, rd.DEV_SIZE]
    assert {y for _, y in splits["dev"]} <= {(k + 4) * 5 / 8 for k in range(-4, 5)}
    assert min(y for _, y in splits["dev"]) == 0.0 and max(y for _, y in splits["dev"]) == 5.0
    assert not {t for t, _ in splits["train"]} & {t for t, _ in splits["dev"]}
    assert rd.split_rows(rows, 150) == splits and rd.split_rows(rows, 150, seed=1) != splits
    raw = rd.split_rows(rows, 0, scale="raw")
    assert len(raw["train"]) == 200 and [t for t, _ in raw["dev"]] == [t for t, _ in splits["dev"]]


def test_written_files_read_back_as_regression_examples(sdist, tmp_path):
    from loralab.data.readers import ReadOptions, read_examples

    assert rd.main([str(tmp_path / "out"), "--cache", str(tmp_path), "--train-limit", "100"]) == 0
    train = read_examples(tmp_path / "out" / "train.tsv", ReadOptions())
    expected = rd.split_rows(rd.read_ratings(sdist), 100)["train"]
    assert [(e.text, float(e.label)) for e in train] == expected
