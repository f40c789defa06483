"""`charlm serve` under load and abuse on loopback: concurrent generate/score/list, abandoned streams and
requests, stalled connections, foreign Host and Origin. No 500; descriptors and memory come back; still serving.

Bounded: a few dozen requests from 8 threads and 30 stalled sockets, every wait capped.
"""

import http.client
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")
import uvicorn  # noqa: E402

from charlm.serve import create_app, find_runs, guard  # noqa: E402
from test_serve import run_dir  # noqa: E402,F401 -- the module's trained run

JSON = {"content-type": "application/json"}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.fixture
def server(run_dir, tmp_path, monkeypatch):  # noqa: F811
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to count descriptors")
    monkeypatch.setattr(guard, "IDLE_SECONDS", 1)
    shutil.copytree(run_dir, tmp_path / "tiny")
    config = uvicorn.Config(create_app(find_runs([tmp_path / "tiny"]), "127.0.0.1"), host="127.0.0.1", port=0,
                            log_level="critical", **guard.server_options())
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.started
    yield running.servers[0].sockets[0].getsockname()[1]
    running.should_exit = True
    thread.join(15)
    assert not thread.is_alive()


def call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                     headers={**JSON, **(headers or {})} if body is not None else (headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def abandon(port, body, read_first: bool):
    """Send a generate request and leave: after its first bytes (a stream) or at once."""
    raw = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        if read_first:
            sock.recv(64)
    return 0, b""


def one_of_each(port, i):
    """A mixed round: the page's requests, abandoned ones, and an attacker's."""
    kinds = [
        lambda: call(port, "POST", "/api/generate", {"prefix": "The", "length": 200, "seed": i, "stream": False}),
        lambda: call(port, "POST", "/api/generate", {"length": 100, "seed": i}),
        lambda: call(port, "POST", "/api/score", {"text": "The Time Traveller"}),
        lambda: call(port, "GET", "/api/runs"),
        lambda: call(port, "GET", "/api/runs/tiny"),
        lambda: call(port, "GET", "/api/runs", headers={"Host": "attacker.example"}),
        lambda: call(port, "POST", "/api/score", {"text": "x"}, {"Origin": "http://attacker.example"}),
        lambda: call(port, "POST", "/api/generate", {"length": 5}, {"content-type": "text/plain"}),
        lambda: abandon(port, {"length": 10_000}, read_first=True),
        lambda: abandon(port, {"length": 10_000, "stream": False}, read_first=False),
    ]
    return [kind() for kind in kinds]


def test_load_and_abuse_leave_no_500_no_leak_and_a_serving_server(server):
    port = server
    assert all(status < 500 for status, _ in one_of_each(port, 0))  # warm: model loaded, pools started
    time.sleep(2)  # the warm-up's abandoned work ends and its sockets close
    fds, rss = open_fds(), rss_mb()

    stalled = []
    for n in range(30):  # half a request head, then nothing; or nothing at all
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if n % 2:
            sock.sendall(b"GET /api/runs HTTP/1.1\r\nHo")
        stalled.append(sock)
    with ThreadPoolExecutor(8) as pool:
        rounds = list(pool.map(lambda i: one_of_each(port, i), range(1, 9)))
    statuses = [status for answers in rounds for status, _ in answers]
    assert statuses.count(200) == 8 * 5 and 500 not in statuses and 503 not in statuses
    assert sorted(set(statuses)) == [0, 200, 400, 403, 415]

    for sock in stalled:  # the server closed each of them (an empty read), none had to be closed here
        try:
            assert sock.recv(1024) == b""
        finally:
            sock.close()
    deadline = time.monotonic() + 20
    while open_fds() > fds + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds() <= fds + 2
    assert rss_mb() < rss + 150
    status, body = call(port, "POST", "/api/generate", {"prefix": "The", "length": 20, "seed": 1, "stream": False})
    assert status == 200 and len(json.loads(body)["continuation"]) == 20
