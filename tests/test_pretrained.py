"""loralab.from_pretrained and PEFT folders wherever an adapter folder is accepted: the base found from loralab's
record or PEFT's base_model_name_or_path, task from task_type, labels from id2label; and PEFT's AutoPeftModel
loading adapters loralab writes (one from `loralab train` included) with the same logits."""
from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.cli.main import main
from loralab.testing import randomize_trainable as randomize, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

# The tiny model/data builders live with the training tests; load them by path (tests are not a package).
_spec = importlib.util.spec_from_file_location("training_fixtures", Path(__file__).parent / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def base_dir(tmp_path):
    """A tiny BERT classifier folder whose config names its three labels."""
    tiny_model("bert", id2label=LABELS, label2id={v: k for k, v in LABELS.items()}).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _peft_classifier(base_dir, folder, **config):
    model = peft.get_peft_model(transformers.AutoModelForSequenceClassification.from_pretrained(base_dir),
                                peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query"],
                                                **config))
    randomize(model)
    model.eval()
    model.save_pretrained(str(folder))
    return model


def test_from_pretrained_loads_a_peft_classifier_with_its_labels_and_logits(base_dir, tmp_path):
    theirs = _peft_classifier(base_dir, tmp_path / "peft")
    assert not (tmp_path / "peft" / "labels.json").exists()
    model = loralab.from_pretrained(tmp_path / "peft")
    inputs = tiny_inputs(model)
    torch.testing.assert_close(logits(model, inputs), logits(theirs, inputs), rtol=1e-5, atol=1e-6)
    assert model.config.id2label == LABELS and not model.training
    assert loralab.active_adapter(model) == "default"
    from loralab.pretrained import adapter_task_and_labels

    task, labels = adapter_task_and_labels(tmp_path / "peft", base_folder=base_dir)
    assert (task, labels.names) == ("classification", tuple(LABELS.values()))


def test_from_pretrained_finds_the_base_from_loralab_record_first_then_peft_and_says_what_it_tried(base_dir, tmp_path):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    loralab.inject(model, LoraConfig(r=2, targets=["query", "value"], task_type="SEQ_CLS"))
    randomize(model)
    inputs = tiny_inputs(model)
    expected = logits(model, inputs)
    folder = loralab.save_adapter(model, tmp_path / "ad")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "org/not-cached"}))
    torch.testing.assert_close(logits(loralab.from_pretrained(folder), inputs), expected)     # loralab's record wins
    moved = shutil.move(base_dir, tmp_path / "moved")
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(moved)}))
    torch.testing.assert_close(logits(loralab.from_pretrained(folder), inputs), expected)     # then PEFT's field
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "org/not-cached"}))
    with pytest.raises(LoraLabError) as error:
        loralab.from_pretrained(folder)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot find the base model of adapter {folder}; tried ")
    assert f"loralab's record (folder '{base_dir.absolute()}'): model folder {base_dir.absolute()} does not exist" \
        in message and "base_model_name_or_path 'org/not-cached': model 'org/not-cached' not found" in message
    assert message.endswith("pass the base model (model=... or --model)")
    torch.testing.assert_close(logits(loralab.from_pretrained(folder, model=moved), inputs), expected)


