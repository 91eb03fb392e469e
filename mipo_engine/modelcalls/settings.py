"""Settings shared by the stages that call a model."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mipo_engine.artifacts.config import StageConfig
from mipo_engine.backends.base import SamplingConfig
from mipo_engine.backends.registry import (
    BACKEND_NAMES,
    BackendChoice,
    LocalBackendChoice,
    backend_options,
)
from mipo_engine.commandline import MODEL_HELP, or_list
from mipo_engine.modelcalls.asking import RetryPolicy

BackendName = BackendChoice
LocalBackendName = LocalBackendChoice


EXECUTION_FIELDS = frozenset(
    {"batch_size", "chunk_size", "concurrency", "out", "engine", "workers", "ray_address"}
)
"""Settings that change how a run executes, not what it writes: left out of its identity."""


class ModelCallConfig(StageConfig):
    """Base settings of a stage that calls a model.

    ``chunk_size`` is the resume unit: rows finished together and saved as one journal part.
    Each stage keeps the option name its users know for it (``chunk_key``: ``chunk_rows``,
    ``chunk_items`` or ``chunk_pairs``); both spellings are accepted and errors use the
    stage's own.

    Each field is an option of the stage's command, its description the help text; a stage
    words an inherited option its own way in ``option_help``.
    """

    backend: BackendName = Field("hf", description=f"Model backend: {or_list(BACKEND_NAMES)}.")
    model: str | None = Field(None, description=MODEL_HELP)
    batch_size: int = Field(8, ge=1, description="Prompts per forward batch (hf).")
    chunk_size: int = Field(
        32, ge=1, description="Rows per saved chunk: the unit of resume after a crash."
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where the chunks run: local (this process) or ray (Ray actors, one "
        "backend instance each; the journal stays with this process).",
    )
    workers: int = Field(
        1, ge=1, description="Ray actors, each hosting one backend instance (--engine ray)."
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join (host:port or auto); default: start a local Ray "
        "instance (--engine ray).",
    )

    chunk_key: ClassVar[str] = "chunk_size"
    option_help: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _chunk_option(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.chunk_key != "chunk_size" and cls.chunk_key in data:
            data = dict(data)
            if "chunk_size" in data:
                raise ValueError(f"give {cls.chunk_key} or chunk_size, not both")
            data["chunk_size"] = data.pop(cls.chunk_key)
        return data

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a host:port, auto, or leave it unset")
        return value

    @classmethod
    def option_name(cls, field: str | None) -> str | None:
        return cls.chunk_key if field == "chunk_size" else field

    def engine_settings(self) -> dict[str, object]:
        """How the chunks ran, for the manifest (they do not change the rows)."""
        return {"engine": self.engine, "workers": self.workers, "ray_address": self.ray_address}

    def identity(self) -> dict[str, object]:
        """Settings that change the output (batching, chunking, concurrency and paths do not)."""
        return self.model_dump(mode="json", exclude=set(EXECUTION_FIELDS))


class ServedModelConfig(ModelCallConfig):
    """Settings of a stage that may also call a model behind an OpenAI-compatible server."""

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible server URL (openai backend); key from OPENAI_API_KEY.",
    )
    concurrency: int = Field(8, ge=1, description="Concurrent requests (openai backend).")

    def backend_options(self) -> dict[str, object]:
        """Constructor options for ``create_backend`` that apply to the chosen backend."""
        return backend_options(
            self.backend,
            batch_size=self.batch_size,
            base_url=self.base_url,
            concurrency=self.concurrency,
        )


class AskingConfig(ServedModelConfig):
    """Settings of a stage whose replies are validated and asked again when unusable."""

    max_new_tokens: int = Field(256, ge=1, description="Maximum new tokens per reply.")
    temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature of the first attempt (0 = greedy)."
    )
    retry_temperature: float = Field(
        0.7, ge=0.0, description="Sampling temperature of retries after an invalid reply."
    )
    max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts per row before it is recorded as failed."
    )
    structured: bool = Field(
        True, description="Constrain replies to a JSON object (vllm backends)."
    )
    """Constrain replies to the expected layout when the backend supports it (vLLM)."""
    seed: int = Field(0, description="Global seed; each attempt's seed derives from it.")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            sampling=SamplingConfig(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature
            ),
            retry_temperature=self.retry_temperature,
            max_attempts=self.max_attempts,
            seed=self.seed,
        )
