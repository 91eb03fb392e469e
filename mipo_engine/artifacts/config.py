"""The base of every stage's settings: validated on creation, errors name the option.

Kept apart from the run kernel (``artifacts.run``) so that reading a stage's settings, as the
CLI does to build its options, loads no data-frame library.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mipo_engine.errors import ConfigError


class StageConfig(BaseModel):
    """Base for stage settings: unknown keys are errors, values are validated on creation."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def from_options(cls, **options: Any) -> StageConfig:
        """Build from CLI options or a config mapping; errors name the offending key."""
        try:
            return cls(**options)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or None
            raise ConfigError(first["msg"], key=cls.option_name(key)) from None

    @classmethod
    def option_name(cls, field: str | None) -> str | None:
        """The name users write for ``field`` (a subclass may keep an older spelling)."""
        return field

    @classmethod
    def option_names(cls) -> set[str]:
        """Every setting users may give (CLI options, config keys), by the names they write."""
        return {name for field in cls.model_fields if (name := cls.option_name(field))}
