"""A loopback HTTP server that answers every GET with 200 and one fixed body: an identity
provider's key set (tests/unit/test_auth.py), or a stranger on a service's port
(tests/integration/test_ports.py)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def answering(body: bytes = b"", content_type: str = "text/plain") -> Iterator[int]:
    """Serves until the block ends; yields its port."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
