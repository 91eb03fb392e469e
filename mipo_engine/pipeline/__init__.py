"""``mipo run``: a YAML file declares the stages; the runner executes them in one folder.

The names below load on first use: the CLI reads the stage registry (``pipeline.stages``)
to list its commands, and that should not import the runner and its data-frame library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PipelineConfig": "mipo_engine.pipeline.config",
    "load_pipeline": "mipo_engine.pipeline.config",
    "run_pipeline": "mipo_engine.pipeline.runner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
