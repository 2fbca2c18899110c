"""A loopback TCP proxy in front of PostgreSQL that counts the queries a client sends, one per round trip.

psycopg2 speaks the simple query protocol: every ``execute``, the implicit ``BEGIN``, ``COMMIT``, ``ROLLBACK``
and a pool's ping is one ``Query`` message, answered before the next is sent. Counting those messages on the wire
counts round trips whatever library code sends them.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


class QueryCounter:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.queries: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` through this proxy, without TLS (the proxy reads the messages)."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.update_query_dict({"sslmode": "disable"}).render_as_string(hide_password=False)

    def take(self) -> list[str]:
        with self._lock:
            taken, self.queries = self.queries, []
        return taken

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=_pipe, args=(server, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:  # startup packets have no type byte; SSL/GSS requests come first and get 'N' back
                length, code = struct.unpack("!ii", _read(reader, 8))
                server.sendall(struct.pack("!ii", length, code) + _read(reader, length - 8))
                if code not in (_SSL_REQUEST, _GSS_REQUEST):
                    break
            while True:
                kind = _read(reader, 1)
                (length,) = struct.unpack("!i", _read(reader, 4))
                body = _read(reader, length - 4)
                if kind == b"Q":
                    with self._lock:
                        self.queries.append(body.rstrip(b"\0").decode("utf-8", "replace"))
                server.sendall(kind + struct.pack("!i", length) + body)
        except (OSError, EOFError):
            pass
        finally:
            for sock in (client, server):
                _close(sock)


def _read(reader, size: int) -> bytes:  # type: ignore[no-untyped-def]
    data = reader.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@contextmanager
def counting_queries(database_url: str) -> Iterator[QueryCounter]:
    url = make_url(database_url)
    counter = QueryCounter((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield counter
    finally:
        counter.close()
