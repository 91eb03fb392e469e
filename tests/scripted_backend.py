"""A scripted in-process ``Backend`` for stage tests: canned (or malformed) replies per prompt.

The script is a function ``reply(text, call)`` that gets the user message of a request and
how many times that same message was asked before (0 on the first call), and returns the
completion text. A reply of ``ScriptedBackend.ERROR`` becomes a backend error completion. So a
test can answer a row badly on its first call and well on the retry, and count afterwards
exactly which rows were asked how often::

    backend = ScriptedBackend(lambda text, call: "{}" if "row-2" in text and call == 0 else ok)
    ...
    assert backend.calls_for("row-2") == 2

``StructuredScriptedBackend`` also honours ``SamplingConfig.structured`` (the vLLM backends'
constrained decoding), returning the scripted reply when it is one of the choices and the
first choice otherwise, as a choice-constrained decoder would.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
    ScoreResult,
)
from mipo_engine.chat import Message

Script = Callable[[str, int], str]


def hashed_score_script(text: str, call: int) -> str:
    """A judge reply whose 1-5 score depends only on the prompt text (stable across runs)."""
    return f"Feedback: fine.\n[RESULT] {zlib.crc32(text.encode()) % 5 + 1}"


class Interrupted(Exception):
    """Raised by a backend told to stop after a number of requests (a simulated crash)."""


class ScriptedBackend(Backend):
    """Answers each request from a script; records every request it sees."""

    name = "scripted"
    ERROR = "<<backend-error>>"

    def __init__(
        self,
        reply: Script,
        *,
        delay: float = 0.0,
        stop_after: int | None = None,
    ) -> None:
        """``delay``: seconds to sleep per request; ``stop_after``: raise ``Interrupted`` once
        that many requests have been answered (their replies are lost, like a crash)."""
        super().__init__("scripted")
        self.reply = reply
        self.delay = delay
        self.stop_after = stop_after
        self.requests: list[GenerationRequest] = []
        self.samplings: list[SamplingConfig] = []
        self.batches: list[int] = []
        self._asked: Counter[str] = Counter()
        self.structured_calls = 0

    @staticmethod
    def text_of(messages: list[Message]) -> str:
        return "\n".join(message["content"] for message in messages)

    def render(self, messages: list[Message]) -> str:
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*turns, "Assistant:"])

    def _answer(self, request: GenerationRequest) -> str:
        if self.stop_after is not None and len(self.requests) >= self.stop_after:
            raise Interrupted(f"stopped after {self.stop_after} requests")
        if self.delay:
            time.sleep(self.delay)
        text = self.text_of(request.messages)
        call = self._asked[text]
        self._asked[text] += 1
        self.requests.append(request)
        return self.reply(text, call)

    def _completion(self, text: str) -> Completion:
        if text == self.ERROR:
            return Completion(text="", finish_reason="error", num_tokens=0, error="scripted error")
        return Completion(text=text, finish_reason="stop", num_tokens=len(text.split()))

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        self.samplings.append(sampling)
        self.batches.append(len(requests))
        completions = [self._completion(self._answer(request)) for request in requests]
        self.stats.requests += len(requests)
        return completions

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, max_length: int | None = None
    ) -> list[ScoreResult]:
        """A deterministic stand-in: -0.5 per whitespace token of the response."""
        return [
            ScoreResult(logp=-0.5 * len(response.split()), num_tokens=len(response.split()))
            for response in responses
        ]

    # -- inspection -----------------------------------------------------------------------
    @property
    def prompts(self) -> list[str]:
        """The user-message text of every request answered, in order."""
        return [self.text_of(request.messages) for request in self.requests]

    def calls_for(self, marker: str) -> int:
        """How many requests contained ``marker`` in their messages."""
        return sum(marker in text for text in self.prompts)

    def seeds_for(self, marker: str) -> list[int]:
        return [r.seed for r in self.requests if marker in self.text_of(r.messages)]


class StructuredScriptedBackend(ScriptedBackend):
    """A scripted backend with constrained generation (``supports_structured``).

    With ``choices`` a reply outside them becomes the first choice, as a choice-constrained
    decoder would; with ``json_schema`` the reply is returned as scripted (the schema is
    recorded in ``json_schemas``).
    """

    supports_structured = True

    def __init__(self, reply: Script, **options: object) -> None:
        super().__init__(reply, **options)  # type: ignore[arg-type]
        self.json_schemas: list[dict] = []

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        structured = sampling.structured
        completions = super().generate(requests, sampling)
        if structured is None:
            return completions
        self.structured_calls += 1
        if structured.json_schema is not None:
            self.json_schemas.append(structured.json_schema)
        choices = structured.choices
        for completion in completions:
            if choices and completion.finish_reason != "error" and completion.text not in choices:
                completion.text = choices[0]
        return completions
