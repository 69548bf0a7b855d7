"""`loralab train` at the limits checked before work (issue 18): a rank that would need terabytes, a scaling
that overflows, config files nested too deep or containing themselves, booleans for integers, a disk filling
up mid-run. One line, exit 2, the same for --print-config as for a run; nothing left behind but what was
complete. Tiny random-init BERT, SST-2 slices, runs of a few steps."""
from __future__ import annotations


import pytest

from tests.cli.train_runs import train_argv as _argv

from loralab.cli.main import main


def _error(argv, capsys) -> str:
    """The one error line of a command that must exit 2 (transformers' loading bars and the libraries'
    one-line warnings aside): no traceback, no second error line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and "it/s]" not in line and not line.startswith("loralab train: warning: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("loralab train: error: "), err
    return lines[0].removeprefix("loralab train: error: ")


def test_a_rank_of_a_billion_is_one_line_before_allocating(inputs, tmp_path, capsys):
    line = _error(_argv(inputs, tmp_path / "run", "--r", "1000000000"), capsys)
    assert line.startswith("LoRA rank r=1000000000 needs 3,173.9 GiB for the factors of 13 layers, more than the ")  # all linear layers
    assert line.endswith(" of memory available on cpu; choose a smaller r (below min(d, k) = 32 for "
                         "bert.encoder.layer.0.attention.self.query keeps ΔW low-rank)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, line", [
    ("lora.alpha=1e30", "alpha=1e+30 with r=8 scales the adapter's output by alpha/r = 1.25e+29, above the 10000 "
                        "loralab accepts (larger scalings overflow the activations into NaN); use alpha <= 80000"),
    ("lora.alpha=.nan", "alpha must be a positive number, got nan"),
    ("lora.alpha=.inf", "alpha must be finite, got inf"),
    ("seed=true", "seed must be an integer, got True"),
    ("lora.r=true", "r must be a positive integer, got True"),
    ("lora.targets=[[query], value]", "targets: rules are non-empty strings (module names or 're:REGEX'), got "
                                      "['query']"),
])
def test_bad_values_are_the_same_line_for_a_run_and_for_print_config(inputs, tmp_path, capsys, override, line):
    assert _error(_argv(inputs, tmp_path / "run", override), capsys) == line
    assert _error(_argv(inputs, tmp_path / "run", override, "--print-config"), capsys) == line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, line", [
    ("lora:\n  targets: &x [query, *x]\n", "the alias *x (line 2) is used inside the anchor &x it refers to, which "
                                           "would make a structure that contains itself; write the values out instead"),
    ("lora:\n  targets: [[query], value]\n", None),
    ("lr: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep (line 1); a run config needs a few "
                                              "levels (settings, sections, lists)"),
])
def test_config_files_a_run_refuses_are_refused_by_print_config_with_the_same_line(inputs, tmp_path, capsys,
                                                                                   text, line):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    expected = f"{config}: {line}" if line else ("targets: rules are non-empty strings (module names or "
                                                 "'re:REGEX'), got ['query']")
    assert _error(["train", "--config", str(config), "--print-config"], capsys) == expected
    assert _error(_argv(inputs, tmp_path / "run", "--config", str(config)), capsys) == expected
    assert not (tmp_path / "run").exists()


def _disk_full_at(step_name: str, monkeypatch):
    """safetensors failing as it does when the disk fills, for the files of one checkpoint."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if step_name in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_a_disk_filling_mid_run_is_one_line_and_the_previous_checkpoint_resumes(inputs, tmp_path, capsys,
                                                                                monkeypatch):
    output = tmp_path / "run"
    _disk_full_at("step-000006", monkeypatch)
    assert _error(_argv(inputs, output), capsys) == (
        f"no space left on device while writing the checkpoint step-000006 at step 6; training stopped and its last "
        f"complete checkpoint {output / 'checkpoints' / 'step-000003'} is intact. Free some space, then continue "
        f"with `loralab train --output {output} --resume`")
    assert (output / "checkpoints" / "LATEST").read_text() == "step-000003\n"
    assert sorted(p.name for p in (output / "checkpoints").iterdir() if p.name != ".loralab.lock") == \
        ["LATEST", "step-000003"]
    monkeypatch.undo()
    assert main(["train", "--output", str(output), "--resume"]) == 0
    assert "(step 3 of 6)" in capsys.readouterr().out


def test_a_disk_full_before_the_first_checkpoint_says_nothing_was_kept(inputs, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    _disk_full_at("step-000003", monkeypatch)
    assert _error(_argv(inputs, output), capsys) == (
        "no space left on device while writing the checkpoint step-000003 at step 3; training stopped and no "
        "checkpoint was complete, so nothing was kept; free some space and start again")
    assert not output.exists()
