"""The one interface every model backend implements: generate text, score text.

Stages speak to a backend only through ``Backend``: what a backend can do beyond plain
generation is declared here (``supports_structured``, ``supports_raw_text``) and asked through
these methods, never probed. ``registry.create_backend`` builds one by name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mipo_engine.chat import Message


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text (vLLM's structured outputs): one of ``choices``,
    or JSON matching ``json_schema``."""

    choices: Sequence[str] | None = None
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.json_schema is None):
            raise ValueError("pass exactly one of choices= or json_schema=")
        if self.choices is not None:
            if not self.choices or not all(isinstance(c, str) and c for c in self.choices):
                raise ValueError("choices must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choices", tuple(self.choices))


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Sampling settings shared by all backends (OpenAI-style names)."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens per completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (not included in the text)."""
    structured: StructuredOutput | None = None
    """Constrain the text to choices or a JSON schema; only backends with
    ``supports_structured`` honour it, the others raise."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_record(self) -> dict[str, Any]:
        """The settings as a manifest records them (``structured`` only when set)."""
        record = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
        }
        if self.structured is not None:
            choices, schema = self.structured.choices, self.structured.json_schema
            record["structured"] = (
                {"choices": list(choices)} if choices is not None else {"json_schema": schema}
            )
        return record


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce: the chat messages and the row's own sampling seed."""

    id: str
    messages: list[Message]
    seed: int


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop", "length", or "error"
    num_tokens: int
    error: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class ScoreResult:
    """Summed log-probability of a response's tokens given its prompt, and how many."""

    logp: float
    num_tokens: int


@dataclass
class BackendStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def check_score_inputs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """ValueError unless there is one response per prompt."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"score needs one response per prompt, got {len(prompts)} prompts "
            f"and {len(responses)} responses"
        )


class Backend(ABC):
    """A loaded model that can generate and score text.

    Subclasses implement ``render`` and ``generate``, and whichever optional abilities they
    have (each raises a clear error here otherwise): ``score``, structured generation
    (``supports_structured``), raw-text completion and continuation log-probs
    (``supports_raw_text``), and ``default_stop``.
    """

    name: str = "base"
    supports_structured: bool = False
    """Whether ``generate`` honours ``SamplingConfig.structured`` (constrained decoding)."""
    supports_raw_text: bool = False
    """Whether the model runs here with its tokenizer at hand, so that ``complete_raw`` and
    ``continuation_logprobs`` work (benchmark prompts are raw text, not chats)."""
    tokenizer: Any = None
    """The Hugging Face tokenizer prompts are encoded with, where the backend holds one."""

    def __init__(self, model: str) -> None:
        self.model_name = model
        self.stats = BackendStats()

    @abstractmethod
    def render(self, messages: list[Message]) -> str:
        """The exact conditioning text for ``messages`` (chat template applied)."""

    # -- generation -----------------------------------------------------------------------
    def default_stop(self) -> tuple[str, ...]:
        """Stop strings used when the caller gives none (the plain template's turn
        markers, for models without a template of their own); none by default."""
        return ()

    def stop_strings(self, sampling: SamplingConfig) -> tuple[str, ...]:
        """The strings a completion ends on: the caller's, else ``default_stop()``; under a
        structured constraint only the caller's (the constraint ends the text)."""
        if sampling.stop:
            return tuple(sampling.stop)
        return () if sampling.structured is not None else self.default_stop()

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        """One completion per request, in request order. A backend without
        ``supports_structured`` calls ``check_sampling`` first."""

    def check_sampling(self, sampling: SamplingConfig) -> None:
        """Raise when ``sampling`` asks for what this backend cannot do."""
        if sampling.structured is not None and not self.supports_structured:
            raise NotImplementedError(
                f"the {self.name} backend cannot constrain generation to choices or a JSON "
                "schema (structured outputs); use the vllm or openai backend, or generate "
                "without SamplingConfig.structured and validate the text"
            )

    def generate_structured(
        self,
        requests: Sequence[GenerationRequest],
        sampling: SamplingConfig,
        choices: Sequence[str] | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> list[Completion]:
        """``generate`` with ``sampling.structured`` set to one of ``choices`` or to JSON
        matching ``json_schema`` (exactly one of them)."""
        structured = StructuredOutput(choices=choices, json_schema=json_schema)
        constrained = replace(sampling, structured=structured)
        self.check_sampling(constrained)
        return self.generate(requests, constrained)

    def complete_raw(
        self, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Completion]:
        """One completion of each raw prompt text (used as is: no chat template, no default
        stop strings), in input order; ``seeds`` holds one sampling seed per text."""
        raise NotImplementedError(f"the {self.name} backend cannot complete raw text")

    # -- log-probabilities ----------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int | None = None,
    ) -> list[ScoreResult]:
        """log pi(response | prompt) summed over response tokens, for rendered prompts; over
        ``max_length`` tokens a pair is cut by ``modeling.tokenization.encode_pair``'s rule."""
        raise NotImplementedError(f"the {self.name} backend cannot score text")

    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        *,
        batch_size: int | None = None,
    ) -> list[list[float]]:
        """log pi(continuation | context) summed over its tokens, for each context's options
        (token ids, BOS included in the context). ``batch_size``: sequences per forward pass
        where the backend batches them itself (default: its own setting)."""
        raise NotImplementedError(f"the {self.name} backend cannot read continuation log-probs")

    # -- description and lifetime ---------------------------------------------------------
    def resolved_settings(self) -> dict[str, object]:
        """Settings the backend chose itself (an ``auto`` dtype, say), for a run's manifest."""
        return {}

    def without_adapter(self) -> Backend | None:
        """The same loaded model with its LoRA adapter switched off, sharing this backend's
        memory, or None when the backend cannot do that (callers then load the base model
        separately). Closing the view does nothing; closing this backend frees both."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
