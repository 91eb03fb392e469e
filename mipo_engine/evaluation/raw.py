"""Raw-text completion and next-token log-probs, for the benchmark prompts of ``mipo eval``.

The benchmark prompts (8-shot math, zero-shot MCQ; seed 004 App. C.1/C.3) are plain
completion prompts, not chats, and the MCQ entropy needs the log-probs of a few given tokens
at one position. The ``Backend`` interface speaks chat messages and scores whole responses,
so this module reaches into the two local backends:

- ``hf``: ``HFBackend.model`` / ``.tokenizer`` and its batched ``_generate_batch``;
- ``vllm``: ``VLLMBackend.llm`` (the ``vllm.LLM`` engine), ``.tokenizer``, ``.lora_request``
  and its ``_completion`` conversion.

INTERNALS: both paths depend on backend attributes that are not part of ``Backend``. The
clean fix is a ``raw: bool`` field on ``GenerationRequest`` (text used as is, no chat template)
plus a ``continuation_logprobs(token_ids, options)`` backend method; until then these helpers
are the one place that knows the internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mipo_engine.backends.base import Backend, Completion, SamplingConfig
from mipo_engine.errors import ConfigError
from mipo_engine.modeling.tokenization import encode_prompt

RAW_BACKENDS = ("hf", "vllm")


def check_raw_support(backend: Backend) -> None:
    """ConfigError unless ``backend`` can run raw-text prompts and read next-token log-probs."""
    if backend.name not in RAW_BACKENDS:
        raise ConfigError(
            f"the {backend.name} backend cannot run benchmark prompts (raw text and answer "
            f"log-probs are needed); use one of {', '.join(RAW_BACKENDS)}",
            key="backend",
        )


def backend_tokenizer(backend: Backend) -> Any:
    """The Hugging Face tokenizer a local backend encodes prompts with."""
    check_raw_support(backend)
    return backend.tokenizer  # type: ignore[attr-defined]


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
    if backend.name == "hf":
        return _complete_hf(backend, texts, seeds, sampling)
    return _complete_vllm(backend, texts, seeds, sampling)


def _complete_hf(
    backend: Any, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
) -> list[Completion]:
    """Length-sorted batches through ``HFBackend._generate_batch`` (its left-padded generate)."""
    encoded = [encode_prompt(backend.tokenizer, text) for text in texts]
    order = sorted(range(len(texts)), key=lambda index: -len(encoded[index]))
    results: list[Completion | None] = [None] * len(texts)
    for start in range(0, len(order), backend.batch_size):
        batch = order[start : start + backend.batch_size]
        outputs = backend._generate_batch(
            [encoded[i] for i in batch], [seeds[i] for i in batch], sampling, sampling.stop
        )
        for index, completion in zip(batch, outputs, strict=True):
            results[index] = completion
    backend.stats.requests += len(texts)
    return [result for result in results if result is not None]


def _complete_vllm(
    backend: Any, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
) -> list[Completion]:
    """All prompts, as token ids, in one ``LLM.generate`` call (vLLM keeps input order)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=encode_prompt(backend.tokenizer, t)) for t in texts]
    params = [
        SamplingParams(
            n=1,
            seed=int(seed),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
        )
        for seed in seeds
    ]
    outputs = backend.llm.generate(
        prompts, params, use_tqdm=False, lora_request=backend.lora_request
    )
    backend.stats.requests += len(texts)
    # The backend's own conversion counts tokens the way the hf backend does.
    return [backend._completion(output.outputs[0], sampling) for output in outputs]


