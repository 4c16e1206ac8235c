"""A local HTTP server standing in for an operator's alert webhook (tests only)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    """Records every POST; answers with ``statuses`` in turn (then 200).

    Parameters:
      statuses: HTTP statuses of the first answers, e.g. ``[500, 503]``.
    """

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                body = json.loads(raw or b"null")
                with server._lock:
                    server.attempts += 1
                    status = server.statuses.pop(0) if server.statuses else 200
                    if 200 <= status < 300:
                        server.received.append({"body": body, "headers": dict(self.headers), "raw": raw})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.received]
