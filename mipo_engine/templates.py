"""Prompt templates from ``prompts/``, filled in a single pass.

Placeholders are written ``${name}``. Values are inserted verbatim and never re-read, so user
text that looks like template syntax (``{{ 7*7 }}``, ``{% if %}``, ``${name}``) stays data.
"""

from __future__ import annotations

import re
from functools import lru_cache

from mipo_engine.resources import read_prompt

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> set[str]:
    """Names of the placeholders a template uses."""
    return set(_PLACEHOLDER.findall(template))


def fill(template: str, **values: object) -> str:
    """Replace every ``${name}`` with ``str(values[name])`` in one pass.

    Raises ValueError when the template needs a value that was not given, or when a value was
    given that the template does not use (usually a typo in the caller).
    """
    needed = placeholders(template)
    missing = needed - values.keys()
    if missing:
        raise ValueError(f"template needs values for {sorted(missing)}")
    unused = values.keys() - needed
    if unused:
        raise ValueError(f"template has no placeholder for {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


@lru_cache(maxsize=64)
def load_template(name: str) -> str:
    """Text of ``prompts/<name>`` (cached)."""
    return read_prompt(name)


def render(name: str, **values: object) -> str:
    """Fill the bundled template ``prompts/<name>``."""
    return fill(load_template(name), **values)
