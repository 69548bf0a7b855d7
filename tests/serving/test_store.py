"""The adapter store (issue 21): a request's model may name an adapter folder under --adapter-root, loaded on
first use, kept in an LRU bounded by --max-adapters / --adapter-memory; --adapter adapters and adapters in
use are never evicted; concurrent first requests share one load; a bad folder fails its own request only;
cold loads are rate-limited. Races are driven by hooks (events at the window), never by timing."""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading

import httpx
import pytest

from tests.serving.over_http import client, sample, wait_until

from loralab.adapters.per_row import row_slot_bytes
from loralab.cli.main import build_parser
from loralab.cli.serve_cmd import settings_from_args
from loralab.errors import LoraLabError
from loralab.serving.api import ApiError
from loralab.serving.settings import ServeSettings
from loralab.serving.store import (OTHER_LABEL, AdapterSize, ColdLoadLimiter, MetricLabels, Recency, adapter_bytes,
                                   check_store_name)

PROMPT = "the cat sat on"


def ask(c: httpx.Client, model: str, prompt: str = PROMPT) -> httpx.Response:
    return c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0})


def text(c: httpx.Client, model: str) -> str:
    r = ask(c, model)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.fixture
def root(lm_files, tmp_path):
    """An --adapter-root: t/x (a copy of adapter a), t/y (b), z (c), w (a), a broken folder and a link out."""
    _, adapters = lm_files
    root = tmp_path / "root"
    for name, source in {"t/x": "a", "t/y": "b", "z": "c", "w": "a"}.items():
        shutil.copytree(adapters[source], root / name)
    shutil.copytree(adapters["a"], root / "bad")
    (root / "bad" / "adapter_config.json").write_text("{not json")
    (root / "out").mkdir()
    os.symlink(adapters["b"] / "adapter_model.safetensors", root / "out" / "adapter_model.safetensors")
    shutil.copy(adapters["b"] / "adapter_config.json", root / "out")
    return root


def serve(start_server, lm_files, root, **kwargs):
    base, adapters = lm_files
    return start_server(model=str(base), served_name="base", adapters={"keep": adapters["a"]}, adapter_root=root,
                        **kwargs)


def resident(service) -> set[str]:
    return set(service.adapters)


def count_reads(monkeypatch, service, hold: dict[str, threading.Event] | None = None) -> list[str]:
    """Record every store read (the worker-thread half of a load); reads of names in `hold` wait for the event."""
    reads, read = [], service._read_stored

    def counted(name):
        reads.append(name)
        if hold and name in hold:
            assert hold[name].wait(30)
        return read(name)
    monkeypatch.setattr(service, "_read_stored", counted)
    return reads


def test_a_request_loads_an_adapter_folder_under_the_root_on_first_use(start_server, lm_files, root):
    server = serve(start_server, lm_files, root)
    service = server.service
    with client(server) as c:
        assert "t/x" not in service.adapters
        assert text(c, "t/x") == text(c, "keep")               # the same folder as --adapter keep: the same answer
        assert text(c, "t/x") == text(c, "keep")               # now a hit
        assert "t/x" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        metrics = c.get("/metrics").text
    assert service.metrics.value("loralab_adapter_loads_total") == 1
    assert service.metrics.value("loralab_adapter_lookups_total", {"result": "miss"}) == 1
    assert service.metrics.value("loralab_adapter_lookups_total", {"result": "hit"}) == 3    # keep, t/x, keep
    assert service.metrics.value("loralab_adapter_hit_ratio") == 0.75
    # the slot stacks as allocated: 9 slots (the first 8 and the base's) of rank 2 on every adapted layer
    assert service.metrics.value("loralab_adapter_slot_bytes") == row_slot_bytes(service.model) == \
        9 * 2 * AdapterSize.of(root / "t/x").slot_per_rank
    assert sample(metrics, "loralab_adapter_loads_total") == 1
    assert sample(metrics, "loralab_adapter_lookups_total", result="miss") == 1
    assert sample(metrics, "loralab_adapter_hit_ratio") == 0.75
    assert sample(metrics, "loralab_adapter_load_seconds_count") == 1
    assert sample(metrics, "loralab_adapter_resident_bytes") == 2 * AdapterSize.of(root / "t/x").at(2)  # tensors + slots
    assert sample(metrics, "loralab_adapter_slot_bytes") == row_slot_bytes(service.model)
    assert sample(metrics, "loralab_adapters_loaded") == 2
    assert sample(metrics, "loralab_adapter_evictions_total") == 0
    assert service.in_use == {}


