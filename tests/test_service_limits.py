"""Slowloris on loopback against a real `vprkit serve`: many half-open connections (request headers never
finished) must not stop `/healthz`, and a connection that never completes its headers is closed."""

import socket

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from service_server import Server, build_index  # noqa: E402

MAX_FILES, HALF_OPEN = 200, 300  # more half-open connections than the server has file descriptors


def _half_open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends its headers
    return s


def test_half_open_connections_do_not_stop_healthz_and_are_closed(tmp_path):
    idx = build_index(tmp_path)
    server = Server(idx, settings={"max_connections": 64, "header_timeout_s": 3}, max_files=MAX_FILES)
    socks = []
    try:
        socks = [_half_open(server.port) for _ in range(HALF_OPEN)]
        r = httpx.get(server.url + "/healthz", timeout=30)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        late = _half_open(server.port)
        socks.append(late)
        assert late.recv(1024) == b""  # closed by the server (header deadline, or evicted by newer ones)
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    finally:
        for s in socks:
            s.close()
        server.kill()
