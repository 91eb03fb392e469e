"""The ``preferences`` artifact (``mipo export``'s output): its formats and their check.

The format-independent columns are the ``PREFERENCES`` schema; the text columns' types depend
on the format (strings for ``trl``, message lists for ``trl-conversational`` and
``openrlhf``), so ``validate_preferences`` checks them per format.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mipo_engine.artifacts.schemas import PREFERENCES, validate_frame
from mipo_engine.artifacts.store import read_parquet
from mipo_engine.errors import InputError

MESSAGES = pl.List(pl.Struct({"role": pl.String(), "content": pl.String()}))
TEXT_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "trl": {"prompt": pl.String(), "chosen": pl.String(), "rejected": pl.String()},
    "trl-conversational": {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES},
    "openrlhf": {"chosen": MESSAGES, "rejected": MESSAGES},
}
"""The text columns of each format and their types."""

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _first_row(mask: pl.Series) -> int:
    return int(mask.arg_true()[0]) + 1


def detect_format(frame: pl.DataFrame) -> str:
    """The format of a preferences frame, from its text columns' types."""
    if "prompt" not in frame.columns:
        return "openrlhf"
    return "trl" if frame["prompt"].dtype == pl.String() else "trl-conversational"


def validate_preferences(frame: pl.DataFrame, *, file: str | Path | None = None) -> pl.DataFrame:
    """Check a preferences frame: common columns, text columns of its format, references.

    Returns the frame with the common columns validated (``validate_frame``). Errors name
    the file, row and column.
    """
    frame = validate_frame(frame, PREFERENCES, file=file)
    export_format = detect_format(frame)
    for name, dtype in TEXT_COLUMNS[export_format].items():
        if name not in frame.columns:
            raise InputError(
                f"missing column {name!r} for the {export_format} format", file=file, field=name
            )
        if frame[name].dtype != dtype:
            raise InputError(
                f"expected {dtype} for the {export_format} format, got {frame[name].dtype}",
                file=file,
                field=name,
            )
        nulls = frame[name].is_null()
        if nulls.any():
            raise InputError(
                "value is missing (null)", file=file, row=_first_row(nulls), field=name
            )
    present = [name for name in REFERENCE_COLUMNS if name in frame.columns]
    if len(present) == 1:
        other = next(name for name in REFERENCE_COLUMNS if name not in present)
        raise InputError(f"{present[0]} is given without {other}", file=file, field=other)
    for name in present:
        values = frame[name].cast(pl.Float64, strict=False)
        bad = values.is_null() | ~values.is_finite().fill_null(False)
        if bad.any():
            raise InputError(
                "reference log-prob is missing or not a finite number",
                file=file,
                row=_first_row(bad),
                field=name,
            )
    return frame


def read_preferences(path: str | Path) -> pl.DataFrame:
    """Read and check a preferences artifact (any format)."""
    path = Path(path)
    return validate_preferences(read_parquet(path), file=path)
