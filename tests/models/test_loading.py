"""resolve_model_spec accepts builtins, folders, GGUF files and cached hub ids; load_model/load_tokenizer wrap
from_pretrained."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
import transformers

from loralab.errors import LoraLabError
from loralab.models import (builtin_model_dir, hf_hub_cache, load_model, load_tokenizer, resolve_model_source,
                            resolve_model_spec)


def test_builtin_folder_resolves_to_itself_without_caching(cache):
    assert resolve_model_spec("all-minilm-l6-v2") == builtin_model_dir("all-minilm-l6-v2")
    assert not cache.exists()


def test_model_folder_resolves_to_itself(tmp_path, cache):
    folder = tmp_path / "plain"
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    (folder / "stray.gguf").write_bytes(b"GGUF")  # config.json wins over GGUF files beside it
    assert resolve_model_spec(str(folder)) == folder
    assert resolve_model_spec(folder) == folder  # a Path works too


def test_gguf_file_and_folder_with_one_gguf_resolve_to_the_same_cached_folder(tiny_gguf, cache, conversions):
    gguf_path, _ = tiny_gguf
    from_file = resolve_model_spec(str(gguf_path))
    from_folder = resolve_model_spec(str(gguf_path.parent))
    assert from_file == from_folder and from_file.parent == cache / "gguf"
    assert (from_file / "config.json").is_file()
    assert len(conversions) == 1


def test_home_relative_paths_are_expanded(tiny_gguf, cache, monkeypatch):
    gguf_path, _ = tiny_gguf
    monkeypatch.setenv("HOME", str(gguf_path.parent.parent))
    assert resolve_model_spec(f"~/{gguf_path.parent.name}/{gguf_path.name}").parent == cache / "gguf"


def test_spec_errors(tmp_path, tiny_gguf, cache):
    with pytest.raises(LoraLabError, match="not found: no such file or folder.*smollm2-135m-instruct"):
        resolve_model_spec(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoraLabError, match="holds neither config.json nor a .gguf file"):
        resolve_model_spec(str(empty))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(LoraLabError, match="is not a .gguf file"):
        resolve_model_spec(str(weights))

    gguf_path, _ = tiny_gguf
    shutil.copyfile(gguf_path, gguf_path.parent / "another.Q4_0.gguf")
    with pytest.raises(LoraLabError) as error:
        resolve_model_spec(str(gguf_path.parent))
    message = str(error.value)
    assert "holds 2 .gguf files (another.Q4_0.gguf, tiny-llama.Q8_0.gguf)" in message
    assert "pass one of them" in message and "\n" not in message


@pytest.mark.parametrize("task, class_name", [("causal-lm", "LlamaForCausalLM"), ("base", "LlamaModel")])
def test_load_model_heads(tiny_gguf, cache, token_ids, task, class_name):
    gguf_path, reference = tiny_gguf
    model = load_model(str(gguf_path), task=task).eval()
    assert type(model).__name__ == class_name
    assert model.dtype == torch.float32
    with torch.no_grad():
        if task == "causal-lm":
            torch.testing.assert_close(model(token_ids).logits, reference(token_ids).logits, rtol=0, atol=1e-6)
        else:
            expected = reference.model(token_ids).last_hidden_state
            torch.testing.assert_close(model(token_ids).last_hidden_state, expected, rtol=0, atol=1e-6)


def test_load_model_sequence_classification(tiny_gguf, cache, token_ids):
    gguf_path, reference = tiny_gguf
    model = load_model(str(gguf_path), task="sequence-classification", num_labels=3).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.score.weight.shape == (3, 64)
    assert model.config.pad_token_id == 2  # the GGUF's padding id: batches of several sequences work
    torch.testing.assert_close(model.model.embed_tokens.weight, reference.model.embed_tokens.weight, rtol=0, atol=0)
    with torch.no_grad():
        assert model(token_ids).logits.shape == (2, 3)


def test_load_model_passes_keywords_and_forces_local_files(tiny_gguf, cache, monkeypatch):
    seen = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(folder, **kwargs):
        seen.update(kwargs)
        return original(folder, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_gguf[0]), attn_implementation="eager", local_files_only=False)
    assert seen["local_files_only"] is True
    assert seen["dtype"] == torch.float32
    assert seen["attn_implementation"] == "eager"


def test_load_model_argument_errors(tiny_gguf, cache):
    with pytest.raises(LoraLabError, match="unknown model task 'seq2seq'"):
        load_model(str(tiny_gguf[0]), task="seq2seq")
    with pytest.raises(LoraLabError, match="num_labels=2 only applies to task 'sequence-classification'"):
        load_model(str(tiny_gguf[0]), task="causal-lm", num_labels=2)
    with pytest.raises(LoraLabError, match="num_labels must be at least 1"):
        load_model(str(tiny_gguf[0]), task="sequence-classification", num_labels=0)


def test_load_model_with_an_architecture_that_lacks_the_head(tmp_path, cache):
    folder = tmp_path / "encoder-only"
    transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=8, patch_size=4).save_pretrained(folder)
    with pytest.raises(LoraLabError, match="cannot load .* for task 'causal-lm'"):
        load_model(str(folder), task="causal-lm")


def test_load_tokenizer(tiny_gguf, cache):
    tokenizer = load_tokenizer(str(tiny_gguf[0]))
    # BPE applies merges by rank: " at" becomes "Ġa" + "t" because "Ġ a" (rank 3) beats "a t" (rank 9)
    assert tokenizer(" the at").input_ids == [261, 262, 119]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        "<|im_start|>user\nx<|im_end|>\n"


# --------------------------------------------------------------------------------------------------
# Hub ids from the local Hugging Face cache
# --------------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_snapshot(hub_cache, repo_id: str, source_folder) -> None:
    """Lay `source_folder`'s files out as huggingface_hub's cache does (huggingface_hub/file_download.py):
    models--<org>--<name>/blobs/<sha256> holds the content, snapshots/<commit>/<file> is a relative
    symlink to its blob, refs/main holds the commit hash."""
    import hashlib

    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in sorted(source_folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache that $HF_HUB_CACHE points at, offline mode on."""
    folder = tmp_path / "hf-home" / "hub"
    folder.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture
