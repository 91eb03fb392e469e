"""Numbers as models and datasets write them, read into one canonical spelling.

``canonical_number`` normalises a gold answer or an extracted span (``"1,080"``,
``"$18.00"``, ``51.0``) so that equal values compare equal as strings; ``numbers_in`` finds
every number in a text. Benchmark loaders (gold answers) and answer extraction share them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# A number as models and GSM8K write it: optional sign, optional "$", digits with optional
# thousands separators ("1,080"), optional decimals (".5", "2.50"). The sign only counts when it
# is not a hyphen joining two tokens ("16-3" is a subtraction, "5-year-old" a compound), so it
# must not follow a word character or a closing bracket. Digits must not continue a word or
# another number ("x2", "1.2.3").
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])(?P<sign>[-−]))?"
    r"\$?"
    r"(?<![\w.])(?P<digits>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
)


def canonical_number(text: str | int | float) -> str | None:
    """Canonical form of one number written on its own, or None if it is not a number.

    Accepts what a gold answer or an extracted span looks like: ``"1,080"``, ``"$18.00"``,
    ``"51.0"``, ``"-3"``, ``"50%"``, ``"7."``, ``51.0``. The canonical form has no separators,
    no currency or percent sign, no trailing zeros after the decimal point and no ``-0``:
    ``"1080"``, ``"18"``, ``"51"``, ``"-3"``, ``"50"``, ``"7"``.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise TypeError(f"canonical_number expects a str, int or float, got {type(text).__name__}")
    if isinstance(text, int | float):
        return _canonical_from_value(text)
    cleaned = text.strip().rstrip(".").strip()
    cleaned = cleaned.removesuffix("%").strip()
    match = _NUMBER.fullmatch(cleaned)
    if match is None:
        return None
    return _canonical_from_match(match)


def _canonical_from_value(value: int | float) -> str | None:
    """Canonical string of a Python number (None for NaN and infinities)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    # repr gives the shortest string that round-trips, so 0.1 stays "0.1", not 0.1000...0555.
    return _format_decimal(Decimal(repr(value)))


def _canonical_from_match(match: re.Match[str]) -> str:
    """Turn a ``_NUMBER`` match into its canonical string."""
    value = Decimal(match.group("digits").replace(",", ""))  # the pattern admits only decimals
    return _format_decimal(-value if match.group("sign") else value)


def _format_decimal(value: Decimal) -> str:
    """Plain positional notation without trailing zeros: 18.00 -> "18", 0.50 -> "0.5"."""
    if value == 0:
        return "0"  # also folds -0 and 0.00 into one spelling
    normalized = value.normalize()
    # normalize() may switch to an exponent (1E+2); the "f" format writes it out again.
    return format(normalized, "f")


def numbers_in(text: str) -> list[str]:
    """Canonical forms of every number in ``text``, in order of appearance."""
    return [_canonical_from_match(match) for match in _NUMBER.finditer(text)]
