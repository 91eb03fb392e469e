"""Artifact schemas, atomic writes, manifests and secret redaction."""

from __future__ import annotations

import math

import polars as pl
import pytest

from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.manifest import REDACTED, looks_like_secret, redact
from mipo_engine.artifacts.schemas import SCORES, validate_frame
from mipo_engine.artifacts.store import is_complete, manifest_path, read_artifact, write_artifact
from mipo_engine.errors import InputError


def _scores(**overrides) -> pl.DataFrame:
    columns = {
        "id": ["a", "b", "c"],
        "ref_chosen_logps": [-1.0, -2.0, -3.0],
        "ref_rejected_logps": [-4.0, -5.0, -6.0],
        "chosen_tokens": [1, 2, 3],
        "rejected_tokens": [4, 5, 6],
        "pmi_chosen": [0.5, None, 1.5],
    }
    columns.update(overrides)
    return pl.DataFrame(columns)


def test_valid_frame_round_trips_with_manifest(tmp_path):
    out = tmp_path / "s.parquet"
    write_artifact(_scores(), out, SCORES, {"stage": "score"})
    assert is_complete(out) and manifest_path(out).name == "s.manifest.json"
    frame = read_artifact(out, SCORES)
    assert frame["id"].to_list() == ["a", "b", "c"] and frame.columns[:6] == SCORES.names


@pytest.mark.parametrize(
    ("overrides", "row", "field", "text"),
    [
        ({"ref_chosen_logps": [-1.0, math.nan, -3.0]}, 2, "ref_chosen_logps", "NaN"),
        ({"ref_rejected_logps": [-1.0, -2.0, math.inf]}, 3, "ref_rejected_logps", "finite"),
        ({"id": ["a", "b", "a"]}, 3, "id", "duplicate"),
        ({"id": ["a", " ", "c"]}, 2, "id", "empty id"),
        ({"chosen_tokens": [1, None, 3]}, 2, "chosen_tokens", "missing"),
        ({"chosen_tokens": ["1", "x", "3"]}, 2, "chosen_tokens", "expected Int64"),
    ],
)
def test_bad_values_name_row_and_field(tmp_path, overrides, row, field, text):
    with pytest.raises(InputError) as error:
        validate_frame(_scores(**overrides), SCORES, file="s.parquet")
    assert error.value.row == row and error.value.field == field
    assert text in str(error.value) and "s.parquet" in str(error.value)
    out = tmp_path / "s.parquet"
    with pytest.raises(InputError):
        write_artifact(_scores(**overrides), out, SCORES, {})
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_column_is_named(tmp_path):
    with pytest.raises(InputError, match="pmi_chosen"):
        validate_frame(_scores().drop("pmi_chosen"), SCORES)


def test_corrupt_parquet_is_an_input_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"bad\.parquet.*Parquet"):
        read_artifact(path, SCORES)


def test_rewriting_drops_the_old_manifest_first(tmp_path, monkeypatch):
    out = tmp_path / "s.parquet"
    write_artifact(_scores(), out, SCORES, {"stage": "score"})
    import mipo_engine.artifacts.store as store

    def crash(*_args, **_kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(store, "write_parquet_atomic", crash)
    with pytest.raises(RuntimeError):
        write_artifact(_scores(), out, SCORES, {"stage": "score"})
    assert not is_complete(out)  # stale manifest gone: the half-updated artifact is not trusted


def test_journal_keeps_first_copy_and_discards_foreign_parts(tmp_path):
    out = tmp_path / "g.parquet"
    journal = RowJournal(out, "fp-1")
    journal.append(pl.DataFrame({"id": ["a", "b"], "v": [1, 2]}))
    journal.append(pl.DataFrame({"id": ["b", "c"], "v": [9, 3]}))
    (journal.directory / ".part-000009.parquet.x.tmp").write_bytes(b"half")
    reopened = RowJournal(out, "fp-1")
    assert reopened.load().to_dicts() == [
        {"id": "a", "v": 1},
        {"id": "b", "v": 2},
        {"id": "c", "v": 3},
    ]
    assert not list(reopened.directory.glob(".*.tmp"))
    assert RowJournal(out, "fp-2").load() is None


def test_redaction_of_keys_and_values():
    config = {
        "api_key": "abc",
        "hf_token": "hf_abcdefghijklmnopqrstuvwxyz",
        "max_new_tokens": 64,
        "nested": [{"password": "p"}, "Bearer sk-abcdefghijklmnopqrstuvwx1234"],
        "base_url": "http://127.0.0.1:8000/v1",
    }
    clean = redact(config)
    assert clean["api_key"] == REDACTED and clean["hf_token"] == REDACTED
    assert clean["max_new_tokens"] == 64 and clean["base_url"] == config["base_url"]
    assert clean["nested"][0]["password"] == REDACTED and "sk-" not in clean["nested"][1]
    assert looks_like_secret("token hf_abcdefghijklmnopqrstuvwxyz0") and not looks_like_secret(
        "hello"
    )


def test_columns_added_later_read_as_null_from_older_files(tmp_path):
    """An eval file written before the copy and IFEval columns existed still loads."""
    import polars as pl

    from mipo_engine.artifacts.schemas import EVAL, Column, validate_frame
    from mipo_engine.errors import InputError

    later = [c.name for c in EVAL.columns if c.added_later]
    assert {"copy_overlap", "instruction_ids", "strict_followed"} <= set(later)
    older = EVAL.empty().drop(later)
    frame = validate_frame(older, EVAL)
    assert frame.columns[: len(EVAL.names)] == EVAL.names
    # Any other missing column is still an error that names it.
    with pytest.raises(InputError, match="response"):
        validate_frame(older.drop("response"), EVAL)
    with pytest.raises(ValueError, match="must be nullable"):
        Column("x", pl.Int64(), nullable=False, added_later=True)
