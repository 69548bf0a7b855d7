"""tests/conftest.py's shared-data check: found where loralab's readers find it ($LORALAB_SHARED_DATA first);
missing data is a skip on a developer's machine and a failure under CI=true, naming what is missing."""
from __future__ import annotations

import pytest

from tests.conftest import require_shared_data


def test_the_variable_decides_the_folder(tmp_path, monkeypatch):
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test.txt").write_text("x\n", encoding="utf-8")
    monkeypatch.setenv("LORALAB_SHARED_DATA", str(tmp_path))
    assert require_shared_data("e2e/test.txt") == tmp_path


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_file_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci, outcome):
    monkeypatch.setenv("LORALAB_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=rf"glue/SST-2/train.tsv not in the shared data folder {tmp_path}$"):
        require_shared_data("glue/SST-2/train.tsv")


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_folder_gives_the_librarys_reason(tmp_path, monkeypatch, ci, outcome):
    monkeypatch.setenv("LORALAB_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"shared data folder .*nowhere \(from \$LORALAB_SHARED_DATA\) does not exist"):
        require_shared_data()