def test_eviction_follows_least_recent_use_and_spares_the_adapters_given_at_start(start_server, lm_files, root):
    server = serve(start_server, lm_files, root, max_adapters=3)
    service = server.service
    with client(server) as c:
        text(c, "t/x")
        text(c, "t/y")
        text(c, "keep")
        text(c, "t/x")                                          # t/y is now the least recently used store adapter
        text(c, "z")
        assert resident(service) == {"keep", "t/x", "z"}
        text(c, "w")                                            # t/x is older than z; keep is never evicted
        assert resident(service) == {"keep", "z", "w"}
    assert service.metrics.value("loralab_adapter_evictions_total") == 2
    assert service.metrics.value("loralab_adapters_loaded") == 3


def test_a_reloaded_adapter_answers_as_its_first_load(start_server, lm_files, root, monkeypatch):
    server = serve(start_server, lm_files, root, max_adapters=2)
    reads = count_reads(monkeypatch, server.service)
    with client(server) as c:
        first = text(c, "t/y")
        text(c, "z")                                            # evicts t/y
        assert "t/y" not in server.service.adapters
        assert text(c, "t/y") == first
    assert reads == ["t/y", "z", "t/y"]
    assert server.service.metrics.value("loralab_adapter_evictions_total") == 2


def test_an_adapter_in_use_is_never_evicted(start_server, lm_files, root, monkeypatch):
    """keep (given at start) and t/x (a request holds it) fill --max-adapters 2: a load of z gets 429 until
    t/x's request is done, then evicts t/x."""
    server = serve(start_server, lm_files, root, max_adapters=2)
    service = server.service
    in_window, go_on = threading.Event(), threading.Event()
    encode = service.encode_prompts

    def held_encode(prompts, *args):
        if prompts == ["one two three"]:
            in_window.set()
            assert go_on.wait(30)
        return encode(prompts, *args)
    monkeypatch.setattr(service, "encode_prompts", held_encode)
    with client(server) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask, c, "t/x", "one two three")
        assert in_window.wait(30)
        busy = ask(c, "z")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == {
            "message": "all 2 resident adapters are in use or kept loaded (this server's --max-adapters is 2); "
                       "retry shortly", "type": "rate_limit_error", "param": "model", "code": "adapters_busy"}
        assert resident(service) == {"keep", "t/x"} and service.pinned("t/x") == 1
        go_on.set()
        assert held.result().status_code == 200
        assert text(c, "z")
        assert resident(service) == {"keep", "z"}
    assert service.in_use == {}


def test_concurrent_first_requests_for_one_adapter_load_it_once(start_server, lm_files, root, monkeypatch):
    server = serve(start_server, lm_files, root)
    service = server.service
    release = threading.Event()
    reads = count_reads(monkeypatch, service, hold={"t/y": release})
    with client(server) as c, concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(ask, c, "t/y") for _ in range(3)]
        wait_until(lambda: service.pinned("t/y") == 3, "the three requests did not all wait for the load")
        release.set()
        texts = {a.result().json()["choices"][0]["text"] for a in answers}
    assert reads == ["t/y"] and len(texts) == 1
    assert service.metrics.value("loralab_adapter_loads_total") == 1
    assert service.metrics.value("loralab_adapter_lookups_total", {"result": "miss"}) == 3


def test_a_bad_folder_fails_its_own_request_while_another_adapter_is_served(start_server, lm_files, root,
                                                                             monkeypatch):
    server = serve(start_server, lm_files, root)
    service = server.service
    release = threading.Event()
    count_reads(monkeypatch, service, hold={"bad": release})
    with client(server) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        bad = pool.submit(ask, c, "bad")
        wait_until(lambda: service.pinned("bad") == 1, "the bad request did not start its load")
        assert text(c, "t/x")                                   # served while the bad folder's load is under way
        release.set()
        r = bad.result()
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "model" and error["message"].startswith("adapter 'bad': ")
    assert "adapter_config.json" in error["message"]
    assert resident(service) == {"keep", "t/x"} and service.in_use == {}
    assert service.metrics.value("loralab_adapter_load_failures_total") == 1


@pytest.mark.parametrize("name", ["../t/x", "/etc", "t//x", "t/./x", "t/x/", "~root", "t\\x", "a\x00b"])
def test_a_name_that_is_not_a_safe_relative_path_is_refused(start_server, lm_files, root, name):
    server = serve(start_server, lm_files, root)
    with client(server) as c:
        r = ask(c, name)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "is neither this server's model, a loaded adapter nor a safe relative path" in r.json()["error"]["message"]
    assert server.service.in_use == {}


def test_missing_folders_and_links_out_of_the_root(start_server, lm_files, root):
    server = serve(start_server, lm_files, root)
    with client(server) as c:
        missing = ask(c, "nowhere")
        out = ask(c, "out")
    assert missing.status_code == 404
    assert out.status_code == 403 and out.json()["error"]["param"] == "model"
    assert "adapter_model.safetensors in 'out' is a symlink to" in out.json()["error"]["message"]
    assert server.service.in_use == {}


def test_without_an_adapter_root_unknown_names_stay_404(start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters={"keep": adapters["a"]})
    with client(server) as c:
        assert ask(c, "t/x").status_code == 404
        assert ask(c, "../x").status_code == 404


