"""Service: admission pins the adapter a request names atomically with the lookup, so an unload can never
delete it under an admitted request (the race of issue 18, reproduced with a hook in the window between
lookup and tokenisation), and hot loading refuses adapter folders with symlinks out of --adapter-root."""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading

import httpx
import pytest

from tests.serving.over_http import client, stream_lines, streamed_text, wait_until

from loralab.serving.api import ApiError


def test_pin_holds_the_adapter_and_release_is_idempotent(start_server, lm_files):
    base, adapters = lm_files
    service = start_server(model=str(base), served_name="base", adapters=adapters).service
    with service.pin("b") as pin:
        second = service.pin("b")
        assert (pin.adapter, pin.info.rank, service.pinned("b")) == ("b", 4, 2)
        second.release()
        second.release()                                 # every exit path may release: counted once
        assert service.pinned("b") == 1
    pin.release()
    assert service.pinned("b") == 0 and service.in_use == {}
    base_pin = service.pin("base")
    assert (base_pin.adapter, base_pin.info) == (None, None)
    base_pin.release()
    with pytest.raises(ApiError) as missing:
        service.pin("nope")
    assert missing.value.status == 404 and service.in_use == {}


def test_an_unload_inside_the_admission_window_waits_for_the_admitted_request(start_server, lm_files, monkeypatch):
    """Issue 18's race: a request for b is admitted and held between its lookup and its tokenisation while
    b is unloaded; a stream on a shares the batch. The request finishes (200), a's stream gets every token
    and [DONE], and the unload completes after the request."""
    base, adapters = lm_files
    server = start_server(model=str(base), served_name="base", adapters=adapters)
    service, engine = server.service, server.service.engine
    in_window, go_on, model_thread = threading.Event(), threading.Event(), threading.Event()
    encode = service.encode_prompts

    def held_encode(prompts, *args):
        if prompts == ["one two three"]:                 # b's request: admitted, not yet tokenised
            in_window.set()
            assert go_on.wait(30)
        return encode(prompts, *args)
    with client(server) as c:
        alone = streamed_text(stream_lines(c, "a", "the cat", 12))
        b_alone = c.post("/v1/completions", json={"model": "b", "prompt": "one two three", "max_tokens": 4,
                                                  "temperature": 0}).json()["choices"][0]["text"]
        monkeypatch.setattr(service, "encode_prompts", held_encode)
        engine.post(model_thread.wait)                   # a's and b's rows join one batch when it goes on
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            stream_a = pool.submit(stream_lines, c, "a", "the cat", 12)
            request_b = pool.submit(c.post, "/v1/completions", json={"model": "b", "prompt": "one two three",
                                                                     "max_tokens": 4, "temperature": 0})
            assert in_window.wait(30)
            unload = pool.submit(c.post, "/v1/unload_lora_adapter", json={"lora_name": "b"})
            wait_until(lambda: "b" in service.unloading, "the unload did not start")
            assert c.post("/v1/completions", json={"model": "b", "prompt": "x"}).status_code == 404   # not admitted
            go_on.set()
            wait_until(lambda: engine.queued == 2, "the two requests did not reach the engine")
            model_thread.set()
            answer = request_b.result()
            lines = stream_a.result()
            assert unload.result().json() == {"status": "unloaded", "lora_name": "b"}
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == b_alone
    assert lines[-1] == "data: [DONE]" and streamed_text(lines) == alone
    assert sum(line.startswith("data: {") for line in lines) == 12 + 1          # every token and the usage
    assert "b" not in service.adapters and service.in_use == {}


def test_a_classify_request_admitted_before_an_unload_keeps_its_adapter_and_labels(start_server, classifier_files,
                                                                                     monkeypatch):
    """The classifier side of the race (it used to end in KeyError in Service.using): the admitted request
    gets its adapter's own labels, the other adapter's request in the same batch is exact."""
    base, adapters = classifier_files
    server = start_server(adapters=adapters, max_batch_size=8)
    service, engine = server.service, server.service.engine
    in_window, go_on, model_thread = threading.Event(), threading.Event(), threading.Event()
    encode = service.encode_inputs

    def held_encode(pin, inputs):
        if pin.adapter == "topic":
            in_window.set()
            assert go_on.wait(30)
        return encode(pin, inputs)
    texts = ["the cat sat on the mat", "red and blue"]
    with client(server) as c:
        expected = {m: c.post("/v1/classify", json={"model": m, "input": texts}).json()["data"] for m in ("pos", "topic")}
        monkeypatch.setattr(service, "encode_inputs", held_encode)
        engine.post(model_thread.wait)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            pos = pool.submit(c.post, "/v1/classify", json={"model": "pos", "input": texts})
            topic = pool.submit(c.post, "/v1/classify", json={"model": "topic", "input": texts})
            assert in_window.wait(30)
            unload = pool.submit(c.post, "/v1/unload_lora_adapter", json={"lora_name": "topic"})
            wait_until(lambda: "topic" in service.unloading, "the unload did not start")
            go_on.set()
            wait_until(lambda: engine.queued == 4, "the two requests did not reach the engine")
            model_thread.set()
            answers = {"pos": pos.result(), "topic": topic.result()}
            assert unload.result().json()["status"] == "unloaded"
    for name, answer in answers.items():
        assert answer.status_code == 200, answer.text
        assert [item["label"] for item in answer.json()["data"]] == [item["label"] for item in expected[name]]
        for got, want in zip(answer.json()["data"], expected[name]):
            assert got["probs"] == pytest.approx(want["probs"], abs=1e-5)
    assert list(answers["topic"].json()["data"][0]["probs"]) == ["animals", "colours", "numbers"]
    assert service.in_use == {} and "topic" not in service.adapters