def tiny_bert_folder(tmp_path):
    """A 2-layer BERT classifier (hidden 32) saved with all-MiniLM-L6-v2's tokenizer."""
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.mark.parametrize("repo_id", ["bert-base-uncased", "some-org/tiny-bert"])
def test_hub_id_loads_model_and_tokenizer_from_the_local_cache(hub_cache, tiny_bert_folder, repo_id):
    from huggingface_hub import scan_cache_dir

    folder, reference, reference_tokenizer = tiny_bert_folder
    write_hub_snapshot(hub_cache, repo_id, folder)
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(hub_cache).repos}  # huggingface_hub reads our layout
    assert [r.commit_hash for r in scanned[repo_id].revisions] == [COMMIT]

    tokenizer = load_tokenizer(repo_id)
    batch = tokenizer(["low rank adaptation", "of large language models"], padding=True, return_tensors="pt")
    assert batch.input_ids.tolist() == reference_tokenizer(["low rank adaptation", "of large language models"],
                                                           padding=True, return_tensors="pt").input_ids.tolist()
    model = load_model(repo_id, task="sequence-classification").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=0)

    source = resolve_model_source(repo_id)
    assert (source.kind, source.name, source.revision, source.gguf_fingerprint) == ("hub", repo_id, COMMIT, None)
    assert source.folder == hub_cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / COMMIT
    assert source.base_model_name_or_path == repo_id


def test_hub_cache_follows_hf_home(tmp_path, monkeypatch, tiny_bert_folder):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    write_hub_snapshot(tmp_path / "elsewhere" / "hub", "org/model", tiny_bert_folder[0])
    assert hf_hub_cache() == tmp_path / "elsewhere" / "hub"
    assert resolve_model_spec("org/model") == tmp_path / "elsewhere" / "hub" / "models--org--model" / "snapshots" / COMMIT


def test_hub_id_missing_from_the_cache_is_one_line_naming_the_cache_and_the_fix(hub_cache, tiny_bert_folder):
    with pytest.raises(LoraLabError) as error:
        load_model("some-org/absent-model")
    message = str(error.value)
    assert "\n" not in message
    assert f"not in the Hugging Face cache {hub_cache}" in message
    assert "download it on a connected machine (`hf download some-org/absent-model`)" in message
    assert "give a model folder or a .gguf file" in message and "all-minilm-l6-v2" in message
    # a ref whose snapshot folder is gone (an interrupted or pruned download) is not found either
    write_hub_snapshot(hub_cache, "org/pruned", tiny_bert_folder[0])
    shutil.rmtree(hub_cache / "models--org--pruned" / "snapshots")
    with pytest.raises(LoraLabError, match="'org/pruned' not found"):
        resolve_model_spec("org/pruned")
    with pytest.raises(LoraLabError, match="no such file or folder, and not a builtin model"):
        resolve_model_spec("not/a/hub/id")  # not spelled like a hub id: the path error


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(hub_cache, tiny_bert_folder, tmp_path, monkeypatch):
    write_hub_snapshot(hub_cache, "tiny-bert", tiny_bert_folder[0])
    monkeypatch.chdir(tmp_path)  # tmp_path/tiny-bert is the saved folder
    source = resolve_model_source("tiny-bert")
    assert (source.kind, source.folder, source.name) == ("folder", tiny_bert_folder[0].relative_to(tmp_path),
                                                         str(tiny_bert_folder[0]))
    assert source.base_model_name_or_path == str(tiny_bert_folder[0])


