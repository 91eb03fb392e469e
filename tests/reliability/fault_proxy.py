"""A fault-injecting HTTP proxy for OpenAI-compatible servers, on 127.0.0.1 only.

``FaultProxy(upstream_url, rates=FaultRates.evenly(0.3), seed=0)`` listens on a free port of
127.0.0.1 and forwards every request to ``upstream_url`` (which must itself be on the loopback
interface: nothing leaves the machine). On the paths it is told to disturb (the completion
endpoints by default) it replaces a fraction of the answers by a fault:

- ``rate_limit``: 429 with ``Retry-After`` (whole seconds);
- ``server_error``: 500 with an OpenAI-style error body;
- ``unavailable``: 503 with ``Retry-After``;
- ``truncated``: the upstream's 200 answer with its body cut in half (invalid JSON);
- ``slow``: the upstream's answer, sent only after ``slow_s`` seconds (past the client's
  timeout, so the client has given up);
- ``drop``: the connection is closed without any answer.

Which request gets which fault is decided by a hash of (seed, request body, how many times
that exact body was seen before), not by arrival order: the same rows meet the same faults
whatever the concurrency, and a rerun continues each row's sequence. Every request is recorded
(``records``), so a test can count requests per row, retries and faults by kind.

``FakeOpenAIServer`` is a tiny deterministic upstream for tests that must run without a real
model server: its answers are a function of the request's messages and sampling fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when a client opens many at once; a dropped
    # SYN is retried only after a second, which the client would count as a timeout.
    request_queue_size = 128


class _LoopbackService:
    """Serve ``_handler()`` on a free 127.0.0.1 port from a daemon thread; usable as a
    context manager. Subclasses set ``self._server = None`` in their initialiser."""

    _server: ThreadingHTTPServer | None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True  # a sleeping "slow" answer must not block shutdown
        server.block_on_close = False
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, ending in /v1 (what an OpenAI client is given)."""
        assert self._server is not None, "start it first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request; their sum is the total fault rate (<= 1)."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    truncated: float = 0.0
    slow: float = 0.0
    drop: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {name} must be in [0, 1], got {value}")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.total:.3f}; they must not exceed 1")

    @classmethod
    def evenly(cls, total: float) -> FaultRates:
        """``total`` split equally over the six kinds of fault."""
        kinds = [f.name for f in fields(cls)]
        return cls(**{kind: total / len(kinds) for kind in kinds})

    @classmethod
    def only(cls, kind: str, rate: float = 1.0) -> FaultRates:
        """One kind of fault at ``rate``, no other."""
        return cls(**{kind: rate})

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def pick(self, draw: float) -> str | None:
        """The fault for a uniform ``draw`` in [0, 1), or None (forward untouched)."""
        edge = 0.0
        for name, rate in asdict(self).items():
            edge += rate
            if draw < edge:
                return name
        return None


@dataclass
class RequestRecord:
    """One request the proxy received and what it did with it (recorded on arrival, so a
    request whose answer is still pending, such as a slow one, is already counted)."""

    path: str
    key: str  # hash of the request body: one row's request, across retries and reruns
    attempt: int  # 0 for the first time this body was seen
    fault: str | None
    received_at: float
    status: int | None = None  # None until answered; stays None if no answer was delivered


