"""Token ids for (prompt, response) pairs: one implementation for scoring and training.

The prompt and the response are tokenised separately and concatenated, so the boundary
between them is exact and the response's log-probability covers exactly its own tokens
(plus the end-of-sequence token that closes it). ``mipo score`` and ``mipo train`` both call
``encode_pair``; the step-0 invariant (policy == reference) depends on that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncodedPair:
    input_ids: list[int]
    response_start: int  # index of the first response token in input_ids

    @property
    def response_tokens(self) -> int:
        return len(self.input_ids) - self.response_start


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Prompt ids; a BOS token is added unless the rendered text already carries it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
    return ids


def encode_response(tokenizer: Any, text: str, *, add_eos: bool = True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return ids


def encode_pair(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
) -> EncodedPair:
    """Ids of ``prompt + response``; over ``max_length`` the prompt loses tokens from its
    left (keeping the text nearest the answer), then the response is cut from the right."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = encode_response(tokenizer, response)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = max(max_length // 2, max_length - len(response_ids))
        if len(prompt_ids) > keep_prompt:
            prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return EncodedPair([*prompt_ids, *response_ids], len(prompt_ids))
