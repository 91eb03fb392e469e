"""The one interface every model backend implements: generate text and score text.

Stages speak to a backend only through ``Backend``; ``create_backend`` picks the
implementation by name (``hf``, ``vllm``, ``openai``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from mipo_engine.chat import Message


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


class Backend(ABC):
    """A loaded model that can generate and score text."""

    name: str = "base"

    def __init__(self, model: str) -> None:
        self.model_name = model
        self.stats = BackendStats()

    @abstractmethod
    def render(self, messages: list[Message]) -> str:
        """The exact conditioning text for ``messages`` (chat template applied)."""

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        """One completion per request, in request order."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[ScoreResult]:
        """log pi(response | prompt) summed over response tokens, for rendered prompts."""
        raise NotImplementedError(f"the {self.name} backend cannot score text")

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


BACKEND_NAMES = ("hf", "vllm", "openai")


def create_backend(name: str, model: str | None, **options: object) -> Backend:
    """Build the backend ``name`` for ``model`` (``None``: the default model)."""
    if name == "hf":
        from mipo_engine.backends.hf import HFBackend

        return HFBackend(model, **options)  # type: ignore[arg-type]
    if name == "vllm":
        from mipo_engine.backends.vllm import VLLMBackend

        return VLLMBackend(model, **options)  # type: ignore[arg-type]
    if name == "openai":
        from mipo_engine.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