@dataclass
class FaultProxy(_LoopbackService):
    """The proxy; use as a context manager (``with FaultProxy(...) as proxy:``)."""

    upstream: str
    rates: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    retry_after_s: int = 1
    slow_s: float = 2.0
    faulty_paths: tuple[str, ...] = COMPLETION_PATHS
    upstream_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
            raise ValueError(
                f"upstream must be an http:// URL on the loopback interface, got {self.upstream!r}"
            )
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_prefix = parts.path.rstrip("/")
        if self._upstream_prefix.endswith("/v1"):
            self._upstream_prefix = self._upstream_prefix[: -len("/v1")]
        self.records: list[RequestRecord] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    # -- decisions and bookkeeping -------------------------------------------------------------
    def decide(self, path: str, body: bytes) -> tuple[str, int, str | None]:
        """(key, attempt, fault) of a request; counts it as seen."""
        key = hashlib.sha256(path.encode() + b"\0" + body).hexdigest()[:16]
        with self._lock:
            attempt = self._seen[key]
            self._seen[key] += 1
        if path not in self.faulty_paths:
            return key, attempt, None
        digest = hashlib.sha256(f"{self.seed}:{key}:{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        return key, attempt, self.rates.pick(draw)

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)

    def completion_records(self) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.records if r.path in self.faulty_paths]

    def faults(self) -> Counter[str]:
        """How many faults of each kind were injected."""
        return Counter(r.fault for r in self.completion_records() if r.fault is not None)

    def requests_per_key(self) -> Counter[str]:
        return Counter(r.key for r in self.completion_records())

    def reset_records(self) -> None:
        """Forget the records (not the per-body attempt counts that drive the faults)."""
        with self._lock:
            self.records.clear()

    # -- forwarding ----------------------------------------------------------------------------
    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream; return its status, end-to-end headers and body."""
        connection = http.client.HTTPConnection(
            self._upstream_host, self._upstream_port, timeout=self.upstream_timeout_s
        )
        try:
            kept = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, self._upstream_prefix + path, body=body, headers=kept)
            response = connection.getresponse()
            payload = response.read()
            out_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            ]
            return response.status, out_headers, payload
        finally:
            connection.close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._handle(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._handle(self.rfile.read(length))

        def _handle(self, body: bytes) -> None:
            key, attempt, fault = proxy.decide(self.path, body)
            record = RequestRecord(self.path, key, attempt, fault, time.monotonic())
            proxy.record(record)
            record.status = self._answer(fault, body)

        def _answer(self, fault: str | None, body: bytes) -> int | None:
            if fault == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return None
            if fault in ("rate_limit", "server_error", "unavailable"):
                return self._error(fault)
            status, headers, payload = proxy.forward(
                self.command, self.path, dict(self.headers.items()), body
            )
            if fault == "truncated" and status == 200:
                payload = payload[: len(payload) // 2]
            if fault == "slow":
                time.sleep(proxy.slow_s)
            try:
                self._send(status, headers, payload)
            except OSError:  # the client gave up (slow answer): nobody reads this
                self.close_connection = True
                return None
            return status

        def _error(self, fault: str) -> int:
            status = {"rate_limit": 429, "server_error": 500, "unavailable": 503}[fault]
            message = f'{{"error": {{"message": "injected {fault}", "type": "{fault}"}}}}'
            headers = [("Content-Type", "application/json")]
            if status in (429, 503):
                headers.append(("Retry-After", str(proxy.retry_after_s)))
            self._send(status, headers, message.encode())
            return status

        def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

    return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str, **settings: Any) -> Iterator[FaultProxy]:
    """``with fault_proxy(url, rates=..., seed=...) as proxy:`` - the proxy while inside."""
    proxy = FaultProxy(upstream, **settings).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# A tiny deterministic OpenAI-compatible upstream
# ---------------------------------------------------------------------------------------------

FAKE_MODEL = "fake-model"


def fake_reply(body: dict[str, Any]) -> str:
    """The fake server's answer: a function of the messages and sampling fields only, holding
    a 1-5 score that a judge's parser reads (``Score: N.``)."""
    key = json.dumps([body.get("messages"), body.get("seed"), body.get("temperature")])
    value = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return f"Score: {1 + value % 5}. Reply {value:08x}."


@dataclass
class FakeOpenAIServer(_LoopbackService):
    """``/v1/models`` and ``/v1/chat/completions`` on 127.0.0.1, answering ``fake_reply``.

    - ``api_key``: when set, a request without ``Authorization: Bearer <api_key>`` gets 401.
    - ``echo_key_when``: requests it selects get a 400 whose message repeats the request's
      Authorization header, as careless servers do: clients must not let it leak.
    """

    api_key: str | None = None
    echo_key_when: Callable[[dict[str, Any]], bool] | None = None
    model: str = FAKE_MODEL

    def __post_init__(self) -> None:
        self.requests = 0
        self.authorized = 0
        self.echoed = 0
        self._lock = threading.Lock()
        self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _fake_handler_for(self)

    def count(self, authorized: bool, echoed: bool) -> None:
        with self._lock:
            self.requests += 1
            self.authorized += authorized
            self.echoed += echoed


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    text = fake_reply(body)
    return {
        "id": "fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 9},
    }


def _fake_handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            model = {"id": server.model, "object": "model", "created": 0, "owned_by": "fake"}
            self._json(200, {"object": "list", "data": [model]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            authorization = self.headers.get("Authorization", "")
            authorized = server.api_key is None or authorization == f"Bearer {server.api_key}"
            echo = authorized and server.echo_key_when is not None and server.echo_key_when(body)
            server.count(authorized, echo)
            if not authorized:
                self._json(401, {"error": {"message": "invalid api key", "type": "auth"}})
            elif echo:
                message = f"request refused for credentials '{authorization}'"
                self._json(400, {"error": {"message": message, "type": "invalid_request"}})
            elif self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
            else:
                self._json(200, _completion(body))

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
