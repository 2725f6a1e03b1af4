"""A real TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL in the tests): a
worker pointed at it sees a database that is slow to connect, or gone and back, while
everything else talks to the server directly.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        proxy.connect_delay = 3.0   # every new connection waits 3 s before it is served
        proxy.go_down()             # every connection dropped, new ones refused
        proxy.come_back()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

from sqlalchemy.engine import make_url


class TcpProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.connect_delay = 0.0
        self.connections = 0  # accepted so far (refused ones included)
        self._down = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    def url_for(self, url: str) -> str:
        """`url` (a database URL to the target) through the proxy instead."""
        return (
            make_url(url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def __enter__(self) -> TcpProxy:
        accept = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()
        for thread in self._threads:
            thread.join(5)

    def go_down(self) -> None:
        """Like a database that crashed: live connections reset, new ones closed at once."""
        self._down.set()
        self._drop_all()

    def come_back(self) -> None:
        self._down.clear()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self._down.is_set():
                client.close()
                continue
            serve = threading.Thread(target=self._serve, args=(client,), daemon=True)
            serve.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [serve]

    def _serve(self, client: socket.socket) -> None:
        deadline = time.monotonic() + self.connect_delay
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.05)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._down.is_set() or self._stop.is_set():
                client.close()
                upstream.close()
                return
            self._pairs.append((client, upstream))
        self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return  # dropped by go_down() or close()
        finally:
            selector.close()
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
