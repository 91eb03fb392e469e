"""The backend interface and registry: declared abilities, clear refusals, one table of names.

Callers ask a backend what it can do through ``Backend`` (never by probing attributes), the
registry builds backends by name and maps a stage's settings to constructor options, and the
backends depend on the neutral ``modeling`` layer, not on ``training``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import pytest

from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
    StructuredOutput,
)
from mipo_engine.backends.registry import (
    BACKEND_NAMES,
    BACKENDS,
    LOCAL_BACKEND_NAMES,
    BackendChoice,
    LocalBackendChoice,
    backend_class,
    backend_options,
    create_backend,
)
from mipo_engine.errors import ConfigError
from mipo_engine.evaluation.raw import check_raw_support, complete_raw, continuation_logprobs

PACKAGE = Path(__file__).resolve().parents[1] / "mipo_engine"


class PlainBackend(Backend):
    """The least a backend implements: ``render`` and ``generate``."""

    name = "plain"

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        super().__init__("plain-model")
        self._stop = stop
        self.stops_seen: list[tuple[str, ...]] = []

    def render(self, messages: list) -> str:
        return " ".join(m["content"] for m in messages)

    def default_stop(self) -> tuple[str, ...]:
        return self._stop

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        self.check_sampling(sampling)
        self.stops_seen.append(self.stop_strings(sampling))
        return [Completion(text="ok", finish_reason="stop", num_tokens=1) for _ in requests]


REQUESTS = [GenerationRequest("r0", [{"role": "user", "content": "hi"}], seed=1)]


# --------------------------------------------------------------------------------------------
# The registry


def test_registry_names_and_choices_come_from_one_table() -> None:
    assert BACKEND_NAMES == ("hf", "vllm", "openai")
    assert LOCAL_BACKEND_NAMES == ("hf", "vllm")
    assert get_args(BackendChoice) == BACKEND_NAMES
    assert get_args(LocalBackendChoice) == LOCAL_BACKEND_NAMES


@pytest.mark.parametrize(
    ("module", "config", "field", "names"),
    [
        ("generate", "GenerateConfig", "backend", BACKEND_NAMES),
        ("contexts", "ContextsConfig", "backend", BACKEND_NAMES),
        ("rubrics", "RubricsConfig", "backend", BACKEND_NAMES),
        ("judge", "JudgeConfig", "backend", BACKEND_NAMES),
        ("revise", "ReviseConfig", "backend", BACKEND_NAMES),
        ("score", "ScoreConfig", "backend", LOCAL_BACKEND_NAMES),
        ("eval", "EvalConfig", "backend", LOCAL_BACKEND_NAMES),
        ("eval", "EvalConfig", "judge_backend", BACKEND_NAMES),
    ],
)
def test_stage_configs_offer_the_registry_choices(
    module: str, config: str, field: str, names: tuple[str, ...]
) -> None:
    import importlib

    settings = getattr(importlib.import_module(f"mipo_engine.stages.{module}"), config)
    assert get_args(settings.model_fields[field].annotation) == names


def test_registry_agrees_with_the_classes() -> None:
    for name, spec in BACKENDS.items():
        cls = backend_class(name)
        assert issubclass(cls, Backend)
        assert cls.name == name
        # "local" is what the eval and score stages rely on: raw text, answer log-probs, scores.
        assert cls.supports_raw_text == spec.local
        assert (cls.score is not Backend.score) or not spec.local
        assert (cls.continuation_logprobs is not Backend.continuation_logprobs) == spec.local
    assert backend_class("vllm").supports_structured
    assert backend_class("openai").supports_structured
    assert not backend_class("hf").supports_structured


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'tgi'; choose one of hf, vllm, openai"):
        create_backend("tgi", None)


def test_reading_the_registry_loads_no_backend() -> None:
    """Names and choices (CLI help, configs) must not import torch, vLLM or a backend."""
    code = (
        "import sys, mipo_engine.backends.registry as r; r.BackendChoice; "
        "print(sorted(m for m in ('torch', 'vllm', 'openai', 'mipo_engine.backends.hf', "
        "'mipo_engine.backends.vllm', 'mipo_engine.backends.openai') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_backend_options_keep_what_each_backend_takes() -> None:
    settings = {
        "batch_size": 4,
        "adapter": "runs/adapter",
        "dtype": "float32",
        "base_url": "http://localhost:8000/v1",
        "concurrency": 3,
        "show_progress": False,
    }
    assert backend_options("hf", **settings) == {
        "batch_size": 4,
        "adapter": "runs/adapter",
        "dtype": "float32",
        "show_progress": False,
    }
    assert backend_options("vllm", **settings) == {
        "adapter": "runs/adapter",
        "dtype": "float32",
        "show_progress": False,
    }
    assert backend_options("openai", **settings) == {
        "base_url": "http://localhost:8000/v1",
        "concurrency": 3,
        "show_progress": False,
    }
    # Unset settings leave the backend's own default in place.
    assert backend_options("openai", base_url=None, concurrency=8) == {"concurrency": 8}
    assert backend_options("hf", adapter=None, batch_size=2) == {"batch_size": 2}


def test_backend_options_reject_a_setting_no_backend_takes() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        backend_options("hf", batchsize=4)
    with pytest.raises(ValueError, match="unknown backend"):
        backend_options("llamacpp", batch_size=4)


def test_every_backend_takes_the_settings_the_registry_lists() -> None:
    import inspect

    for name, spec in BACKENDS.items():
        accepted = inspect.signature(backend_class(name).__init__).parameters
        assert set(spec.settings) <= set(accepted), name


# --------------------------------------------------------------------------------------------
# The interface: declared abilities and clear refusals


def test_a_backend_without_an_ability_refuses_it_clearly() -> None:
    backend = PlainBackend()
    with pytest.raises(NotImplementedError, match="the plain backend cannot score text"):
        backend.score(["p"], ["r"], max_length=16)
    with pytest.raises(NotImplementedError, match="cannot constrain generation"):
        backend.generate_structured(REQUESTS, SamplingConfig(), choices=["a", "b"])
    constrained = SamplingConfig(structured=StructuredOutput(json_schema={"type": "object"}))
    with pytest.raises(NotImplementedError, match="cannot constrain generation"):
        backend.generate(REQUESTS, constrained)
    with pytest.raises(NotImplementedError, match="cannot complete raw text"):
        backend.complete_raw(["text"], [0], SamplingConfig())
    with pytest.raises(NotImplementedError, match="cannot read continuation log-probs"):
        backend.continuation_logprobs([[1, 2]], [[[3]]])
    assert backend.resolved_settings() == {}
    assert backend.without_adapter() is None


def test_raw_helpers_give_the_config_error_for_a_remote_backend() -> None:
    backend = PlainBackend()
    message = r"the plain backend cannot run benchmark prompts .*use one of hf, vllm"
    for call in (
        lambda: check_raw_support(backend),
        lambda: complete_raw(backend, ["t"], [0], SamplingConfig()),
        lambda: continuation_logprobs(backend, [[1]], [[[2]]]),
    ):
        with pytest.raises(ConfigError, match=message):
            call()


def test_stop_strings_caller_first_then_default_none_under_a_constraint() -> None:
    backend = PlainBackend(stop=("\nUser:",))
    assert backend.stop_strings(SamplingConfig()) == ("\nUser:",)
    assert backend.stop_strings(SamplingConfig(stop=("END",))) == ("END",)
    constrained = SamplingConfig(structured=StructuredOutput(choices=["1", "2"]))
    assert backend.stop_strings(constrained) == ()


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({}, "exactly one of choices= or json_schema="),
        ({"choices": ["a"], "json_schema": {}}, "exactly one of choices= or json_schema="),
        ({"choices": []}, "non-empty list of non-empty strings"),
        ({"choices": ["a", ""]}, "non-empty list of non-empty strings"),
    ],
)
def test_structured_output_is_checked(constraint: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StructuredOutput(**constraint)


def test_sampling_record_is_the_plain_settings_unless_constrained() -> None:
    plain = SamplingConfig(max_new_tokens=12, temperature=0.5, top_p=0.9, stop=("x",))
    assert plain.as_record() == {
        "max_new_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ("x",),
    }
    constrained = SamplingConfig(structured=StructuredOutput(choices=["1", "2"]))
    assert constrained.as_record()["structured"] == {"choices": ["1", "2"]}


def test_hf_backend_refuses_structured_generation(tiny_model_dir: Path) -> None:
    from mipo_engine.backends.hf import HFBackend

    backend = HFBackend(str(tiny_model_dir), show_progress=False)
    with pytest.raises(NotImplementedError, match="the hf backend cannot constrain generation"):
        backend.generate_structured(REQUESTS, SamplingConfig(max_new_tokens=2), choices=["1"])
    assert backend.supports_raw_text and backend.tokenizer is not None
    assert backend.resolved_settings()["generation_dtype"] in ("float32", "bfloat16")


# --------------------------------------------------------------------------------------------
# Layering: backends and modeling below training


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("backends", ("mipo_engine.training", "mipo_engine.stages")),
        (
            "modeling",
            ("mipo_engine.training", "mipo_engine.stages", "mipo_engine.backends"),
        ),
    ],
)
def test_lower_layers_do_not_import_upward(package: str, forbidden: tuple[str, ...]) -> None:
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files
    wrong = [
        f"{path.name} imports {name}"
        for path in files
        for name in sorted(_imports(path))
        if name.startswith(forbidden)
    ]
    assert wrong == []


def test_callers_do_not_probe_backends() -> None:
    """Outside ``backends/``, abilities are asked through the interface, not discovered."""
    probes = (
        'hasattr(backend, "',
        "getattr(backend, ",
        'getattr(self.judge, "',
        "inspect.signature(backend",
        'backend.name == "',
    )
    found = [
        f"{path.relative_to(PACKAGE)}: {probe}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "backends" not in path.parts
        for probe in probes
        if probe in path.read_text(encoding="utf-8")
    ]
    assert found == []
