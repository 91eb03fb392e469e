"""transformers backend: batched, length-sorted generation and scoring on CPU or CUDA.

Sampling is reproducible per row: each request carries its own seed, and the sampler draws
one uniform per row and step from a generator seeded with it (inverse-CDF sampling over the
row's nucleus), so a row's completion does not depend on which other rows share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import Progress

from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
    ScoreResult,
)
from mipo_engine.chat import (
    DEFAULT_STOP,
    Message,
    default_chat_template,
    ensure_chat_template,
    render_chat,
)
from mipo_engine.errors import BackendError
from mipo_engine.modeling.continuations import (
    next_token_logprobs,
    sequence_continuation_logprobs,
)
from mipo_engine.modeling.logps import attention_window, sequence_logps, shared_prompt_logps
from mipo_engine.modeling.tokenization import encode_pair, encode_prompt
from mipo_engine.models import resolve_model


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm).

    On such CPUs torch's bf16 matrix products run about twice as fast as fp32 ones; without
    them bf16 is emulated and slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless asked otherwise (the dtype scores are computed in)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ValueError(
            f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}"
        ) from None


def pick_generation_dtype(generation_dtype: str, dtype: str, device: torch.device) -> torch.dtype:
    """The dtype generation runs in.

    ``auto`` follows an explicit ``dtype``; with ``dtype`` also ``auto`` it is bf16 on GPU and
    on CPUs with native bf16, fp32 on other CPUs. Sampled text does not need to match the
    trainer's log-probs, scores do: scoring keeps ``pick_dtype(dtype)``.
    """
    if generation_dtype != "auto":
        return pick_dtype(generation_dtype, device)
    if dtype != "auto":
        return pick_dtype(dtype, device)
    if device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu()):
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, model: str | None) -> Any:
    """The model's tokenizer, with the default template added when it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise BackendError(f"cannot load model {model or 'default'!r}: {error}") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_network(
    path: str,
    *,
    model: str | None,
    device: torch.device,
    dtype: torch.dtype,
    adapter: str | None = None,
    merge_adapter: bool = False,
) -> Any:
    """A causal LM in ``dtype`` on ``device``, in eval mode, with the adapter applied.

    ``merge_adapter`` folds the LoRA weights into the base weights (faster generation; the
    scoring copy keeps them apart, as training does).
    """
    from transformers import AutoModelForCausalLM

    try:
        network = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        raise BackendError(f"cannot load model {model or 'default'!r}: {error}") from None
    if adapter is not None:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter)
        if merge_adapter:
            network = network.merge_and_unload()
    return network.to(device).eval()


class _RowSeededSampler:
    """Logits processor that draws each row's next token itself, from its own generator.

    Temperature, then the top-p nucleus, then one uniform draw per row inverted through the
    nucleus's cumulative distribution: an exact draw from the renormalised top-p softmax of
    ``logits / T``. The returned scores are 0 at the drawn token and -inf elsewhere, so the
    greedy step of ``generate`` takes it. A row's draw depends only on its own logits and
    generator, never on which other rows share its batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        uniforms = torch.cat([torch.rand(1, generator=g) for g in self.generators])
        uniforms = uniforms.to(probs.device).unsqueeze(-1)
        if self.top_p < 1.0:
            head, tokens, kept = nucleus(probs, self.top_p)
        else:
            head, tokens, kept = probs, None, torch.full_like(uniforms, probs.shape[-1]).long()
        cdf = head.cumsum(dim=-1)
        position = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True)
        position = torch.minimum(position, kept - 1)
        chosen = position if tokens is None else tokens.gather(-1, position)
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(-1, chosen, 0.0)


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's top-p nucleus: a token is in it unless the probability mass of the tokens
    ranked above it already reaches ``top_p`` (the top token always is).

    Returns ``(head, tokens, kept)``: per row the probabilities in falling order and their
    token ids, ``kept`` (B, 1) of them in the nucleus and zeros after those (rows are padded
    to the widest). All rows are partially sorted to their top 64; a row whose nucleus is
    wider is widened alone (1,024, 16,384, then the whole vocabulary), in place: a full
    sort of a 262k-token row costs about 20 times its top 16,384.
    """
    rows, vocab = probs.shape
    heads: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    top, idx = _largest(probs, 64)
    for row in range(rows):
        row_top, row_idx = top[row], idx[row]
        widths = iter((1024, 16384, vocab))
        while True:
            before = row_top.cumsum(dim=-1) - row_top  # mass ranked above each entry
            if before[-1] >= top_p or len(row_top) == vocab:
                break
            row_top, row_idx = (t[0] for t in _largest(probs[row : row + 1], next(widths)))
        inside = int((before < top_p).sum())  # >= 1: the top entry has 0 before it
        heads.append(row_top[:inside])
        ids.append(row_idx[:inside])
    kept = torch.tensor([[len(h)] for h in heads], device=probs.device)
    width = int(kept.max())
    head = torch.zeros(rows, width, dtype=probs.dtype, device=probs.device)
    tokens = torch.zeros(rows, width, dtype=torch.long, device=probs.device)
    for row, (values, token_ids) in enumerate(zip(heads, ids, strict=True)):
        head[row, : len(values)] = values
        tokens[row, : len(values)] = token_ids
    return head, tokens, kept


