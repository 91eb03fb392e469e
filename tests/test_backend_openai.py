"""The OpenAI-compatible backend against a scripted fake server on 127.0.0.1.

The fake server (stdlib ``http.server``, one thread per request) answers ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions``. Each prompt can carry a script of replies
(status, headers, body) consumed one per request, so a test decides exactly which attempts fail
(429 with Retry-After, 500, malformed JSON, slow answers) and checks what the backend did:
rows end done or ``error`` with a reason, retries are bounded and counted, a second call re-sends
only the rows given to it, sampling fields are forwarded, and the API key never leaks.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mipo_engine.backends.base import GenerationRequest, SamplingConfig
from mipo_engine.backends.openai import (
    OpenAIBackend,
    backoff_delay,
    retry_after_seconds,
)
from mipo_engine.chat import DEFAULT_STOP, build_messages, render_plain
from mipo_engine.errors import BackendError

SECRET = "sk-test-SECRET123456789012345"


@dataclass
class Reply:
    """One scripted answer: HTTP status, extra headers, raw body (``None``: a normal success),
    and a pause before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0


class FakeServer:
    """State shared with the request handler: scripts per prompt key, and every request seen."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.received: list[dict[str, Any]] = []
        self.models = [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "vllm"}]
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.url = ""

    def script(self, key: str, *replies: Reply) -> None:
        self.scripts[key] = list(replies)

    def next_reply(self, key: str) -> Reply:
        with self.lock:
            queue = self.scripts.get(key, [])
            return queue.pop(0) if queue else Reply()

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.received if r["path"] == path]


def prompt_key(body: dict[str, Any]) -> str:
    """The script key of a request: the last chat message, or the completion prompt."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return json.dumps(body["prompt"])


def success_body(path: str, body: dict[str, Any]) -> dict[str, Any]:
    key = prompt_key(body)
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    if path.endswith("/chat/completions"):
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": f" answer to {key} "},
            "finish_reason": "stop",
        }
        return {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }
    prompt = body["prompt"]
    choice = {"index": 0, "text": f"answer to {key}", "finish_reason": "length", "logprobs": None}
    if body.get("echo"):
        # Prompt token i (i >= 1) gets log-prob -i/10; the one generated token gets -5.
        logprobs = [None] + [-i / 10 for i in range(1, len(prompt))] + [-5.0]
        choice["logprobs"] = {
            "token_logprobs": logprobs,
            "tokens": [],
            "text_offset": [],
            "top_logprobs": [],
        }
    return {
        "id": "c2",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": usage,
    }


def make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self.received("GET", {})
            if self.path.endswith("/models"):
                self.send(200, json.dumps({"object": "list", "data": server.models}).encode())
            else:
                self.send(404, b'{"error": {"message": "no such route"}}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.received("POST", body)
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                reply = server.next_reply(prompt_key(body))
                time.sleep(reply.delay or server.delay)
                payload = reply.body
                if payload is None:
                    payload = json.dumps(success_body(self.path, body)).encode()
                self.send(reply.status, payload, reply.headers)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def received(self, method: str, body: dict[str, Any]) -> None:
            with server.lock:
                server.received.append(
                    {
                        "method": method,
                        "path": self.path,
                        "body": body,
                        "authorization": self.headers.get("Authorization"),
                    }
                )

        def send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def make_backend(server: FakeServer, **options: Any) -> OpenAIBackend:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": SECRET,
        "max_retries": 2,
        "retry_backoff": 0.01,
        "timeout": 5.0,
        "show_progress": False,
    }
    settings.update(options)
    return OpenAIBackend(settings.pop("model", "fake-model"), **settings)


def requests_for(*prompts: str, seed: int = 100) -> list[GenerationRequest]:
    return [
        GenerationRequest(id=f"r{i}", messages=build_messages(p), seed=seed + i)
        for i, p in enumerate(prompts)
    ]


SAMPLING = SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.9)


# -- forwarding and order -----------------------------------------------------------------
def test_sampling_fields_and_seeds_are_forwarded_per_row(server: FakeServer) -> None:
    backend = make_backend(server)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.9, stop=("###",))
    results = backend.generate(requests_for("a", "b"), sampling)

    assert [r.text for r in results] == ["answer to a", "answer to b"]  # stripped
    assert [r.finish_reason for r in results] == ["stop", "stop"]
    assert [r.num_tokens for r in results] == [3, 3]  # from usage.completion_tokens
    sent = sorted(server.posts("/v1/chat/completions"), key=prompt_key)
    assert [b["seed"] for b in sent] == [100, 101]
    for body in sent:
        assert body["model"] == "fake-model"
        assert body["temperature"] == 0.7
        assert body["top_p"] == 0.9
        assert body["max_tokens"] == 12
        assert body["stop"] == ["###"]
        assert "structured_outputs" not in body


