"""Formatting for the report page: escaped text, numbers, intervals, tables and figures.

The page (``templates/report.html.j2``) prints values through ``finalize``: ``Markup`` as it
is, anything else through ``esc`` (``redact`` then ``html.escape``). ``Markup`` is made only
by the functions here and in ``report.sections``, from pieces that went through ``esc`` or
are numbers, and for the figures' base64 data.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from mipo_engine.artifacts.manifest import redact
from mipo_engine.report.figures import Figure

# --------------------------------------------------------------------------------------------
# Text and number formatting
# --------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as safe HTML text: secrets redacted, markup escaped."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def finalize(value: Any) -> Any:
    """What the template prints for ``{{ value }}``: Markup as it is, anything else as
    ``_t`` makes it (the same escaping as the rest of the page, secrets redacted)."""
    if isinstance(value, Markup):
        return value
    return Markup(esc(value))


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_number(value: Any, digits: int = 3) -> Markup:
    """Integers with thousands separators, floats with ``digits`` decimals; "—" if missing."""
    if isinstance(value, bool) or value is None:
        return Markup("—")
    if isinstance(value, int):
        return Markup(f"{value:,}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Markup(str(value))
        return Markup(f"{value:,.{digits}f}")
    return Markup(esc(value))


def fmt_seconds(seconds: float | None) -> str:
    """ "4.2 s", "3 m 05 s", "1 h 02 m"; "—" if unknown."""
    if not is_finite(seconds):
        return "—"
    assert seconds is not None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def fmt_interval(value: Any, *, percent: bool, signed: bool = False) -> str:
    """ "43.5 [36.5, 50.5]" from a {"mean", "low", "high"} dict; "—" if missing."""
    if not isinstance(value, dict) or not all(
        is_finite(value.get(k)) for k in ("mean", "low", "high")
    ):
        return "—"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    sign = "+" if signed else ""
    mean, low, high = (value[k] * scale for k in ("mean", "low", "high"))
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def interval_cell(value: Any, *, percent: bool, signed: bool = False) -> Markup:
    """A table cell: the mean, and the interval in small print below it (narrow columns).

    Signed values (differences) are coloured when the interval excludes 0.
    """
    text = fmt_interval(value, percent=percent, signed=signed)
    if text == "—":
        return Markup(text)
    mean, interval = text.split(" ", 1)
    if signed:
        css = "up" if value["low"] > 0 else "down" if value["high"] < 0 else ""
        mean = f'<span class="{css}">{mean}</span>' if css else mean
    return Markup(f'{mean}<span class="ci">{interval}</span>')


def fmt_percent(value: Any) -> str:
    return f"{100 * value:.1f}" if is_finite(value) else "—"


def fmt_general(value: Any) -> str:
    """A number in its shortest form (1e-05, 0.01); "—" if missing."""
    return f"{value:g}" if is_finite(value) else "—"


def fmt_logp(value: Any) -> str:
    return f"{value:.2f}" if is_finite(value) else "—"


def mean_of(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def lookup(summary: dict[str, Any], dotted: str) -> Any:
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def wrap(tag: str, text: Any) -> Markup:
    """``<tag>text</tag>`` with the text escaped (``<code>``, ``<b>``)."""
    return Markup(f"<{tag}>{esc(text)}</{tag}>")


def html_table(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()
) -> dict[str, Any]:
    """A table for the template: cells are text (escaped there) or Markup; ``numeric``
    column indices are right-aligned."""
    return {"header": list(header), "rows": [list(row) for row in rows], "numeric": set(numeric)}


def figure_data(figure: Figure | None) -> dict[str, Any] | None:
    if figure is None:
        return None
    return {
        # base64 is not text: redacting it could match a token pattern and break the image.
        "data": Markup(base64.b64encode(figure.png).decode("ascii")),
        "wide": figure.wide,
        "title": figure.title,
        "caption": figure.caption,
        "name": figure.name,
    }
