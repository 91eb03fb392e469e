"""OpenAI-compatible backend: any server that speaks ``/v1/chat/completions`` or ``/v1/completions``
(``vllm serve``, llama.cpp's server, OpenAI itself).

Requests run concurrently on an ``AsyncOpenAI`` client, at most ``concurrency`` at a time. The
client's own retries are off; this module retries each request itself (exponential backoff with
jitter, honouring ``Retry-After``), so every retry is counted in ``stats`` and a row that still
fails comes back as ``Completion(finish_reason="error", error=...)`` instead of raising. The
caller retries only those rows by calling ``generate`` again with them.

The API key is held as a ``SecretStr``: it is never logged, printed, put in ``repr`` or in an
error message (server messages that echo it are redacted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

from pydantic import SecretStr
from rich.progress import Progress

from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
    ScoreResult,
    StructuredOutput,
    check_score_inputs,
)
from mipo_engine.chat import DEFAULT_STOP, Message, default_chat_template, render_chat, render_plain
from mipo_engine.errors import BackendError
from mipo_engine.modeling.tokenization import encode_pair, encode_prompt

Endpoint = Literal["chat", "completions"]
ENDPOINTS: tuple[str, ...] = ("chat", "completions")
OPENAI_URL = "https://api.openai.com/v1"
# Local servers (vLLM, llama.cpp) accept any key; the client insists on having one.
PLACEHOLDER_KEY = "EMPTY"
# A server asking for a longer pause than this is treated as a failed row, not waited on.
MAX_RETRY_AFTER_S = 300.0
# Failure kinds that say the server or the settings are wrong, not the row: when every row
# of a call fails with one of these, ``generate`` raises ``BackendError`` instead.
FATAL_KINDS = frozenset({"auth", "not_found", "connection"})
ERROR_TEXT_LIMIT = 200

T = TypeVar("T")


def vllm_structured_fields(structured: StructuredOutput) -> dict[str, Any]:
    """The request body fields vLLM's servers read for a constraint (``structured_outputs``)."""
    if structured.choices is not None:
        return {"structured_outputs": {"choice": list(structured.choices)}}
    return {"structured_outputs": {"json": structured.json_schema}}


class RequestFailure(Exception):
    """One failed attempt, classified: ``kind`` for stats, ``reason`` for the row's error."""

    def __init__(
        self, kind: str, reason: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``retry-after`` in seconds or
    as an HTTP date); ``None`` when absent or unreadable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def backoff_delay(
    attempt: int, *, base: float, retry_after: float | None, rng: random.Random
) -> float:
    """Pause before retry number ``attempt`` (1-based).

    A server's ``Retry-After`` wins; otherwise ``base * 2**(attempt-1)``, capped at 60 s, times a
    jitter factor in [0.5, 1.5) so concurrent rows do not retry in lock-step.
    """
    if retry_after is not None:
        return retry_after
    return min(60.0, base * 2 ** (attempt - 1)) * (0.5 + rng.random())


def classify_error(error: Exception, timeout: float) -> RequestFailure:
    """Turn an exception from the client into a ``RequestFailure`` (kind, reason, retryable)."""
    import openai

    if isinstance(error, RequestFailure):
        return error
    if isinstance(error, openai.APITimeoutError):
        return RequestFailure("timeout", f"no answer within {timeout:g} s", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return RequestFailure("connection", f"connection failed: {cause}", retryable=True)
    if isinstance(error, openai.APIStatusError):
        return _classify_status(error)
    if isinstance(error, openai.APIResponseValidationError | ValueError):
        # json.JSONDecodeError is a ValueError: the body was not the JSON it claimed to be.
        return RequestFailure("malformed_response", f"unreadable response: {error}", retryable=True)
    raise error


def _classify_status(error: Any) -> RequestFailure:
    status = error.status_code
    detail = f"HTTP {status}: {_status_message(error)}"
    retry_after = retry_after_seconds(error.response.headers)
    if status == 429:
        return RequestFailure("rate_limit", detail, retryable=True, retry_after=retry_after)
    if status >= 500 or status in (408, 409):
        kind = "server_error" if status >= 500 else "transient"
        return RequestFailure(kind, detail, retryable=True, retry_after=retry_after)
    kind = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "bad_request")
    return RequestFailure(kind, detail, retryable=False)


def _status_message(error: Any) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)
    return str(error.message)


