"""Running the app under uvicorn, with graceful shutdown.

SIGTERM or SIGINT: the app starts refusing new requests (503, /health says "draining"), uvicorn stops
accepting connections and waits for the requests in flight (streams included) to finish, then the
engine finishes what it holds and the process exits 0.

The listening sockets are bound before the model loads (`bind_sockets`; uvicorn listens on them once the
model is ready): a port in use is one line, exit 2, before minutes of loading, and the URL printed is where
the server really listens. A request uvicorn cannot parse (a bad request line,
header or framing such as `Content-Length: abc`) is answered with an OpenAI error object too
(`json_error_protocol`), unless a response has already started on that connection.
"""
from __future__ import annotations

import contextlib
import errno
import json
import signal
import socket
import sys
import threading

from loralab.errors import LoraLabError
from loralab.serving.api import bad_request
from loralab.serving.app import create_app
from loralab.serving.service import Service
from loralab.serving.settings import ServeSettings


def make_server(settings: ServeSettings, log_level: str = "info"):
    """(uvicorn.Server, Service): the server, not yet running; the service's engine is running."""
    import uvicorn

    service = Service.start(settings)
    app = create_app(service)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.draining = True              # refuse new requests while the running ones finish
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die of SIGTERM;
            # a drained server has done its job and exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            saved = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            timeout_graceful_shutdown=None, access_log=log_level == "debug",
                            http=json_error_protocol())
    return DrainingServer(config), service


def json_error_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol (h11, or httptools where installed: its own choice) answering a request it
    cannot parse with an OpenAI error object instead of the plain text "Invalid HTTP request received.".

    Such a request never reaches the ASGI app, so no middleware can answer it: this thin subclass replaces
    uvicorn's documented `send_400_response(msg)` hook, the one place both protocols answer a parse error."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonErrorHTTPProtocol(AutoHTTPProtocol):
        deferred_error: str | None = None

        def send_400_response(self, msg: str) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                # the bad bytes follow a complete request still being answered (pipelining): answer that
                # request first, then this error, or its response would be cut off or lost
                self.deferred_error = msg
                self.flow.pause_reading()
                return
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self._write_error(msg)
            self.transport.close()                 # mid-response nothing more can be written: just close

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # self.cycle is the last request parsed before the bad bytes; requests are answered in order
            if self.deferred_error is not None and self.cycle.response_complete and not self.transport.is_closing():
                self._write_error(self.deferred_error)
                self.transport.close()

        def _write_error(self, msg: str) -> None:
            error = bad_request(f"the server could not read this HTTP request ({msg.rstrip('.')}); check its "
                                "request line, headers and framing (Content-Length, Transfer-Encoding)")
            body = json.dumps(error.body()).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))

    return JsonErrorHTTPProtocol


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to at `port`, as uvicorn would bind them (it listens on
    them later); one line for a port in use or an address this machine does not have."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LoraLabError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)   # as asyncio's create_server does
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LoraLabError(f"port {port} on {host} is in use; choose another with --port") from None
        raise LoraLabError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port") from None
    return sockets


def serve(settings: ServeSettings, log_level: str = "info") -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status. The port is bound before the model loads."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    sockets = bind_sockets(settings.host, settings.port)
    try:
        server, service = make_server(settings, log_level)
        print(f"loralab serve: {service.base_name} ({service.task}) with {len(service.adapters)} adapter(s) on "
              f"http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
        try:
            server.run(sockets=sockets)
        finally:
            service.stop()
    finally:
        for sock in sockets:
            sock.close()
    return 0
