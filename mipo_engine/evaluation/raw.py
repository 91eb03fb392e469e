"""Raw-text completion and continuation log-probs, for the benchmark prompts of ``mipo eval``.

The benchmark prompts (8-shot math, zero-shot MCQ; seed 004 App. C.1/C.3) are plain
completion prompts, not chats, and the MCQ entropy needs the log-probs of a few given tokens
at one position. Backends that run the model in this process offer both
(``Backend.supports_raw_text``: ``complete_raw`` and ``continuation_logprobs``); these helpers
check the input and give the one clear error for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mipo_engine.backends.base import Backend, Completion, SamplingConfig
from mipo_engine.backends.registry import LOCAL_BACKEND_NAMES
from mipo_engine.errors import ConfigError


def check_raw_support(backend: Backend) -> None:
    """ConfigError unless ``backend`` can run raw-text prompts and read next-token log-probs."""
    if not backend.supports_raw_text:
        raise ConfigError(
            f"the {backend.name} backend cannot run benchmark prompts (raw text and answer "
            f"log-probs are needed); use one of {', '.join(LOCAL_BACKEND_NAMES)}",
            key="backend",
        )


def backend_tokenizer(backend: Backend) -> Any:
    """The Hugging Face tokenizer a local backend encodes prompts with."""
    check_raw_support(backend)
    return backend.tokenizer


def with_bos(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    """``token_ids`` with the BOS token in front, as ``encode_prompt`` gives prompts."""
    bos = tokenizer.bos_token_id
    if bos is not None and (not token_ids or token_ids[0] != bos):
        return [bos, *token_ids]
    return list(token_ids)


def complete_raw(
    backend: Backend, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
) -> list[Completion]:
    """One completion of each raw prompt text (no chat template), in input order."""
    check_raw_support(backend)
    if len(texts) != len(seeds):
        raise ValueError(f"got {len(texts)} texts but {len(seeds)} seeds; pass one seed per text")
    if not texts:
        return []
    return backend.complete_raw(texts, seeds, sampling)


def continuation_logprobs(
    backend: Backend,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int | None = None,
) -> list[list[float]]:
    """log pi(continuation | context), summed over its tokens, for each context's options.

    ``contexts[i]`` are token ids (BOS included); ``continuations[i]`` the token-id
    sequences whose log-probabilities after ``contexts[i]`` are wanted (the answer letters).
    ``batch_size``: sequences per forward pass (default: the backend's own).
    """
    check_raw_support(backend)
    if len(contexts) != len(continuations):
        raise ValueError(
            f"got {len(contexts)} contexts but {len(continuations)} continuation lists; "
            "pass one list per context"
        )
    if not contexts:
        return []
    return backend.continuation_logprobs(contexts, continuations, batch_size=batch_size)
