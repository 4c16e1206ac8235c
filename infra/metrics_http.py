"""The exposition server of a Ballast process: ``GET /metrics`` and ``GET /healthz``.

``/metrics`` is Prometheus's text format of a registry; ``/healthz`` answers 200 with a
JSON document when the process's own health check passes and 503 with the same document
when it does not (compose's health checks and any outside monitor read it).  The port is
the first free one of ``port .. port + span - 1``: two pools (or schedulers) on one host
never collide, and each logs the port it took.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Health = Callable[[], "tuple[bool, dict[str, Any]]"]


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            try:
                body, status, ctype = generate_latest(self.server.registry), 200, CONTENT_TYPE_LATEST
            except Exception as exc:  # one bad collector must not kill the endpoint
                body, status, ctype = f"collect failed: {exc}\n".encode(), 500, "text/plain"
        elif path == "/healthz":
            try:
                ok, doc = self.server.health()
            except Exception as exc:
                ok, doc = False, {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
            body, status, ctype = (json.dumps(doc, default=str) + "\n").encode(), (
                200 if ok else 503), "application/json"
        else:
            body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not worth a log line


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, registry, health: Health) -> None:
        self.registry = registry
        self.health = health
        super().__init__(address, _Handler)


def bind(host: str, port: int, span: int, registry, health: Health) -> MetricsServer:
    """A server on the first free port of ``port .. port + span - 1`` (raises the last
    ``OSError`` when none is free)."""
    error: OSError | None = None
    for candidate in range(port, port + max(1, span)):
        try:
            return MetricsServer((host, candidate), registry, health)
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def serve(server: MetricsServer) -> None:
    try:
        server.serve_forever()
    finally:
        server.server_close()


def serve_in_thread(server: MetricsServer) -> threading.Thread:
    thread = threading.Thread(target=serve, args=(server,), daemon=True, name="ballast-metrics")
    thread.start()
    return thread