@pytest.fixture
def root_with_links(lm_files, tmp_path):
    """An --adapter-root holding copies of adapter a, and a folder outside it."""
    _, adapters = lm_files
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    for name in ("plain", "weights-out", "deep-out", "linked-inside", "loop"):
        shutil.copytree(adapters["a"], root / name)
    shutil.copy(adapters["a"] / "adapter_model.safetensors", outside / "weights.safetensors")
    (root / "weights-out" / "adapter_model.safetensors").unlink()
    os.symlink(outside / "weights.safetensors", root / "weights-out" / "adapter_model.safetensors")
    (root / "deep-out" / "extra" / "deeper").mkdir(parents=True)
    os.symlink(outside, root / "deep-out" / "extra" / "deeper" / "elsewhere")
    os.symlink(root / "plain", root / "linked-inside" / "sibling")            # a link that stays inside the root
    os.symlink("itself", root / "loop" / "itself")
    return root, outside


def test_hot_loading_refuses_symlinks_out_of_the_root_at_any_level(start_server, lm_files, root_with_links):
    base, adapters = lm_files
    root, outside = root_with_links
    server = start_server(model=str(base), adapters={"a": adapters["a"]}, adapter_root=root, max_adapters=8)
    with client(server) as c:
        def load(name: str, folder: str) -> httpx.Response:
            return c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": folder})
        for folder, entry, target in (("weights-out", "adapter_model.safetensors", outside / "weights.safetensors"),
                                      ("deep-out", "extra/deeper/elsewhere", outside)):
            r = load(folder, folder)
            assert r.status_code == 403, r.text
            assert r.json()["error"] == {
                "message": f"{entry} in {folder!r} is a symlink to {target}, outside the server's --adapter-root",
                "type": "permission_error", "param": "lora_path", "code": "forbidden"}
        loop = load("loop", "loop")
        assert loop.status_code == 400 and loop.json()["error"]["message"] == "itself in 'loop' is a symlink loop"
        assert load("plain", "plain").status_code == 200
        assert load("linked", "linked-inside").status_code == 200
        assert [m["id"] for m in c.get("/v1/models").json()["data"]][1:] == ["a", "plain", "linked"]


@pytest.mark.parametrize("config, weights, cause", [
    ("[]", b"x", "adapter_config.json must hold a JSON object, found a list"),
    (None, None, "does not exist"),
    ('{"r": 2}', None, "has no adapter_model.safetensors"),
])
def test_hot_loading_a_bad_folder_names_the_same_cause_as_the_cli(tmp_path, config, weights, cause):
    from loralab.serving.service import describe_adapter

    folder = tmp_path / "adapter"
    if config is not None:
        folder.mkdir()
        (folder / "adapter_config.json").write_text(config)
    if weights is not None:
        (folder / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(ApiError) as caught:
        describe_adapter("x", folder, "causal-lm", max_rank=64)
    assert caught.value.status == 400 and caught.value.param == "lora_path"
    assert caught.value.message.startswith("adapter 'x': ") and cause in caught.value.message


# -- an adapter put on the served model between two steps --------------------------------------------------------
def test_ready_for_serving_leaves_the_model_as_model_eval_would(tmp_path):
    import loralab
    from loralab.adapters.per_row import reserve_row_slots, row_slot_bytes, write_row_slots
    from loralab.formats.peft import read_adapter
    from loralab.serving.service import insert_for_serving, ready_for_serving
    from loralab.testing import fill_adapter, tiny_model

    def flags(model):
        return [(n, m.training) for n, m in model.named_modules()]

    model = tiny_model("llama")
    loralab.inject(model, loralab.LoraConfig(r=2, targets=["q_proj"], dropout=0.1), adapter="a")
    loralab.inject(model, loralab.LoraConfig(r=4, targets="all-linear", dropout=0.1, modules_to_save=["lm_head"]),
                   adapter="b")
    fill_adapter(model, "b", seed=1)
    loralab.save_adapter(model, tmp_path / "b", adapter="b")
    file = read_adapter(tmp_path / "b")
    model.eval()
    reserve_row_slots(model, 8)
    twin = tiny_model("llama")
    loralab.inject(twin, loralab.LoraConfig(r=2, targets=["q_proj"], dropout=0.1), adapter="a")
    loralab.load_adapter(twin, tmp_path / "b", adapter="b")
    twin.eval()
    reserve_row_slots(twin, 8)

    slot_bytes = insert_for_serving(model, file, "c")            # new wrappers (k, o, mlp, head) and new factors
    loralab.load_adapter(twin, tmp_path / "b", adapter="c")
    twin.eval()
    write_row_slots(twin, ["c"])
    assert flags(model) == flags(twin) and not any(training for _, training in flags(model))
    assert slot_bytes == row_slot_bytes(model) == row_slot_bytes(twin) > 0

    model.train()                                                # not the served state: the whole model is switched
    ready_for_serving(model, "c")
    assert not any(m.training for m in model.modules())
    assert row_slot_bytes(model) == slot_bytes
