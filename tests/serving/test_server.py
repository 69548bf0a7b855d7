"""Graceful shutdown (SIGTERM: running streams finish, new requests are refused, the engine drains),
the `loralab serve` command line, settings validation and the Prometheus text format."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.over_http import sample

from loralab import LoraLabError
from loralab.cli.main import build_parser
from loralab.cli.serve_cmd import settings_from_args
from loralab.serving.settings import ServeSettings
from loralab.serving.telemetry import METRICS, Metrics


def test_sigterm_finishes_running_streams_and_refuses_new_requests(start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters=adapters)
    gate = threading.Event()
    lines: list[str] = []

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={"model": "b", "prompt": "the cat", "max_tokens": 20,
                                                           "temperature": 0, "stream": True}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if len(lines) == 1:
                        gate.set()
    reader = threading.Thread(target=stream)
    reader.start()
    assert gate.wait(60)
    server.server.handle_exit(signal.SIGTERM, None)          # what uvicorn's signal handler calls
    assert server.app.state.draining
    reader.join(60)
    assert [line for line in lines if line][-1] == "data: [DONE]"
    assert sum(line.startswith("data: {") for line in lines) == 20 + 1      # every token chunk and the usage
    server.thread.join(30)
    assert not server.thread.is_alive()                      # uvicorn stopped once the stream was done
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=5)
    server.service.stop(30)
    assert not server.service.engine._thread.is_alive()


def test_command_line_flags_become_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("LORALAB_API_KEY", raising=False)
    args = build_parser().parse_args([
        "serve", "--model", "smollm2-135m-instruct", "--adapter", "a=runs/a/adapter", "--adapter", "b=runs/b",
        "--port", "9001", "--adapter-root", str(tmp_path), "--max-batch-size", "8", "--max-queue", "5",
        "--max-tokens", "64", "--default-max-tokens", "8", "--unload-timeout", "2.5", "--api-key", "k"])
    settings = settings_from_args(args)
    assert settings.model == "smollm2-135m-instruct" and list(settings.adapters) == ["a", "b"]
    assert (settings.port, settings.max_batch_size, settings.max_queue, settings.max_tokens) == (9001, 8, 5, 64)
    assert settings.adapter_root == tmp_path.resolve() and settings.api_key == "k" and settings.host == "127.0.0.1"
    assert settings.packed_linears
    off = build_parser().parse_args(["serve", "--model", "m", "--no-packed-linears"])
    assert not settings_from_args(off).packed_linears
    assert settings.ragged_steps
    assert not settings_from_args(build_parser().parse_args(["serve", "--model", "m", "--no-ragged-steps"])).ragged_steps
    monkeypatch.setenv("LORALAB_API_KEY", "from-env")
    assert ServeSettings(model="m").api_key == "from-env"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "nothing to serve"),
    ({"model": "m", "max_batch_size": 0}, "max-batch-size must be a positive integer"),
    ({"model": "m", "default_max_tokens": 900}, "default-max-tokens (900) is above max-tokens"),
    ({"model": "m", "adapter_root": "/no/such/folder"}, "is not a folder"),
    ({"model": "m", "port": 70000}, "port must be in"),
])
def test_settings_refuse_bad_values_in_one_line(kwargs, message):
    with pytest.raises(LoraLabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServeSettings(**kwargs)


def test_prometheus_text_format_parses_with_prometheus_client():
    metrics = Metrics()
    metrics.inc("loralab_requests_total", {"endpoint": "/v1/completions", "model": 'a"b', "status": "200"}, 3)
    metrics.set("loralab_queue_depth", 4)
    for value in (0.02, 0.3, 200.0):
        metrics.observe("loralab_request_seconds", value, {"model": "a"})
    text = metrics.render()
    assert sample(text, "loralab_requests_total", endpoint="/v1/completions", model='a"b', status="200") == 3
    assert sample(text, "loralab_queue_depth") == 4
    assert sample(text, "loralab_request_seconds_bucket", model="a", le="0.025") == 1
    assert sample(text, "loralab_request_seconds_bucket", model="a", le="0.5") == 2
    assert sample(text, "loralab_request_seconds_bucket", model="a", le="+Inf") == 3
    assert sample(text, "loralab_request_seconds_count", model="a") == 3
    assert sample(text, "loralab_request_seconds_sum", model="a") == pytest.approx(200.32)
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds["loralab_request_seconds"] == "histogram" and kinds["loralab_requests"] == "counter"
    assert kinds["loralab_queue_depth"] == "gauge"
    assert {name.removesuffix("_total") for name in METRICS} <= set(kinds)     # every declared metric, HELP and TYPE
    assert metrics.value("loralab_queue_depth") == 4 and metrics.value("loralab_request_seconds", {"model": "a"}) == 3
    assert metrics.total("loralab_request_seconds", {"model": "a"}) == pytest.approx(200.32)


def test_metrics_refuse_a_label_set_other_than_declared():
    with pytest.raises(ValueError):
        Metrics().inc("loralab_requests_total", {"model": "a"})


def test_serve_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser({"serve": ("loralab.cli.serve_cmd", "")}).parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--adapter-root", "--api-key", "--max-batch-size", "--max-queue", "--max-lora-rank", "--host"):
        assert flag in out


def test_loralab_serve_process_drains_on_sigterm_and_exits_0(lm_files):
    """The real command: a stream in flight when SIGTERM arrives still ends with [DONE], and the process exits 0."""
    base, adapters = lm_files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "loralab", "serve", "--model", str(base), "--adapter",
                                f"a={adapters['a']}", "--port", str(port), "--log-level", "warning"],
                               env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"model": "a", "prompt": "the cat", "max_tokens": 30, "temperature": 0,
                                "stream": True}) as r:
            lines = r.iter_lines()
            first = next(lines)
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert first.startswith("data: {") and rest[-1] == "data: [DONE]"
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("flag, env, message", [
    ("", None, "--api-key is empty; give a key, or leave --api-key out to use $LORALAB_API_KEY (or to serve without "
               "a key)"),
    ("  ", "good", "--api-key is empty"),
    (None, "", "$LORALAB_API_KEY is set but empty; give it a key, or unset it"),
    ("good", " ", "$LORALAB_API_KEY is set but empty"),
    (" key", None, "--api-key holds spaces or characters other than visible ASCII"),
    ("schlüssel", None, "--api-key holds spaces or characters other than visible ASCII"),
    (None, "key\t", "$LORALAB_API_KEY holds spaces or characters other than visible ASCII"),
])
def test_an_empty_or_unsendable_api_key_is_refused(monkeypatch, flag, env, message):
    monkeypatch.delenv("LORALAB_API_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("LORALAB_API_KEY", env)
    with pytest.raises(LoraLabError) as caught:
        ServeSettings(model="m", api_key=flag)
    assert str(caught.value).startswith(message)


def test_the_api_key_flag_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("LORALAB_API_KEY", "from-env")
    assert ServeSettings(model="m", api_key="from-flag").api_key == "from-flag"
    assert ServeSettings(model="m").api_key == "from-env"
    monkeypatch.delenv("LORALAB_API_KEY")
    assert ServeSettings(model="m").api_key is None


@pytest.mark.parametrize("argv, message", [
    (["--api-key", ""], "--api-key is empty; give a key, or leave --api-key out to use $LORALAB_API_KEY (or to serve "
                        "without a key)"),
    (["--unload-timeout", "nan"], "unload-timeout must be a finite number of seconds, 0 or more, got nan"),
    (["--unload-timeout", "inf"], "unload-timeout must be a finite number of seconds, 0 or more, got inf"),
    (["--unload-timeout", "-1"], "unload-timeout must be a finite number of seconds, 0 or more, got -1.0"),
])
def test_bad_serve_settings_are_one_line_and_exit_2(capsys, monkeypatch, argv, message):
    from loralab.cli.main import main

    monkeypatch.delenv("LORALAB_API_KEY", raising=False)
    assert main(["serve", "--model", "nothing-is-loaded", *argv]) == 2
    assert capsys.readouterr().err == f"loralab serve: error: {message}\n"


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys, monkeypatch):
    from loralab.cli.main import main

    loaded = []
    monkeypatch.setattr("loralab.serving.service.Service.start", lambda settings: loaded.append(settings))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", "m", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"loralab serve: error: port {port} on 127.0.0.1 is in use; choose another "
                                       "with --port\n")
    assert loaded == []                                  # refused before loading anything; no URL printed


def raw_exchange(url: str, *requests: bytes) -> bytes:
    """Send raw bytes over loopback and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        for request in requests:
            conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_http_is_answered_with_an_error_object(start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters={"a": adapters["a"]})
    good = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for malformed in (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                      b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                      b"NOT HTTP AT ALL\r\n\r\n"):
        # alone, after a response on a kept-alive link, and pipelined in one write behind a request still
        # being answered (that request's answer comes first, whole)
        for requests in ((malformed,), (good, malformed), (good + good + malformed,)):
            answer = raw_exchange(server.url, *requests)
            last = answer[answer.rindex(b"HTTP/1.1 "):]
            head, _, body = last.partition(b"\r\n\r\n")
            assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request", answer
            assert b"content-type: application/json" in head.lower()
            assert json.loads(body) == {"error": {
                "message": "the server could not read this HTTP request (Invalid HTTP request received); check its "
                           "request line, headers and framing (Content-Length, Transfer-Encoding)",
                "type": "invalid_request_error", "param": None, "code": None}}
            goods = sum(r.count(good) for r in requests)
            assert answer.count(b"HTTP/1.1 200 OK") == goods and answer.count(b"HTTP/1.1 ") == goods + 1, answer
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"


def test_ray_without_ray_installed_is_one_line_exit_2(capsys, monkeypatch):
    from loralab.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)                 # `import ray` raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "loralab.serving.ray_serve", raising=False)     # imported afresh
    monkeypatch.delattr("loralab.serving.ray_serve", raising=False)
    monkeypatch.setattr("loralab.serving.service.Service.start", lambda settings: pytest.fail("loaded a model"))
    assert main(["serve", "--model", "m", "--ray", "--replicas", "2"]) == 2
    assert capsys.readouterr().err == ("loralab serve: error: --ray needs Ray Serve, which is not installed; pip "
                                       "install 'loralab[ray]' (or 'ray[serve]')\n")
    assert main(["serve", "--model", "m", "--replicas", "2"]) == 2
    assert "--replicas and --ray-address need --ray" in capsys.readouterr().err