def test_model_sources_record_how_the_model_was_found(tiny_gguf, cache, hub_cache, tmp_path):
    from loralab.models import gguf_fingerprint

    builtin = resolve_model_source("all-minilm-l6-v2")
    assert (builtin.kind, builtin.name, builtin.folder) == ("builtin", "all-minilm-l6-v2",
                                                             builtin_model_dir("all-minilm-l6-v2"))
    assert builtin.base_model_name_or_path == str(builtin_model_dir("all-minilm-l6-v2").absolute())

    gguf_path, _ = tiny_gguf
    fingerprint = gguf_fingerprint(gguf_path)
    from_file = resolve_model_source(str(gguf_path))
    from_folder = resolve_model_source(str(gguf_path.parent))
    for source in (from_file, from_folder):
        assert (source.kind, source.name, source.gguf_fingerprint) == ("gguf", str(gguf_path), fingerprint)
        assert source.base_model_name_or_path == str(from_file.folder)  # the de-quantized folder
    # a hub repository that ships only a GGUF file is de-quantized like a folder holding one
    write_hub_snapshot(hub_cache, "org/tiny-gguf", gguf_path.parent)
    hub = resolve_model_source("org/tiny-gguf")
    assert (hub.kind, hub.name, hub.revision, hub.gguf_fingerprint) == ("hub", "org/tiny-gguf", COMMIT, fingerprint)
    assert hub.folder == from_file.folder and hub.base_model_name_or_path == str(from_file.folder)


# --------------------------------------------------------------------------------------------------
# Sources found again: what a loaded model came from (source_of_loaded), and a record resolved on this
# machine (source_from_record), as adapters use them
# --------------------------------------------------------------------------------------------------
def test_a_loaded_model_tells_where_its_weights_came_from(tiny_gguf, cache, hub_cache, tiny_bert_folder, tmp_path):
    from loralab.models import source_of_loaded

    gguf_path, _ = tiny_gguf
    from_gguf = resolve_model_source(str(gguf_path))
    for spec in (str(gguf_path), "all-minilm-l6-v2", str(tiny_bert_folder[0])):
        source = resolve_model_source(spec)
        again = source_of_loaded(load_model(spec, task="base").name_or_path)
        assert again.record() == source.record() and again.folder == source.folder
    write_hub_snapshot(hub_cache, "org/tiny-bert", tiny_bert_folder[0])
    hub = resolve_model_source("org/tiny-bert")
    assert source_of_loaded(str(hub.folder)).record() == hub.record() == {
        "kind": "hub", "name": "org/tiny-bert", "gguf_fingerprint": None, "revision": COMMIT}
    assert source_of_loaded("org/tiny-bert").record() == hub.record()          # a hub id transformers loaded
    assert from_gguf.record()["kind"] == "gguf"
    assert source_of_loaded("") is None and source_of_loaded(str(tmp_path / "gone")) is None


def test_a_record_finds_the_same_weights_or_says_why_not(tiny_gguf, cache, hub_cache, tiny_bert_folder, tmp_path,
                                                          make_gguf):
    from loralab.models import source_from_record

    gguf_path, _ = tiny_gguf
    source = resolve_model_source(str(gguf_path))
    record = source.record()
    assert source_from_record(record).folder == source.folder
    moved = tmp_path / "moved.gguf"           # the file gone from where it was: the converted folder still serves
    gguf_path.rename(moved)
    found = source_from_record(record)
    assert (found.kind, found.folder, found.gguf_fingerprint) == ("gguf", source.folder, record["gguf_fingerprint"])
    make_gguf(gguf_path, seed=1)              # a different file at the recorded path is refused
    with pytest.raises(LoraLabError, match="is not the GGUF file the adapter was made for"):
        source_from_record(record)
    with pytest.raises(LoraLabError, match="is not here, and no folder converted from it"):
        source_from_record({**record, "name": str(tmp_path / "x.gguf"), "gguf_fingerprint": "f" * 64})
    # a hub record finds its own commit; another cached commit is used with a warning
    write_hub_snapshot(hub_cache, "org/tiny-bert", tiny_bert_folder[0])
    hub = source_from_record({"kind": "hub", "name": "org/tiny-bert", "revision": COMMIT})
    assert hub.folder.name == COMMIT
    with pytest.warns(UserWarning, match=f"commit {'9' * 40} is not in the cache; using the cached commit {COMMIT}"):
        source_from_record({"kind": "hub", "name": "org/tiny-bert", "revision": "9" * 40})
    with pytest.raises(LoraLabError, match="model folder .* does not exist"):
        source_from_record({"kind": "folder", "name": str(tmp_path / "nowhere")})
    with pytest.raises(LoraLabError, match="is not a loralab model description"):
        source_from_record({"kind": "cloud", "name": "x"})


def test_peft_loads_an_adapter_of_a_gguf_base_from_the_converted_folder(tiny_gguf, cache):
    """A GGUF base is recorded for PEFT as the de-quantized folder's absolute path, which transformers loads."""
    import json

    import loralab
    from loralab.testing import randomize_trainable

    peft = pytest.importorskip("peft")
    gguf_path, _ = tiny_gguf
    model = load_model(str(gguf_path)).eval()
    randomize_trainable(loralab.inject(model, loralab.LoraConfig(r=2, alpha=4)))
    ids = torch.tensor([[5, 70, 100, 262, 3, 9]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    model.save_pretrained(cache / "adapter")
    config = json.loads((cache / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(resolve_model_source(str(gguf_path)).folder.absolute())
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(str(cache / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
    back = loralab.from_pretrained(cache / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