def _largest(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row, descending, and their indices."""
    if 4 * k > probs.shape[-1]:  # a partial sort this wide is no cheaper than a full one
        return probs.sort(dim=-1, descending=True)
    return probs.topk(k, dim=-1)


class _StopOnStrings:
    """Stopping criterion: a row is done once its new text contains a stop string.

    Only the last few tokens are decoded each step; transformers' own stop-string support
    precomputes a table over the whole vocabulary, which takes minutes for 262k tokens.
    """

    def __init__(self, tokenizer: Any, prompt_width: int, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.stop = stop
        self.tail = 8 + max(len(s) for s in stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        tails = input_ids[:, max(self.prompt_width, input_ids.shape[1] - self.tail) :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend(Backend):
    """Generation and scoring with a transformers causal LM."""

    name = "hf"
    supports_raw_text = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        generation_dtype: str = "auto",
        batch_size: int = 8,
        adapter: str | None = None,
        show_progress: bool = True,
    ) -> None:
        """Settings (keyword-only except ``model``):

        - ``dtype``: the weights scores are computed in: ``auto`` (bf16 on GPU, fp32 on CPU,
          as ``mipo train`` uses), ``float32``, ``bfloat16`` or ``float16``.
        - ``generation_dtype``: the weights text is generated with: ``auto`` follows an
          explicit ``dtype``, else bf16 on GPU and on CPUs with native bf16, fp32 otherwise.
          When it differs from ``dtype``, each copy is loaded on first use (a run that only
          generates never holds the fp32 one).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = resolve_model(model)
        self.tokenizer = load_tokenizer(path, model)
        super().__init__(model or "default")
        self.model_path = path
        self.device = pick_device(device)
        self.score_dtype = pick_dtype(dtype, self.device)
        self.generation_dtype = pick_generation_dtype(generation_dtype, dtype, self.device)
        self.adapter = adapter
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._networks: dict[torch.dtype, Any] = {}

    @property
    def model(self) -> Any:
        """The network scores are computed with (``dtype``), loaded on first use."""
        return self._network(self.score_dtype)

    @property
    def generation_model(self) -> Any:
        """The network text is generated with (``generation_dtype``), loaded on first use."""
        return self._network(self.generation_dtype)

    def _network(self, dtype: torch.dtype) -> Any:
        if dtype not in self._networks:
            self._networks[dtype] = load_network(
                self.model_path,
                model=None if self.model_name == "default" else self.model_name,
                device=self.device,
                dtype=dtype,
                adapter=self.adapter,
                merge_adapter=dtype != self.score_dtype,
            )
        return self._networks[dtype]

    def render(self, messages: list[Message]) -> str:
        return render_chat(self.tokenizer, messages)

    def default_stop(self) -> tuple[str, ...]:
        uses_default = self.tokenizer.chat_template == default_chat_template()
        return DEFAULT_STOP if uses_default else ()

    # -- generation -----------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        self.check_sampling(sampling)
        encoded = [encode_prompt(self.tokenizer, self.render(r.messages)) for r in requests]
        seeds = [r.seed for r in requests]
        return self._generate_encoded(
            encoded, seeds, sampling, self.stop_strings(sampling), self.show_progress
        )

    def complete_raw(
        self, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Completion]:
        self.check_sampling(sampling)
        encoded = [encode_prompt(self.tokenizer, text) for text in texts]
        return self._generate_encoded(encoded, list(seeds), sampling, sampling.stop, False)

    def _generate_encoded(
        self,
        encoded: list[list[int]],
        seeds: list[int],
        sampling: SamplingConfig,
        stop: tuple[str, ...],
        show_progress: bool,
    ) -> list[Completion]:
        """Completions of prompt ids, in input order, in length-sorted batches."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(encoded)
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("generating", total=len(encoded))
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                outputs = self._generate_batch(
                    [encoded[i] for i in batch], [seeds[i] for i in batch], sampling, stop
                )
                for index, completion in zip(batch, outputs, strict=True):
                    results[index] = completion
                progress.advance(task, len(batch))
        self.stats.requests += len(encoded)
        return [r for r in results if r is not None]

    @torch.no_grad()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        seeds: list[int],
        sampling: SamplingConfig,
        stop: tuple[str, ...],
    ) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(_RowSeededSampler(seeds, sampling.temperature, sampling.top_p))
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            top_k=None,
            top_p=None,
            temperature=None,
        )
        stopping = StoppingCriteriaList(
            [_StopOnStrings(self.tokenizer, width, stop)] if stop else []
        )
        output = self.generation_model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=stopping,
        )
        new_tokens = output[:, width:].tolist()
        return [self._finish(tokens, sampling, stop) for tokens in new_tokens]

    def _finish(
        self, tokens: list[int], sampling: SamplingConfig, stop: tuple[str, ...]
    ) -> Completion:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        ended = False
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
            ended = True
        while tokens and tokens[-1] == pad and pad != eos:
            tokens.pop()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ended = True
        finish = "stop" if ended or len(tokens) < sampling.max_new_tokens else "length"
        return Completion(text=text.strip(), finish_reason=finish, num_tokens=len(tokens))

    # -- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int | None = None,
    ) -> list[ScoreResult]:
        pairs = [
            encode_pair(self.tokenizer, p, r, max_length=max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        window = attention_window(self.model)
        groups, singles = group_by_prompt(pairs, window)
        results: list[ScoreResult | None] = [None] * len(pairs)
        pad = self.tokenizer.pad_token_id
        with Progress(disable=not self.show_progress, transient=True) as progress:
            task = progress.add_task("scoring", total=len(pairs))
            for batch_groups in shared_prompt_batches(groups, pairs, self.batch_size, window):
                members = [i for group in batch_groups for i in group]
                first = [pairs[group[0]] for group in batch_groups]
                logps = shared_prompt_logps(
                    self.model,
                    [pair.input_ids[: pair.response_start] for pair in first],
                    [pairs[i].input_ids[pairs[i].response_start :] for i in members],
                    [g for g, group in enumerate(batch_groups) for _ in group],
                    pad,
                )
                for index, logp in zip(members, logps.tolist(), strict=True):
                    count = len(pairs[index].input_ids) - pairs[index].response_start
                    results[index] = ScoreResult(logp=logp, num_tokens=count)
                progress.advance(task, len(members))
            order = sorted(singles, key=lambda i: -len(pairs[i].input_ids))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                ids, attention, response = pad_pairs([pairs[i] for i in chunk], pad)
                logps, counts = sequence_logps(
                    self.model,
                    ids.to(self.device),
                    attention.to(self.device),
                    response.to(self.device),
                )
                for index, logp, count in zip(chunk, logps.tolist(), counts.tolist(), strict=True):
                    results[index] = ScoreResult(logp=logp, num_tokens=int(count))
                progress.advance(task, len(chunk))
        return [r for r in results if r is not None]

    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        *,
        batch_size: int | None = None,
    ) -> list[list[float]]:
        """When every continuation is a single token, one forward pass per context reads
        them all from the next-token distribution; otherwise one row per option."""
        size = batch_size or self.batch_size
        pad = self.tokenizer.pad_token_id
        if all(len(option) == 1 for options in continuations for option in options):
            candidates = [[option[0] for option in options] for options in continuations]
            return next_token_logprobs(
                self.model, contexts, candidates, pad_id=pad, batch_size=size
            )
        return sequence_continuation_logprobs(self.model, contexts, continuations, pad, size)

    def resolved_settings(self) -> dict[str, object]:
        """The dtype text is generated in (``generation_dtype`` may be ``auto``)."""
        return {"generation_dtype": str(self.generation_dtype).removeprefix("torch.")}

    def close(self) -> None:
        self._networks.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def group_by_prompt(pairs: Sequence[Any], window: int | None) -> tuple[list[list[int]], list[int]]:
    """(groups of pair indices whose prompt ids are identical, the other indices).

    A group shares one pass over its prompt. A group must fit in the attention window
    (less one token) so that reusing the prompt's cached keys cannot change what any token
    sees; pairs with an empty prompt have nothing to share.
    """
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for index, pair in enumerate(pairs):
        by_prompt.setdefault(tuple(pair.input_ids[: pair.response_start]), []).append(index)
    groups, singles = [], []
    for prompt, members in by_prompt.items():
        longest = max(len(pairs[i].input_ids) for i in members)
        if prompt and len(members) > 1 and (window is None or longest < window):
            groups.append(members)
        else:
            singles.extend(members)
    return groups, sorted(singles)


def shared_prompt_batches(
    groups: list[list[int]], pairs: Sequence[Any], batch_size: int, window: int | None
) -> list[list[list[int]]]:
    """Groups packed, longest first, into batches of at most ``batch_size`` responses (a
    larger group goes alone); with a window, a batch's padded prompt plus response width
    stays under it."""

    def widths(group: list[int]) -> tuple[int, int]:
        prompt = pairs[group[0]].response_start
        return prompt, max(len(pairs[i].input_ids) for i in group) - prompt

    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    size = prompt_width = response_width = 0
    for group in sorted(groups, key=lambda g: -sum(widths(g))):
        prompt, response = widths(group)
        fits = size + len(group) <= batch_size and (
            window is None or max(prompt_width, prompt) + max(response_width, response) < window
        )
        if current and not fits:
            batches.append(current)
            current, size, prompt_width, response_width = [], 0, 0, 0
        current.append(group)
        size += len(group)
        prompt_width, response_width = max(prompt_width, prompt), max(response_width, response)
    if current:
        batches.append(current)
    return batches


def pad_pairs(pairs: Sequence[Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad encoded pairs: (input_ids, attention_mask, response_mask) as [B, T]."""
    width = max(len(p.input_ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    response = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        length = len(pair.input_ids)
        ids[row, :length] = torch.tensor(pair.input_ids)
        attention[row, :length] = 1
        response[row, pair.response_start : length] = True
    return ids, attention, response