def continuation_logprobs(
    backend: Backend,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int = 8,
) -> list[list[float]]:
    """log pi(continuation | context), summed over its tokens, for each context's options.

    ``contexts[i]`` are token ids (BOS included); ``continuations[i]`` the token-id
    sequences whose log-probabilities after ``contexts[i]`` are wanted (the answer letters).
    When every continuation is a single token, one forward pass per context reads them all
    from the next-token distribution.
    """
    check_raw_support(backend)
    if len(contexts) != len(continuations):
        raise ValueError(
            f"got {len(contexts)} contexts but {len(continuations)} continuation lists; "
            "pass one list per context"
        )
    if not contexts:
        return []
    if backend.name == "vllm":
        return _continuation_logprobs_vllm(backend, contexts, continuations)
    model = backend.model  # type: ignore[attr-defined]
    pad = backend.tokenizer.pad_token_id  # type: ignore[attr-defined]
    if all(len(option) == 1 for options in continuations for option in options):
        candidates = [[option[0] for option in options] for options in continuations]
        return next_token_logprobs(model, contexts, candidates, pad_id=pad, batch_size=batch_size)
    return _sequence_continuation_logprobs(model, contexts, continuations, pad, batch_size)


def _left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), left-padded so that rows end together.

    Position ids count real tokens only, so a padded row sees the positions it would see
    alone and padding changes nothing but rounding.
    """
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
        attention[row, width - len(sequence) :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attention, positions


def _last_logprobs(model: Any, sequences: Sequence[Sequence[int]], pad_id: int, keep: int) -> Any:
    """Log-softmax over the vocabulary at the last ``keep`` positions of each row: (B, keep, V).

    Only those positions' logits are computed (``logits_to_keep``): full logits for a
    262k-token vocabulary would take gigabytes.
    """
    device = next(model.parameters()).device
    ids, attention, positions = _left_padded(sequences, pad_id)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        logits_to_keep=keep,
    ).logits
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def next_token_logprobs(
    model: Any,
    contexts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
) -> list[list[float]]:
    """Next-token log-probs of the given tokens after each context (a transformers model)."""
    order = sorted(range(len(contexts)), key=lambda index: -len(contexts[index]))
    results: list[list[float] | None] = [None] * len(contexts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        logprobs = _last_logprobs(model, [contexts[i] for i in batch], pad_id, keep=1)[:, -1]
        for row, index in enumerate(batch):
            wanted = torch.tensor(list(candidates[index]), device=logprobs.device)
            results[index] = logprobs[row, wanted].tolist()
    return [result for result in results if result is not None]


@torch.no_grad()
def _sequence_continuation_logprobs(
    model: Any,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    batch_size: int,
) -> list[list[float]]:
    """Summed log-probs of multi-token continuations: one row per (context, option)."""
    rows = [
        (index, option, [*contexts[index], *continuations[index][option]])
        for index in range(len(contexts))
        for option in range(len(continuations[index]))
    ]
    rows.sort(key=lambda row: -len(row[2]))
    results = [[0.0] * len(options) for options in continuations]
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        keep = max(len(continuations[index][option]) for index, option, _ in batch) + 1
        logprobs = _last_logprobs(model, [sequence for *_, sequence in batch], pad_id, keep)
        for row, (index, option, _) in enumerate(batch):
            tokens = continuations[index][option]
            # Position -1 predicts the token after the sequence; token t of the continuation
            # (0-based, n tokens) is predicted at position t - n - 1.
            total = sum(
                logprobs[row, position - len(tokens) - 1, token].item()
                for position, token in enumerate(tokens)
            )
            results[index][option] = total
    return results


def _continuation_logprobs_vllm(
    backend: Any,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
) -> list[list[float]]:
    """Prompt log-probs of ``context + continuation``, one request per option.

    vLLM returns only the top-k tokens of a generated position, which may miss a letter;
    the log-prob of a token *in the prompt* is always returned (``prompt_logprobs=0``), and
    prefix caching makes the shared context cheap.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts, owners = [], []
    for index, (context, options) in enumerate(zip(contexts, continuations, strict=True)):
        for option in options:
            prompts.append(TokensPrompt(prompt_token_ids=[*context, *option]))
            owners.append((index, list(option)))
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    outputs = backend.llm.generate(
        prompts, params, use_tqdm=False, lora_request=backend.lora_request
    )
    results: list[list[float]] = [[] for _ in contexts]
    for (index, option), output in zip(owners, outputs, strict=True):
        positions = output.prompt_logprobs[len(output.prompt_logprobs) - len(option) :]
        results[index].append(
            sum(entry[token].logprob for entry, token in zip(positions, option, strict=True))
        )
    return results