def test_default_stop_is_the_plain_template_turn_markers(server: FakeServer) -> None:
    make_backend(server).generate(requests_for("a"), SAMPLING)
    assert server.posts("/v1/chat/completions")[0]["stop"] == list(DEFAULT_STOP)


def test_results_keep_request_order_when_later_rows_finish_first(server: FakeServer) -> None:
    server.script("first", Reply(delay=0.4))
    server.script("second", Reply(delay=0.2))
    results = make_backend(server).generate(requests_for("first", "second", "third"), SAMPLING)
    assert [r.text for r in results] == ["answer to first", "answer to second", "answer to third"]


def test_concurrency_limit_bounds_requests_in_flight(server: FakeServer) -> None:
    server.delay = 0.15
    make_backend(server, concurrency=2).generate(requests_for(*"abcdef"), SAMPLING)
    assert server.max_in_flight == 2


def test_model_none_uses_the_served_model(server: FakeServer) -> None:
    server.models = [{"id": "served-x", "object": "model", "created": 0, "owned_by": "vllm"}]
    backend = make_backend(server, model=None)
    backend.generate(requests_for("a"), SAMPLING)
    assert server.posts("/v1/chat/completions")[0]["model"] == "served-x"
    assert backend.model_name == "served-x"
    assert "served-x" in repr(backend)


# -- retries and failures -----------------------------------------------------------------
def test_rate_limit_waits_for_retry_after_then_succeeds(server: FakeServer) -> None:
    """Backoff base is 0.01 s, so a pause of about 1 s can only come from Retry-After: 1."""
    server.script("a", Reply(429, {"Retry-After": "1"}, b'{"error": {"message": "slow down"}}'))
    backend = make_backend(server)
    start = time.monotonic()
    [result] = backend.generate(requests_for("a"), SAMPLING)
    elapsed = time.monotonic() - start

    assert result.finish_reason == "stop"
    assert result.attempts == 2
    assert elapsed >= 0.95
    assert backend.stats.retries == 1
    assert backend.stats.errors == {"rate_limit": 1}
    assert backend.stats.failures == 0


def test_server_error_and_malformed_json_are_retried(server: FakeServer) -> None:
    server.script("a", Reply(500, body=b'{"error": {"message": "boom"}}'))
    server.script("b", Reply(body=b"{not json"), Reply(body=b"{}"))
    backend = make_backend(server)
    a, b, c = backend.generate(requests_for("a", "b", "c"), SAMPLING)

    assert (a.finish_reason, a.attempts) == ("stop", 2)
    assert (b.finish_reason, b.attempts) == ("stop", 3)
    assert (c.finish_reason, c.attempts) == ("stop", 1)
    assert backend.stats.retries == 3
    assert backend.stats.errors == {"server_error": 1, "malformed_response": 2}
    assert backend.stats.requests == 3


def test_row_failing_every_attempt_becomes_an_error_row(server: FakeServer) -> None:
    """max_retries=2: three attempts in all, then the row reports the last reason."""
    failing = Reply(503, body=b'{"error": {"message": "overloaded"}}')
    server.script("bad", failing, failing, failing, failing)
    backend = make_backend(server)
    good, bad = backend.generate(requests_for("good", "bad"), SAMPLING)

    assert good.finish_reason == "stop"
    assert bad.finish_reason == "error"
    assert (bad.text, bad.num_tokens, bad.attempts) == ("", 0, 3)
    assert bad.error == "HTTP 503: overloaded"
    assert len([b for b in server.posts("/v1/chat/completions") if prompt_key(b) == "bad"]) == 3
    assert backend.stats.failures == 1
    assert backend.stats.retries == 2
    assert backend.stats.errors == {"server_error": 3}


def test_client_errors_are_not_retried(server: FakeServer) -> None:
    server.script("long", Reply(400, body=b'{"error": {"message": "prompt too long"}}'))
    backend = make_backend(server)
    long, ok = backend.generate(requests_for("long", "ok"), SAMPLING)
    assert (long.finish_reason, long.attempts, long.error) == (
        "error",
        1,
        "HTTP 400: prompt too long",
    )
    assert ok.finish_reason == "stop"
    assert backend.stats.retries == 0


