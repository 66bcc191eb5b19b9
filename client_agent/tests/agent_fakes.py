"""A small stand-in for the server's API in a thread (``http.server``), for the agent's unit tests.

It stores ingested readings idempotently by (channel, t) and remembers batch ids like the real server,
so tests can check "everything arrived, nothing twice". ``script`` queues answers for the next requests
to a path (status, body, headers); ``tokens`` is the set of accepted tokens. The end-to-end tests in
``collection/tests/test_agent_e2e.py`` use the real server instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(self, tokens=("dbk_good",)):
        self.tokens = set(tokens)
        self.stored: dict[tuple[str, int], object] = {}
        self.batches: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, bytes]] = []  # (method, path, headers, body)
        self.script: dict[str, deque] = defaultdict(deque)
        self.config = {"version": "v1", "agent": "test-agent", "sources": [], "skipped": []}
        self.reject_values: set = set()  # values refused per reading, like a non-number in a numeric channel
        self.poison: set = set()  # values that make the whole body refused (400), like unreadable JSON
        self.max_readings = 100_000  # more in one body: 413
        self.heartbeats: list[dict] = []
        self.unparsed: dict[str, list[dict]] = {}  # batch id -> lines, as the server's quarantine keeps them
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, status: int, body=None, headers=None, times: int = 1) -> None:
        for _ in range(times):
            self.script[path].append((status, body, headers or {}))

    def requests_to(self, path: str) -> list[tuple[str, str, dict, bytes]]:
        with self.lock:
            return [r for r in self.requests if r[1].split("?")[0] == path]

    def wait_for(self, condition, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                value = condition()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {condition}")

    # -- the API --------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict, body: bytes):
        with self.lock:
            self.requests.append((method, path, headers, body))
            scripted = self.script[path].popleft() if self.script[path] else None
        if scripted is not None:
            return scripted
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return 401, {"detail": "Invalid token."}, {"WWW-Authenticate": "Bearer"}
        if path == "/api/v1/ingest/" and method == "POST":
            return self.ingest(json.loads(body))
        if path == "/api/v1/agent/config/":
            etag = f'"{self.config["version"]}"'
            if headers.get("if-none-match") == etag:
                return 304, None, {"ETag": etag}
            return 200, self.config, {"ETag": etag}
        if path == "/api/v1/agent/heartbeat/":
            with self.lock:
                self.heartbeats.append(json.loads(body))
            return 200, {"server_time": time.time(), "clock_offset": None}, {}
        if path == "/api/v1/agent/unparsed/" and method == "POST":
            payload = json.loads(body)
            with self.lock:
                replayed = payload["batch_id"] in self.unparsed
                self.unparsed.setdefault(payload["batch_id"], payload["lines"])
            n = len(payload["lines"])
            return 200, {"batch_id": payload["batch_id"], "stored": n, "without_source": 0, "replayed": replayed}, {}
        if path == "/api/v1/whoami/":
            return 200, {"username": "agent:test-agent", "kind": "agent", "agent": "test-agent",
                         "token_prefix": token[:8], "expires": None, "instruments": ["station"]}, {}  # fmt: skip
        return 404, {"detail": "Not found."}, {}

    def ingest(self, payload: dict):
        with self.lock:
            batch_id = payload.get("batch_id")
            if batch_id in self.batches:
                return 200, {**self.batches[batch_id], "replayed": True}, {}
            values = [v for series in payload["channels"].values() for v in series["v"]]
            if len(values) > self.max_readings:
                return 413, {"detail": f"the batch holds {len(values)} readings; the limit is {self.max_readings}"}, {}
            if self.poison & set(values):
                return 400, {"detail": "the body cannot be read"}, {}
            index, accepted, duplicates, conflicts, rejections = 0, 0, 0, 0, []
            for channel, series in payload["channels"].items():
                for t, v in zip(series["t"], series["v"], strict=True):
                    if v in self.reject_values:
                        rejections.append({"index": index, "channel": channel, "reason": "value is not a number"})
                    elif (channel, t) in self.stored and self.stored[(channel, t)] != v:
                        conflicts += 1  # as the server: its value stays, this one goes to quarantine
                    elif (channel, t) in self.stored:
                        duplicates += 1
                    else:
                        self.stored[(channel, t)] = v
                        accepted += 1
                    index += 1
            result = {
                "batch_id": batch_id,
                "received": index,
                "accepted": accepted,
                "duplicates": duplicates,
                "conflicts": conflicts,
                "flagged": 0,
                "rejected": len(rejections),
                "rejections": rejections,
                "rejections_truncated": False,
            }
            self.batches[batch_id] = result
        return 200, {**result, "replayed": False}, {}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, data, extra = server.handle(method, self.path, headers, body)
                raw = isinstance(data, bytes)  # a scripted page as a proxy or Django's error view sends it
                payload = data if raw else b"" if data is None else json.dumps(data).encode()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/html; charset=utf-8" if raw else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, format, *args):
                pass

        return Handler