def test_peft_regression_and_causal_lm_adapters_get_their_task(base_dir, tmp_path):
    from loralab.pretrained import adapter_task_and_labels

    regression = peft.get_peft_model(transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, ignore_mismatched_sizes=True), peft.LoraConfig(task_type="SEQ_CLS", r=2,
                                                                                target_modules=["query"]))
    regression.save_pretrained(str(tmp_path / "reg"))
    task, labels = adapter_task_and_labels(tmp_path / "reg", base_folder=base_dir)
    assert task == "regression" and labels.regression
    llama = fixtures.write_tiny_causal(tmp_path / "llama", "llama")
    causal = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(llama),
                                 peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    randomize(causal)
    causal.eval()
    causal.save_pretrained(str(tmp_path / "causal"))
    assert adapter_task_and_labels(tmp_path / "causal") == ("causal-lm", None)
    model = loralab.from_pretrained(tmp_path / "causal")
    assert isinstance(model, transformers.LlamaForCausalLM)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    torch.testing.assert_close(logits(model, inputs), logits(causal, inputs), rtol=1e-5, atol=1e-6)
    token_cls = tmp_path / "tok"
    shutil.copytree(tmp_path / "causal", token_cls)
    (token_cls / "adapter_config.json").write_text(json.dumps({**json.loads(
        (token_cls / "adapter_config.json").read_text()), "task_type": "TOKEN_CLS"}))
    with pytest.raises(LoraLabError, match="is a PEFT TOKEN_CLS adapter; loralab's tasks cover task_type"):
        adapter_task_and_labels(token_cls)


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A `loralab train` run on a tiny BERT folder, its LoRA settings given as the adapter_config.json of a PEFT
    adapter (--lora-config): its adapter/ folder and the base folder."""
    root = tmp_path_factory.mktemp("train")
    bert = fixtures.write_tiny_bert(root / "bert")
    data = fixtures.write_sst2_slice(root, 0, 32, "train.tsv")
    settings = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                               rank_pattern={r"layer\.1\..*value": 2})
    peft.get_peft_model(transformers.AutoModelForSequenceClassification.from_pretrained(bert), settings) \
        .save_pretrained(str(root / "peft"))
    code = main(["train", "--model", str(bert), "--train-file", str(data), "--max-length", "16", "--batch-size", "8",
                 "--max-steps", "3", "--lr", "1e-2", "--threads", "1", "--no-progress", "--output", str(root / "run"),
                 "--lora-config", str(root / "peft" / "adapter_config.json")])
    assert code == 0
    return root / "run" / "adapter", bert


def test_auto_peft_model_loads_a_loralab_train_adapter_with_the_same_logits(train_run):
    adapter, bert = train_run
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == bert.resolve()
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    # the PEFT settings given to --lora-config: r 4, alpha 8, value of layer 1 at rank 2
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert config["rank_pattern"] == {"bert.encoder.layer.1.attention.self.value": 2}
    ours = loralab.from_pretrained(adapter)
    theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(adapter)).eval()
    tokenizer = loralab.models.load_tokenizer(ours.name_or_path)
    batch = tokenizer(["a wonderful , moving film", "the worst movie of the year"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, rtol=1e-5, atol=1e-6)
    assert (adapter / "README.md").is_file()
    assert "AutoPeftModelForSequenceClassification" in (adapter / "README.md").read_text()


def test_loralab_commands_take_a_peft_folder(tmp_path, capsys, monkeypatch):
    """predict labels with id2label's names, merge and analyze: a folder PEFT wrote, no loralab files in it."""
    bert = fixtures.write_tiny_bert(tmp_path / "bert")
    config = transformers.AutoConfig.from_pretrained(bert)
    config.id2label, config.label2id = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
    config.save_pretrained(bert)
    theirs = _peft_classifier(bert, tmp_path / "peft")
    monkeypatch.setattr("sys.stdin", io.StringIO("a wonderful , moving film\nthe worst movie of the year\n"))
    assert main(["predict", "--adapter", str(tmp_path / "peft"), "--threads", "1"]) == 0
    predicted = capsys.readouterr().out.split()
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert)
    batch = tokenizer(["a wonderful , moving film", "the worst movie of the year"], padding=True, return_tensors="pt")
    assert predicted == [config.id2label[i] for i in logits(theirs, batch).argmax(-1).tolist()]
    assert main(["merge", str(bert), str(tmp_path / "peft"), str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, batch), logits(theirs, batch), rtol=1e-5, atol=1e-5)
    from loralab.analysis.report import analyze_adapters

    report = analyze_adapters([str(tmp_path / "peft")])
    assert len(report.adapters) == 1
