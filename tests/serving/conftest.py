"""Fixtures for the server tests: a tiny LLaMA and a tiny BERT classifier saved with word-level tokenizers,
adapter folders for them (random non-zero factors, written as `loralab train` writes them), and a server
running in-process on a free loopback port."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import loralab
from loralab.testing import fill_adapter

WORDS = ("the a cat dog sat ran on mat rug big small red blue and then it was good bad very not hello world "
         "what is your name my low rank matrix adapter model token fast slow yes no one two three four five").split()
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </turn> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def word_tokenizer():
    """Word-level fast tokenizer: specials, the chat tags, then WORDS; EOS '</s>'; a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for word in ["<pad>", "<s>", "</s>", "<unk>", "<system>", "<user>", "<assistant>", "</turn>", *WORDS]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_adapters(model, root: Path, base: Path, configs: dict, task: str, labels: list[str] | None = None,
                   seed: int = 0) -> dict[str, Path]:
    """Inject, randomise and save each adapter under root/NAME as `loralab train` lays it out."""
    from loralab.data.labels import LabelMap

    paths = {}
    for i, (name, config) in enumerate(configs.items()):
        loralab.inject(model, config, adapter=name)
        fill_adapter(model, name, seed=seed + i, std=0.4)
        path = root / name
        loralab.save_adapter(model, path, adapter=name)
        (path / "loralab-task.json").write_text(json.dumps({"model": str(base), "task": task}))
        if labels is not None:
            LabelMap(tuple(labels)).save(path / "labels.json")
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def lm_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(base folder, {adapter: folder}) for a tiny LLaMA; adapters a (r=2), b (r=4, all-linear), c (r=8)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("lm")
    tokenizer = word_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=96, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    configs = {"a": loralab.LoraConfig(r=2, alpha=4), "b": loralab.LoraConfig(r=4, targets="all-linear"),
               "c": loralab.LoraConfig(r=8, alpha=8)}
    return base, write_adapters(model, root / "adapters", base, configs, "causal-lm")


@pytest.fixture(scope="session")
def classifier_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(base folder, {adapter: folder}) for a tiny 3-label BERT; adapters pos and topic, own heads and labels."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("cls")
    tokenizer = word_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=3, pad_token_id=0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapters = write_adapters(model, root / "adapters", base,
                              {"pos": loralab.LoraConfig(r=2, modules_to_save=["classifier"])}, "classification",
                              labels=["negative", "neutral", "positive"], seed=5)
    adapters |= write_adapters(model, root / "adapters", base,
                               {"topic": loralab.LoraConfig(r=4, modules_to_save=["classifier"])}, "classification",
                               labels=["animals", "colours", "numbers"], seed=7)
    return base, adapters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A `loralab serve` app under uvicorn in a background thread; `url`, `service`, `app`, `stop()`."""

    def __init__(self, settings):
        from loralab.serving.server import make_server

        self.server, self.service = make_server(settings, log_level="error")
        self.app = self.server.config.app
        self.url = f"http://{settings.host}:{settings.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.service.stop(30)


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    """start_server(**ServeSettings fields) -> a RunningServer on a free port, stopped after the test."""
    from loralab.serving.settings import ServeSettings
    from loralab.testing import one_thread

    running = []
    with one_thread():
        def start(**kwargs) -> RunningServer:
            server = RunningServer(ServeSettings(port=free_port(), **kwargs))
            running.append(server)
            return server
        yield start
        for server in running:
            server.stop()
