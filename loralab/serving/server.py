"""Running the app under uvicorn, with graceful shutdown.

SIGTERM or SIGINT: the app starts refusing new requests (503, /health says "draining"), uvicorn stops
accepting connections and waits for the requests in flight (streams included) to finish, then the
engine finishes what it holds and the process exits 0.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

from loralab.serving.settings import ServeSettings


def make_server(settings: ServeSettings, log_level: str = "info"):
    """(uvicorn.Server, Service): the server, not yet running; the service's engine is running."""
    import uvicorn

    from loralab.serving.app import create_app
    from loralab.serving.service import Service

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
                            timeout_graceful_shutdown=None, access_log=log_level == "debug")
    return DrainingServer(config), service


def serve(settings: ServeSettings, log_level: str = "info") -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    server, service = make_server(settings, log_level)
    print(f"loralab serve: {service.base_name} ({service.task}) with {len(service.adapters)} adapter(s) on "
          f"http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        service.stop()
    return 0
