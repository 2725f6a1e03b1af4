"""A real HTTP server on 127.0.0.1 standing in for Slack: it records every message it is
sent (webhook or chat.postMessage) and can be told to fail."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class SlackServer:
    def __init__(self):
        self.messages: list[dict] = []
        self.failures = 0  # requests answered 500
        self.answer = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if server.answer != 200:
                    server.failures += 1
                    self.send_response(server.answer)
                    self.end_headers()
                    self.wfile.write(b"server error")
                    return
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    body = json.loads(raw)
                else:
                    body = {k: v[0] for k, v in parse_qs(raw).items()}
                server.messages.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                reply = (
                    b"ok"
                    if "hook" in self.path
                    else json.dumps({"ok": True, "channel": "C1", "ts": "1.0"}).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/T000/B000/secret"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def texts(self) -> list[str]:
        return [m["body"]["text"] for m in self.messages]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