def test_unexpected_finish_reason_is_an_error_row(server: FakeServer) -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": ""},
            }
        ],
    }
    server.script("a", Reply(body=json.dumps(body).encode()))
    [result] = make_backend(server).generate(requests_for("a"), SAMPLING)
    assert result.finish_reason == "error"
    assert "content_filter" in (result.error or "")


def test_timeout_is_retried_then_reported(server: FakeServer) -> None:
    server.script("slow", Reply(delay=1.5), Reply(delay=1.5))
    backend = make_backend(server, timeout=0.3, max_retries=1)
    [result] = backend.generate(requests_for("slow"), SAMPLING)
    assert result.finish_reason == "error"
    assert result.attempts == 2
    assert "0.3 s" in (result.error or "")
    assert backend.stats.errors == {"timeout": 2}


def test_calling_again_resends_only_the_failed_rows(server: FakeServer) -> None:
    failing = Reply(500, body=b'{"error": {"message": "boom"}}')
    server.script("b", failing, failing, failing)  # fails the whole first call, then succeeds
    backend = make_backend(server)
    requests = requests_for("a", "b", "c")
    first = backend.generate(requests, SAMPLING)
    failed = [r for r, c in zip(requests, first, strict=True) if c.finish_reason == "error"]
    assert [r.id for r in failed] == ["r1"]

    sent_before = len(server.posts("/v1/chat/completions"))
    [retried] = backend.generate(failed, SAMPLING)
    second_call = server.posts("/v1/chat/completions")[sent_before:]
    assert [prompt_key(b) for b in second_call] == ["b"]
    assert second_call[0]["seed"] == 101  # the row keeps its own seed
    assert retried.finish_reason == "stop"
    assert backend.stats.requests == 4


def test_every_row_unauthorised_raises_one_clear_error(server: FakeServer) -> None:
    denied = Reply(401, body=b'{"error": {"message": "bad key"}}')
    server.script("a", denied)
    server.script("b", denied)
    with pytest.raises(BackendError, match="HTTP 401: bad key"):
        make_backend(server).generate(requests_for("a", "b"), SAMPLING)


def test_unreachable_server_raises_backend_error() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(
        "m",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=1,
        retry_backoff=0.0,
        show_progress=False,
    )
    with pytest.raises(BackendError, match="connection failed"):
        backend.generate(requests_for("a"), SAMPLING)


