"""`loralab serve` on Ray Serve (loralab.serving.ray_serve): a local Ray cluster started by the test, 2
replicas of a tiny LLaMA server behind the router; requests for 20 adapters under --adapter-root all answered,
each equal to the single-process server's answer, with the same auth and errors; requests for an adapter
routed to the replica that loaded it. Slow (starting Ray takes most of its time), but for the option parsing."""
from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import free_port, write_adapters
from tests.serving.over_http import client

import loralab
from loralab.errors import LoraLabError
from loralab.serving.settings import ServeSettings

ray = pytest.importorskip("ray", reason="Ray Serve is the optional `ray` extra: pip install 'loralab[ray]'")
ray_serve = pytest.importorskip("loralab.serving.ray_serve")

ADAPTERS = [f"tenant{i:02d}" for i in range(20)]
PROMPTS = ["the cat sat on", "hello world what is"]
KEY = "r4y-key"


@pytest.fixture(scope="module")
def store(lm_files, tmp_path_factory) -> tuple[Path, Path]:
    """(base folder, adapter root) with 20 random adapters (ranks 2-8, some on every linear layer)."""
    from transformers import AutoModelForCausalLM

    base, _ = lm_files
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    root = tmp_path_factory.mktemp("ray-store")
    configs = {name: loralab.LoraConfig(r=2 + i % 4 * 2, alpha=8, **({"targets": "all-linear"} if i % 5 == 0 else {}))
               for i, name in enumerate(ADAPTERS)}
    write_adapters(model, root, base, configs, "causal-lm", seed=100)
    return base, root


def ask(c: httpx.Client, model: str, prompt: str) -> httpx.Response:
    return c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})


@pytest.fixture(scope="module")
def single_process(store, start_server_module) -> dict[tuple[str, str], str]:
    base, root = store
    server = start_server_module(model=str(base), served_name="base", adapter_root=root, max_adapters=32)
    with client(server) as c:
        return {(m, p): ask(c, m, p).json()["choices"][0]["text"] for m in [*ADAPTERS, "base"] for p in PROMPTS}


@pytest.fixture(scope="module")
def start_server_module():
    """start_server for a module-scoped fixture (conftest's is per test)."""
    from tests.serving.conftest import RunningServer

    from loralab.testing import one_thread

    running = []
    with one_thread():
        def start(**kwargs):
            server = RunningServer(ServeSettings(port=free_port(), **kwargs))
            running.append(server)
            return server
        yield start
        for server in running:
            server.stop()


@pytest.fixture(scope="module")
def ray_app(store):
    """The Ray Serve application on a local cluster: 2 replicas, 1 torch thread each; its URL."""
    from ray import serve

    base, root = store
    port = free_port()
    repo = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024 * 1024,
             runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(model=str(base), served_name="base", adapter_root=root, api_key=KEY, threads=1,
                                 max_adapters=16, port=port)
        serve.run(ray_serve.deployment(settings, replicas=2, replica_cpus=1), name=ray_serve.APP_NAME,
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_twenty_adapters_through_two_replicas_equal_the_single_process_server(single_process, ray_app):
    auth = {"Authorization": f"Bearer {KEY}"}
    jobs = [(m, p) for p in PROMPTS for m in [*ADAPTERS, "base"]]
    with httpx.Client(base_url=ray_app, timeout=120, headers=auth) as c:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda job: ask(c, *job), jobs))
        assert [r.status_code for r in first] == [200] * len(jobs), [r.text for r in first if r.status_code != 200]
        answers = {job: r.json()["choices"][0]["text"] for job, r in zip(jobs, first)}
        assert answers == single_process
        assert len(set(answers.values())) > len(ADAPTERS)          # the adapters answer differently: no leak hides
        holder = {m: r.headers[ray_serve.REPLICA_HEADER] for (m, _), r in zip(jobs, first) if m != "base"}
        assert len(set(holder.values())) == 2                       # both replicas served
        # once an adapter is resident, its requests go to the replica that holds it (Ray's multiplexing)
        again = {m: ask(c, m, PROMPTS[0]) for m in ADAPTERS}
        assert {m: r.json()["choices"][0]["text"] for m, r in again.items()} == \
            {m: single_process[m, PROMPTS[0]] for m in ADAPTERS}
        resident = {m: r.headers[ray_serve.REPLICA_HEADER] for m, r in again.items()}
        loaded_where = {}
        for (m, _), r in zip(jobs, first):
            if m != "base":
                loaded_where.setdefault(m, set()).add(r.headers[ray_serve.REPLICA_HEADER])
        assert all(resident[m] in loaded_where[m] for m in ADAPTERS), (resident, loaded_where)

        streamed = c.post("/v1/completions", json={"model": ADAPTERS[3], "prompt": PROMPTS[1], "max_tokens": 8,
                                                   "temperature": 0, "stream": True})
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        chunks = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in map(json.loads, chunks) if c["choices"]) == \
            single_process[ADAPTERS[3], PROMPTS[1]]
        # the same auth and errors as one process
        assert c.post("/v1/completions", json={"model": "a", "prompt": "x"},
                      headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
        bad = c.post("/v1/completions", json={"model": ADAPTERS[0], "prompt": "x", "temperature": "hot"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
        missing = ask(c, "no/such/adapter", "x")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        hot = c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "y"})
        assert hot.status_code == 400 and "not available on Ray Serve" in hot.json()["error"]["message"]
        assert c.get("/health").json()["status"] == "ok"


def test_serve_run_options_become_settings(store):
    base, root = store
    settings, replicas, cpus = ray_serve.settings_from_options(
        {"model": str(base), "adapter-root": str(root), "max-adapters": "40", "replicas": "3", "replica-cpus": "0.5",
         "adapter": f"x={root / ADAPTERS[0]}"})
    assert (settings.max_adapters, settings.adapter_root, replicas, cpus) == (40, root.resolve(), 3, 0.5)
    assert settings.adapters == {"x": root / ADAPTERS[0]}
    with pytest.raises(LoraLabError, match="unknown option 'modle'"):
        ray_serve.settings_from_options({"modle": "m"})
    assert settings.packed_linears
    assert not ray_serve.settings_from_options({"model": str(base), "packed-linears": "false"})[0].packed_linears
    assert not ray_serve.settings_from_options({"model": str(base), "ragged-steps": "no"})[0].ragged_steps
    with pytest.raises(LoraLabError, match="'packed-linears' must be true or false"):
        ray_serve.settings_from_options({"model": str(base), "packed-linears": "maybe"})
