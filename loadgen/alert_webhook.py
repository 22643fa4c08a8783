"""Alertmanager's default webhook receiver: prints every notification as one JSON line.

Native mode runs it as the `alert-webhook` service (scripts/local), so alerts land in
var/log/alert-webhook.log, as compose's `alert-webhook` container logs them
(`docker compose logs alert-webhook`). The alert end-to-end test runs the same server in-process.

    .venv/bin/python scripts/alert_webhook.py --host 127.0.0.1 --port 9095

POST /alerts (any path) takes Alertmanager's webhook JSON; GET /healthz answers 200.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Notification = dict[str, Any]
MAX_BODY = 4 * 1024 * 1024  # Alertmanager batches alerts; 4 MiB is far above a real notification


def make_server(host: str, port: int, on_notification: Callable[[Notification], None]) -> ThreadingHTTPServer:
    """A receiver bound to host:port (0 = any free port); call serve_forever() to run it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(200 if self.path == "/healthz" else 404, b"ok\n" if self.path == "/healthz" else b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, b"notification too large\n")
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
                    raise ValueError("not an Alertmanager notification (no alerts list)")
            except ValueError as error:
                self._reply(400, f"error: {error}\n".encode())
                return
            on_notification(body)
            self._reply(200, b"")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per notification is the log; no access log

    return ThreadingHTTPServer((host, port), Handler)


@contextmanager
def running(host: str, port: int, on_notification: Callable[[Notification], None]) -> Iterator[ThreadingHTTPServer]:
    """The receiver serving in a background thread for the `with` block (tests run it this way)."""
    server = make_server(host, port, on_notification)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def print_notification(body: Notification) -> None:
    received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps({"received": received, **body}, separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port, print_notification)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    # SIGTERM (scripts/local down) ends serve_forever cleanly.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"alert-webhook listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