# -- secrets ------------------------------------------------------------------------------
def test_api_key_is_sent_but_never_leaks(
    server: FakeServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "mipo_engine"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    echo_key = json.dumps({"error": {"message": f"key {SECRET} is over quota"}}).encode()
    server.script("a", *[Reply(500, body=echo_key)] * 3)
    server.script("b", *[Reply(401, body=echo_key)] * 3)
    server.script("c", *[Reply(401, body=echo_key)] * 3)
    backend = make_backend(server)

    [row] = backend.generate(requests_for("a"), SAMPLING)
    with pytest.raises(BackendError) as raised:
        backend.generate(requests_for("b", "c"), SAMPLING)

    assert server.received[-1]["authorization"] == f"Bearer {SECRET}"  # it is really used
    assert row.error == "HTTP 500: key *** is over quota"
    captured = capsys.readouterr()
    for text in (
        row.error,
        str(raised.value),
        repr(raised.value),
        repr(backend),
        str(backend),
        repr(vars(backend)),
        caplog.text,
        captured.out,
        captured.err,
    ):
        assert SECRET not in text
    assert caplog.records, "debug logging was on: the scan must have seen records"


# -- completions endpoint, structured outputs, scoring ------------------------------------
def test_completions_endpoint_sends_rendered_token_ids(
    server: FakeServer, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    backend = make_backend(server, endpoint="completions", tokenizer=str(tiny_model_dir))
    [result] = backend.generate(requests_for("What is the capital of France?"), SAMPLING)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [body] = server.posts("/v1/completions")
    expected_text = "<bos>User: What is the capital of France?\n\nAssistant:\n"
    assert body["prompt"] == tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    assert body["prompt"][0] == tokenizer.bos_token_id
    assert result.finish_reason == "length"


def test_structured_outputs_use_vllm_fields_only_on_vllm(server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    backend = make_backend(server)
    backend.generate_structured(requests_for("a"), SAMPLING, choices=["1", "2", "3"])
    backend.generate_structured(requests_for("b"), SAMPLING, json_schema=schema)
    a, b = sorted(server.posts("/v1/chat/completions"), key=prompt_key)
    assert a["structured_outputs"] == {"choice": ["1", "2", "3"]}
    assert b["structured_outputs"] == {"json": schema}
    assert "stop" not in a  # the constraint ends the text; turn markers are not needed

    server.models[0]["owned_by"] = "someone-else"
    make_backend(server).generate_structured(requests_for("c"), SAMPLING, choices=["x"])
    [c] = [p for p in server.posts("/v1/chat/completions") if prompt_key(p) == "c"]
    assert "structured_outputs" not in c


def test_structured_needs_exactly_one_constraint(server: FakeServer) -> None:
    backend = make_backend(server)
    with pytest.raises(ValueError, match="exactly one"):
        backend.generate_structured(requests_for("a"), SAMPLING)
    with pytest.raises(ValueError, match="exactly one"):
        backend.generate_structured(requests_for("a"), SAMPLING, choices=["x"], json_schema={})


def test_score_sums_echoed_logprobs_of_response_tokens(
    server: FakeServer, tiny_model_dir: Path
) -> None:
    """The fake server gives prompt token i the log-prob -i/10. The response's tokens sit at
    positions P..P+R-1 (P = prompt tokens with BOS, R = response tokens plus EOS), so the score
    is -(P + ... + P+R-1)/10 and the generated token's -5 is not counted."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = make_backend(server, tokenizer=str(tiny_model_dir))
    prompt = render_plain(build_messages("What is the capital of France?"), bos_token="<bos>")
    responses = ["Paris is the capital of France.", "the a"]
    results = backend.score([prompt, prompt], responses)

    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # has <bos>
    for response, result in zip(responses, results, strict=True):
        n_response = len(tokenizer(response, add_special_tokens=False)["input_ids"]) + 1
        positions = range(n_prompt, n_prompt + n_response)
        assert result.num_tokens == n_response
        assert result.logp == pytest.approx(-sum(positions) / 10)
    body = server.posts("/v1/completions")[0]
    assert (body["echo"], body["logprobs"], body["max_tokens"]) == (True, 1, 1)


def test_score_without_tokenizer_says_what_to_pass(server: FakeServer) -> None:
    backend = make_backend(server, model="not-a-local-model")
    with pytest.raises(NotImplementedError, match="tokenizer="):
        backend.score(["p"], ["r"])


def test_score_reports_failed_rows(server: FakeServer, tiny_model_dir: Path) -> None:
    backend = make_backend(server, tokenizer=str(tiny_model_dir), max_retries=0)
    prompt = render_plain(build_messages("hi"), bos_token="<bos>")
    server.script(json.dumps(_pair_ids(tiny_model_dir, prompt, "no")), Reply(500, body=b"{}"))
    with pytest.raises(BackendError, match=r"1 of 2 rows .*row 1"):
        backend.score([prompt, prompt], ["yes", "no"])


def _pair_ids(model_dir: Path, prompt: str, response: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [
        *ids,
        *tokenizer(response, add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]


# -- event loop, settings, helpers ---------------------------------------------------------
def test_generate_works_inside_a_running_event_loop(server: FakeServer) -> None:
    backend = make_backend(server)

    async def caller() -> str:
        [result] = backend.generate(requests_for("a"), SAMPLING)
        return result.text

    assert asyncio.run(caller()) == "answer to a"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("concurrency", 0, "concurrency must be >= 1"),
        ("max_retries", -1, "max_retries must be >= 0"),
        ("timeout", 0, "timeout must be > 0"),
        ("endpoint", "responses", "endpoint must be one of chat, completions"),
        ("retry_backoff", -1.0, "retry_backoff must be >= 0"),
    ],
)
def test_bad_settings_are_rejected(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", **{option: value})


def test_openai_url_without_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini")


def test_environment_supplies_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = OpenAIBackend("m")
    assert backend.base_url == "http://127.0.0.1:9/v1"
    assert SECRET not in repr(backend)


def test_chat_render_is_the_plain_template(server: FakeServer) -> None:
    messages = build_messages("Say hi.")
    assert make_backend(server).render(messages) == "User: Say hi.\n\nAssistant:\n"


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert retry_after_seconds({"retry-after": in_ten}) == pytest.approx(10, abs=1.5)


def test_backoff_doubles_with_jitter_and_yields_to_retry_after() -> None:
    """Attempt a waits base * 2**(a-1) * U[0.5, 1.5), at most 60 s before jitter."""
    rng = random.Random(0)
    for attempt, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (9, 60.0)]:
        delays = [backoff_delay(attempt, base=0.5, retry_after=None, rng=rng) for _ in range(200)]
        assert 0.5 * nominal <= min(delays) and max(delays) < 1.5 * nominal
        assert max(delays) - min(delays) > 0.5 * nominal  # jitter really spreads them
    assert backoff_delay(3, base=0.5, retry_after=7.0, rng=rng) == 7.0