def run_sync(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code.

    With no event loop running (the CLI) this is ``asyncio.run``; inside a running loop (a
    notebook, an async caller) the coroutine runs on its own loop in a worker thread, because
    ``asyncio.run`` refuses to nest.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


class OpenAIBackend(Backend):
    """Generation (and, where the server allows, scoring) through an OpenAI-compatible API."""

    name = "openai"
    supports_structured = True

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 120.0,
        endpoint: Endpoint = "chat",
        tokenizer: str | None = None,
        retry_backoff: float = 1.0,
        show_progress: bool = True,
    ) -> None:
        """Settings (all keyword-only except ``model``):

        - ``model``: the model name the server knows; ``None`` asks the server (``/models``)
          and uses the first model it lists.
        - ``base_url``: server root ending in ``/v1``; default ``$OPENAI_BASE_URL``, else OpenAI.
        - ``api_key``: default ``$OPENAI_API_KEY``, else ``"EMPTY"`` (fine for local servers).
        - ``concurrency``: requests in flight at once.
        - ``max_retries``: retries per request after the first attempt.
        - ``timeout``: seconds to wait for one response.
        - ``endpoint``: ``chat`` (the server applies its chat template) or ``completions`` (the
          prompt is rendered here with the model's tokenizer and sent as token ids).
        - ``tokenizer``: path or hub id of the tokenizer for ``completions`` and ``score``;
          default: ``model``, when it loads locally.
        - ``retry_backoff``: base pause in seconds between retries (doubles each retry).
        """
        _validate_settings(concurrency, max_retries, timeout, endpoint, retry_backoff)
        super().__init__(model or "default")
        self.requested_model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and self.base_url == OPENAI_URL:
            raise ValueError(
                "no API key for api.openai.com: set OPENAI_API_KEY or pass api_key=, "
                "or point base_url= at a local server"
            )
        self._api_key = SecretStr(key or PLACEHOLDER_KEY)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.endpoint: Endpoint = endpoint
        self.tokenizer_name = tokenizer
        self.retry_backoff = retry_backoff
        self.show_progress = show_progress
        self._served_model: str | None = model
        self._server_is_vllm: bool | None = None
        self._tokenizer: Any = None
        self._tokenizer_tried = False
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self._served_model or self.requested_model!r}, "
            f"base_url={self.base_url!r}, endpoint={self.endpoint!r}, "
            f"concurrency={self.concurrency}, max_retries={self.max_retries})"
        )

    # -- rendering ------------------------------------------------------------------------
    def render(self, messages: list[Message]) -> str:
        """The conditioning text for ``messages``.

        ``chat``: the server applies its own template, so this is the project's plain default
        template (exact when the server runs with ``--chat-template`` set to it, as for base
        models). ``completions``: the model's tokenizer renders it here (same text as the hf
        backend); without a local tokenizer, the plain template.
        """
        tokenizer = self.local_tokenizer() if self.endpoint == "completions" else None
        if tokenizer is None:
            return render_plain(messages)
        return render_chat(tokenizer, messages)

    def local_tokenizer(self) -> Any:
        """The model's tokenizer when it loads from disk or the local cache, else ``None``."""
        if not self._tokenizer_tried:
            self._tokenizer_tried = True
            name = self.tokenizer_name or self.served_model()
            self._tokenizer = _load_tokenizer(name, required=self.tokenizer_name is not None)
        return self._tokenizer

    def default_stop(self) -> tuple[str, ...]:
        """Turn markers of the plain template, when that template is the one in use."""
        tokenizer = self.local_tokenizer() if self.endpoint == "completions" else None
        if tokenizer is None or tokenizer.chat_template == default_chat_template():
            return DEFAULT_STOP
        return ()

    # -- server discovery -----------------------------------------------------------------
    def served_model(self) -> str:
        """The model name sent with each request (asked from the server when not given)."""
        if self._served_model is None or self._server_is_vllm is None:
            run_sync(self._discover)
        assert self._served_model is not None
        return self._served_model

    async def _discover(self) -> None:
        """List the server's models once: pick the model if none was given, and note whether
        the server is vLLM (its structured-output fields are then available)."""
        async with self._client() as client:
            try:
                page = await self._with_retries(client.models.list)
                models = list(page.data)
            except RequestFailure as failure:
                if self._served_model is None:
                    raise BackendError(
                        f"cannot list models at {self.base_url} ({failure.reason}); "
                        "pass the model name explicitly"
                    ) from None
                self._server_is_vllm = False
                return
        if self._served_model is None:
            if not models:
                raise BackendError(f"the server at {self.base_url} lists no models")
            self._served_model = models[0].id
            self.model_name = self._served_model
        self._server_is_vllm = any(
            getattr(m, "owned_by", None) == "vllm" and m.id == self._served_model for m in models
        )

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (counted, bounded, per row), so the client's own are off.
        return AsyncOpenAI(
            api_key=self._api_key.get_secret_value(),
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout,
        )

    # -- generation -----------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        """Completions from the server. ``sampling.structured`` is enforced by vLLM servers
        (``structured_outputs``); other servers get a plain request, so callers must still
        validate the text."""
        if not requests:
            return []
        self.served_model()
        prompts = self._prompts(requests)
        stop = self.stop_strings(sampling)
        structured = sampling.structured
        extra = vllm_structured_fields(structured) if structured and self._server_is_vllm else None
        rows = run_sync(lambda: self._generate_all(requests, prompts, sampling, stop, extra))
        self._raise_if_all_fatal(rows)
        return [completion for completion, _ in rows]

    def _prompts(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        """What each request sends: chat messages, or rendered prompt token ids (text when no
        tokenizer is at hand)."""
        if self.endpoint == "chat":
            return [list(r.messages) for r in requests]
        tokenizer = self.local_tokenizer()
        texts = [self.render(r.messages) for r in requests]
        if tokenizer is None:
            return texts
        # Token ids, so the server does not add a second BOS to a prompt that carries one.
        return [encode_prompt(tokenizer, text) for text in texts]

    async def _generate_all(
        self,
        requests: Sequence[GenerationRequest],
        prompts: list[Any],
        sampling: SamplingConfig,
        stop: tuple[str, ...],
        extra: dict[str, Any] | None,
    ) -> list[tuple[Completion, str | None]]:
        """Each request's completion and, for a failed row, its failure kind."""
        semaphore = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            with Progress(disable=not self.show_progress, transient=True) as progress:
                task = progress.add_task("generating", total=len(requests))

                async def one(
                    request: GenerationRequest, prompt: Any
                ) -> tuple[Completion, str | None]:
                    async with semaphore:
                        row = await self._complete_row(
                            client, request, prompt, sampling, stop, extra
                        )
                    progress.advance(task)
                    return row

                rows = [one(r, p) for r, p in zip(requests, prompts, strict=True)]
                return list(await asyncio.gather(*rows))

    async def _complete_row(
        self,
        client: Any,
        request: GenerationRequest,
        prompt: Any,
        sampling: SamplingConfig,
        stop: tuple[str, ...],
        extra: dict[str, Any] | None,
    ) -> tuple[Completion, str | None]:
        self.stats.requests += 1
        fields: dict[str, Any] = {
            "model": self._served_model,
            "seed": request.seed,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "n": 1,
        }
        if stop:
            fields["stop"] = list(stop)
        if extra:
            fields["extra_body"] = extra
        attempts = 0

        async def attempt() -> Completion:
            nonlocal attempts
            attempts += 1
            if self.endpoint == "chat":
                response = await client.chat.completions.create(messages=prompt, **fields)
            else:
                response = await client.completions.create(prompt=prompt, **fields)
            return self._read_completion(response)

        try:
            completion = await self._with_retries(attempt)
        except RequestFailure as failure:
            self.stats.failures += 1
            failed = Completion(
                text="",
                finish_reason="error",
                num_tokens=0,
                error=failure.reason,
                attempts=attempts,
            )
            return failed, failure.kind
        completion.attempts = attempts
        return completion, None

    def _read_completion(self, response: Any) -> Completion:
        """Text, finish reason and token count of a response; ``RequestFailure`` when the
        response lacks them."""
        try:
            choice = response.choices[0]
            text = choice.message.content if self.endpoint == "chat" else choice.text
            if not isinstance(text, str):
                raise TypeError(f"completion text is {type(text).__name__}, not str")
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError, KeyError) as error:
            raise RequestFailure(
                "malformed_response", f"response without a completion: {error}", retryable=True
            ) from None
        if finish not in ("stop", "length"):
            raise RequestFailure("unexpected_finish", f"finish_reason {finish!r}", retryable=False)
        return Completion(
            text=text.strip(), finish_reason=finish, num_tokens=self._count_tokens(response, text)
        )

    def _count_tokens(self, response: Any, text: str) -> int:
        usage = getattr(response, "usage", None)
        count = getattr(usage, "completion_tokens", None)
        if isinstance(count, int):
            return count
        tokenizer = self._tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else 0

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with up to ``max_retries`` retries of retryable failures; the last
        failure is raised as ``RequestFailure`` with its reason redacted."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except Exception as error:  # classified below; unknown errors re-raise
                failure = classify_error(error, self.timeout)
            failure.reason = self._redact(failure.reason)[:ERROR_TEXT_LIMIT]
            self.stats.errors[failure.kind] = self.stats.errors.get(failure.kind, 0) + 1
            too_long = failure.retry_after is not None and failure.retry_after > MAX_RETRY_AFTER_S
            if not failure.retryable or attempt > self.max_retries or too_long:
                raise failure from None
            self.stats.retries += 1
            delay = backoff_delay(
                attempt, base=self.retry_backoff, retry_after=failure.retry_after, rng=self._rng
            )
            await asyncio.sleep(delay)

    def _redact(self, text: str) -> str:
        secret = self._api_key.get_secret_value()
        if secret and secret != PLACEHOLDER_KEY:
            text = text.replace(secret, "***")
        return text

    def _raise_if_all_fatal(self, rows: list[tuple[Completion, str | None]]) -> None:
        """Every row failing with an auth, not-found or connection error means the settings
        or the server are wrong: retrying rows cannot help, so say so once."""
        if all(kind in FATAL_KINDS for _, kind in rows):
            raise BackendError(
                f"every request to {self.base_url} failed: {rows[0][0].error} "
                "(check base_url, api_key and the model name, and that the server is up)"
            )

    # -- scoring --------------------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int | None = None,
    ) -> list[ScoreResult]:
        """log pi(response | prompt) through the completions endpoint (``echo=True``,
        ``logprobs=1``): the server returns each prompt token's log-probability, and the
        response's tokens (``encode_pair`` boundaries, as in the hf backend) are summed.

        Needs the model's tokenizer locally and a server that echoes prompt log-probs (vLLM
        does; OpenAI's current models do not). Raises ``BackendError`` naming the rows that
        still fail after retries.
        """
        check_score_inputs(prompts, responses)
        if not prompts:
            return []
        self.served_model()
        tokenizer = self.local_tokenizer()
        if tokenizer is None:
            raise NotImplementedError(
                "scoring over an OpenAI-compatible server needs the model's tokenizer locally, "
                "to split prompt and response tokens exactly: pass tokenizer=<path or hub id>"
            )
        pairs = [
            encode_pair(tokenizer, p, r, max_length=max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        results = run_sync(lambda: self._score_all(pairs))
        failed = [i for i, r in enumerate(results) if isinstance(r, RequestFailure)]
        if failed:
            first = results[failed[0]]
            assert isinstance(first, RequestFailure)
            raise BackendError(
                f"scoring failed for {len(failed)} of {len(pairs)} rows (first: row {failed[0]}, "
                f"{first.reason}); the server must support echo=True with logprobs"
            )
        return [r for r in results if isinstance(r, ScoreResult)]

    async def _score_all(self, pairs: list[Any]) -> list[ScoreResult | RequestFailure]:
        semaphore = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:

            async def one(pair: Any) -> ScoreResult | RequestFailure:
                async with semaphore:
                    self.stats.requests += 1
                    try:
                        return await self._with_retries(lambda: self._score_pair(client, pair))
                    except RequestFailure as failure:
                        self.stats.failures += 1
                        return failure

            return list(await asyncio.gather(*(one(p) for p in pairs)))

    async def _score_pair(self, client: Any, pair: Any) -> ScoreResult:
        response = await client.completions.create(
            model=self._served_model,
            prompt=pair.input_ids,
            echo=True,
            logprobs=1,
            max_tokens=1,
            temperature=0.0,
        )
        return response_logp(response, pair.input_ids, pair.response_start)


def response_logp(response: Any, input_ids: list[int], response_start: int) -> ScoreResult:
    """Sum of the echoed log-probs of ``input_ids[response_start:]`` in a completions response.

    With ``echo=True`` the response's ``token_logprobs`` list starts with the prompt's tokens
    (the first is ``None``: nothing predicts it), then the generated ones, which are ignored.
    """
    try:
        logprobs = response.choices[0].logprobs.token_logprobs
        values = [logprobs[i] for i in range(response_start, len(input_ids))]
    except (AttributeError, IndexError, TypeError) as error:
        raise RequestFailure(
            "malformed_response", f"no echoed prompt log-probs: {error}", retryable=False
        ) from None
    if response_start < 1 or any(not isinstance(v, int | float) for v in values):
        raise RequestFailure(
            "malformed_response", "echoed log-probs missing for response tokens", retryable=False
        )
    return ScoreResult(logp=float(sum(values)), num_tokens=len(values))


def _load_tokenizer(name: str, *, required: bool) -> Any:
    """``AutoTokenizer`` for ``name`` from disk or the local cache only (no download)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        if required:
            raise BackendError(f"cannot load tokenizer {name!r}: {error}") from None
        return None


def _validate_settings(
    concurrency: int, max_retries: int, timeout: float, endpoint: str, retry_backoff: float
) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    if retry_backoff < 0:
        raise ValueError(f"retry_backoff must be >= 0 seconds, got {retry_backoff}")
