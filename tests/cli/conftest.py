"""Fixtures of the CLI tests: `inputs`, a tiny BERT with SST-2 slices written once per test module (see
tests/cli/train_runs.py)."""
import pytest

from tests.cli.train_runs import write_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))
