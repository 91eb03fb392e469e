"""Asking a model with validation and bounded retries.

Each query is asked once; only the queries whose reply the parser rejects (or that the
backend failed) are asked again, with a new seed derived from the global seed, the query's
key and the attempt, up to ``RetryPolicy.max_attempts`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from mipo_engine.artifacts.run import derive_seed
from mipo_engine.backends.base import Backend, Completion, GenerationRequest, SamplingConfig
from mipo_engine.chat import Message

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """One question for the model: ``key`` identifies the row and derives its seeds."""

    key: str
    messages: list[Message]


@dataclass
class Reply(Generic[T]):
    """The parsed answer to a query, or the reason the last attempt failed."""

    value: T | None = None
    raw: str | None = None
    error: str | None = "not attempted"
    attempts: int = 0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often to ask and with which sampling settings.

    The first attempt uses ``sampling`` (often greedy); later attempts use
    ``retry_temperature``, so a greedy model can give a different answer when asked again.
    """

    sampling: SamplingConfig
    retry_temperature: float = 0.7
    max_attempts: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def sampling_for(self, attempt: int) -> SamplingConfig:
        if attempt == 1:
            return self.sampling
        return replace(self.sampling, temperature=self.retry_temperature)

    def seed_for(self, key: str, attempt: int) -> int:
        return derive_seed(self.seed, key, attempt)


def _complete(
    backend: Backend,
    requests: list[GenerationRequest],
    sampling: SamplingConfig,
    choices: Sequence[str] | None,
    json_schema: dict[str, Any] | None,
) -> list[Completion]:
    """Generate, constrained to ``choices`` or ``json_schema`` when the backend supports
    structured output (the vLLM backends' ``generate_structured``); plainly otherwise."""
    if backend.supports_structured:
        if choices is not None:
            return backend.generate_structured(requests, sampling, choices=list(choices))
        if json_schema is not None:
            return backend.generate_structured(requests, sampling, json_schema=json_schema)
    return backend.generate(requests, sampling)


def ask_with_retries(
    backend: Backend,
    queries: Sequence[Query],
    parse: Callable[[str], T],
    policy: RetryPolicy,
    *,
    choices: Sequence[str] | None = None,
    json_schema: dict[str, Any] | None = None,
) -> list[Reply[T]]:
    """Ask every query, then ask again only those whose reply ``parse`` rejected.

    ``parse`` returns the value or raises ValueError with the reason. Each attempt is one
    batched backend call over the still-failing queries; attempt ``a`` of query ``q`` uses
    seed ``derive_seed(policy.seed, q.key, a)``. After ``policy.max_attempts`` a reply keeps
    ``value=None`` and the last reason in ``error``. ``choices`` or ``json_schema``
    constrain the reply on backends with structured output; ``parse`` still checks it.
    """
    replies: list[Reply[T]] = [Reply() for _ in queries]
    pending = list(range(len(queries)))
    for attempt in range(1, policy.max_attempts + 1):
        if not pending:
            break
        requests = [
            GenerationRequest(
                queries[i].key, queries[i].messages, policy.seed_for(queries[i].key, attempt)
            )
            for i in pending
        ]
        sampling = policy.sampling_for(attempt)
        completions = _complete(backend, requests, sampling, choices, json_schema)
        failed = []
        for index, completion in zip(pending, completions, strict=True):
            reply = replies[index]
            reply.attempts, reply.raw = attempt, completion.text
            if completion.finish_reason == "error":
                reply.error = completion.error or "the backend returned an error"
                failed.append(index)
                continue
            try:
                reply.value, reply.error = parse(completion.text), None
            except ValueError as error:
                reply.error = str(error)
                failed.append(index)
        pending = failed
    return replies