def test_cold_loads_over_the_rate_get_429_with_retry_after(start_server, lm_files, root):
    server = serve(start_server, lm_files, root, max_cold_loads_per_second=0.001)
    with client(server) as c:
        assert text(c, "t/x")                                   # the bucket's one token
        r = ask(c, "z")
        assert text(c, "t/x")                                   # resident: no cold load, no limit
    assert r.status_code == 429 and r.json()["error"]["code"] == "cold_load_rate"
    assert 0 < int(r.headers["retry-after"]) <= 1000
    assert "--max-cold-loads-per-second is 0.001" in r.json()["error"]["message"]
    assert "z" not in server.service.adapters and server.service.in_use == {}


def test_adapter_memory_bounds_the_resident_bytes(start_server, lm_files, root):
    # every adapter's slots are counted at the stacks' rank: 8 once z (r = 8) is loaded
    keep, x, z = (AdapterSize.of(root / name).at(8) for name in ("w", "t/x", "z"))
    server = serve(start_server, lm_files, root, adapter_memory=keep + x + z - 1)
    with client(server) as c:
        text(c, "t/x")
        text(c, "z")                                            # both do not fit beside keep: t/x goes
        assert resident(server.service) == {"keep", "z"}
    small = serve(start_server, lm_files, root, adapter_memory=keep + x)
    with client(small) as c:
        r = ask(c, "z")
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        f"adapter 'z' takes {z} bytes (its tensors and its slots at rank 8); with the adapters that stay loaded "
        f"({keep} bytes) that is above this server's --adapter-memory {keep + x}")


def test_adapter_sizes_count_tensors_and_rank_padded_slots(root):
    x, z = AdapterSize.of(root / "t/x"), AdapterSize.of(root / "z")     # r = 2 and r = 8 on q_proj and v_proj
    assert x.tensors == adapter_bytes(root / "t/x") and z.tensors == 4 * x.tensors
    assert x.slot_per_rank == z.slot_per_rank == x.tensors // 2           # A (r, k) + B (d, r): r·(k + d) values
    assert z.at(8) == z.tensors + 8 * z.slot_per_rank and AdapterSize.of(root / "missing").at(8) == 0


def test_metric_labels_of_store_adapters_are_bounded(start_server, lm_files, root):
    server = serve(start_server, lm_files, root, max_adapters=2)
    with client(server) as c:
        for name in ("t/x", "z", "w", "keep"):
            text(c, name)
        metrics = c.get("/metrics").text
    models = {line.split('model="')[1].split('"')[0] for line in metrics.splitlines()
              if line.startswith("loralab_requests_total")}
    assert models == {"t/x", "z", OTHER_LABEL, "keep"}         # --max-adapters 2 store labels, then "other"


# ---- the parts without a model ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x", "t/x", "customer-1/v2.0", "a b"])
def test_safe_store_names(name):
    check_store_name(name)


def test_the_cold_load_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = ColdLoadLimiter(2.0, clock=lambda: now[0])
    limiter.take()
    limiter.take()
    with pytest.raises(ApiError) as empty:
        limiter.take()
    assert empty.value.status == 429 and empty.value.headers == {"Retry-After": "1"}
    now[0] = 0.5                                                # one token back
    limiter.take()
    with pytest.raises(ApiError):
        limiter.take()


def test_recency_and_labels():
    lru = Recency()
    for name in ("a", "b", "a", "c"):
        lru.touch(name)
    lru.forget("c")
    assert lru.oldest_first() == ["b", "a"]
    labels = MetricLabels(["base"], limit=1)
    assert [labels.label(m) for m in ("base", "x", "y", "x")] == ["base", "x", OTHER_LABEL, "x"]


@pytest.mark.parametrize("field, value, message", [
    ("adapter_memory", 0, "adapter-memory must be a positive number of bytes, got 0"),
    ("max_cold_loads_per_second", 0, "max-cold-loads-per-second must be a finite number above 0, got 0"),
    ("max_cold_loads_per_second", float("inf"), "max-cold-loads-per-second must be a finite number above 0, got inf"),
])
def test_store_settings_are_checked(field, value, message):
    with pytest.raises(LoraLabError) as error:
        ServeSettings(model="m", **{field: value})
    assert str(error.value) == message


def test_the_default_keeps_more_adapters_resident_and_the_flags_become_settings(tmp_path):
    assert ServeSettings(model="m").max_adapters == 64
    args = build_parser().parse_args(["serve", "--model", "m", "--adapter-root", str(tmp_path), "--max-adapters",
                                      "1000", "--adapter-memory", "5000000", "--max-cold-loads-per-second", "2.5"])
    settings = settings_from_args(args)
    assert (settings.max_adapters, settings.adapter_memory, settings.max_cold_loads_per_second) == (1000, 5000000, 2.5)
