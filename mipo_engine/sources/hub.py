"""Benchmarks from the Hugging Face Hub by name, at pinned revisions.

``mipo eval --task gsm8k`` without ``--data`` loads the canonical Hub copy of the benchmark
with ``datasets.load_dataset(repo, config, split=..., revision=<pinned commit>)``, writes its
rows once in the benchmark's *original* file layout under the cache
(``<mipo cache>/benchmarks/<task>@<revision>/``), and reads that file with the same loader
as ``--data`` files. So the items, ids and checks are the same whichever way the data came,
a run's manifest hashes a real file, and later runs work offline from the cache.

Offline with nothing cached, ``HubUnavailableError`` (exit 2) says which file to pass with
``--data``. The revisions are the Hub commits these mappings were written against.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipo_engine.errors import InputError

Record = dict[str, Any]


class HubUnavailableError(InputError):
    """The Hub copy could not be loaded and none is cached; the message names the file to pass."""


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hub and how its rows map to the original layout."""

    task: str
    repo: str
    revision: str
    config: str | None
    splits: tuple[str, ...]
    """Hub splits read, in order (SVAMP's 1000 problems are split 700/300 on the Hub)."""
    file_name: str
    """The original-layout file (or folder) written in the cache and read by the loader."""
    write: Callable[[list[Record], Path], None]
    """Writes the Hub rows (all splits, in order) as ``file_name`` under a folder."""
    local_hint: str
    """What to pass with ``--data`` offline."""


def _write_jsonl(records: Iterable[Record], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")


def _write_gsm8k(rows: list[Record], folder: Path) -> None:
    _write_jsonl(
        ({"question": r["question"], "answer": r["answer"]} for r in rows), folder / "test.jsonl"
    )


def _svamp_number(problem_id: str) -> int:
    return int(str(problem_id).rpartition("-")[2])


def _write_svamp(rows: list[Record], folder: Path) -> None:
    """One JSON array in SVAMP.json's order (``chal-1`` ... ``chal-1000``)."""
    keys = ("ID", "Body", "Question", "Equation", "Answer", "Type")
    problems = [{key: row.get(key) for key in keys} for row in rows]
    problems.sort(key=lambda problem: _svamp_number(problem["ID"]))
    (folder / "SVAMP.json").write_text(json.dumps(problems, ensure_ascii=False), "utf-8")


def _arc_writer(file_name: str) -> Callable[[list[Record], Path], None]:
    def write(rows: list[Record], folder: Path) -> None:
        """The Hub's flat ``question`` + ``choices`` back into ARC's ``question.stem/choices``."""
        records = []
        for row in rows:
            choices = row.get("choices") or {}
            pairs = zip(choices.get("text") or [], choices.get("label") or [], strict=False)
            records.append(
                {
                    "id": row.get("id"),
                    "question": {
                        "stem": row.get("question"),
                        "choices": [{"text": text, "label": label} for text, label in pairs],
                    },
                    "answerKey": row.get("answerKey"),
                }
            )
        _write_jsonl(records, folder / file_name)

    return write


def _write_mmlu(rows: list[Record], folder: Path) -> None:
    """Headerless ``<subject>_test.csv`` files: question, A, B, C, D, answer letter."""
    target = folder / "test"
    target.mkdir()
    by_subject: dict[str, list[list[str]]] = {}
    for row in rows:
        answer = row.get("answer")
        letter = "ABCD"[answer] if isinstance(answer, int) and 0 <= answer < 4 else str(answer)
        by_subject.setdefault(str(row.get("subject")), []).append(
            [row.get("question"), *(row.get("choices") or []), letter]
        )
    for subject, records in by_subject.items():
        with (target / f"{subject}_test.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(records)


def _write_ifeval(rows: list[Record], folder: Path) -> None:
    keys = ("key", "prompt", "instruction_id_list", "kwargs")
    _write_jsonl(({key: row.get(key) for key in keys} for row in rows), folder / "input_data.jsonl")


HUB_SOURCES: dict[str, HubSource] = {
    source.task: source
    for source in (
        HubSource(
            "gsm8k",
            "openai/gsm8k",
            "cc7b047b6e5bb11b4f1af84efc572db110a51b3c",
            "main",
            ("test",),
            "test.jsonl",
            _write_gsm8k,
            "GSM8K's test.jsonl (grade-school-math/data/test.jsonl)",
        ),
        HubSource(
            "svamp",
            "ChilleD/SVAMP",
            "5e0bf1e5e7c0e9c4bc39180d224f41f3f801b7ef",
            None,
            ("train", "test"),
            "SVAMP.json",
            _write_svamp,
            "SVAMP.json of github.com/arkilpatel/SVAMP",
        ),
        HubSource(
            "arc_easy",
            "allenai/ai2_arc",
            "210d026faf9955653af8916fad021475a3f00453",
            "ARC-Easy",
            ("test",),
            "ARC-Easy-Test.jsonl",
            _arc_writer("ARC-Easy-Test.jsonl"),
            "ARC-Easy-Test.jsonl of the ARC release (ARC-V1-Feb2018/ARC-Easy/)",
        ),
        HubSource(
            "arc_challenge",
            "allenai/ai2_arc",
            "210d026faf9955653af8916fad021475a3f00453",
            "ARC-Challenge",
            ("test",),
            "ARC-Challenge-Test.jsonl",
            _arc_writer("ARC-Challenge-Test.jsonl"),
            "ARC-Challenge-Test.jsonl of the ARC release (ARC-V1-Feb2018/ARC-Challenge/)",
        ),
        HubSource(
            "mmlu",
            "cais/mmlu",
            "c30699e8356da336a370243923dbaf21066bb9fe",
            "all",
            ("test",),
            "test",
            _write_mmlu,
            "MMLU's data/test folder of <subject>_test.csv files (or one such file)",
        ),
        HubSource(
            "ifeval",
            "google/IFEval",
            "966cd89545d6b6acfd7638bc708b98261ca58e84",
            None,
            ("train",),
            "input_data.jsonl",
            _write_ifeval,
            "IFEval's input_data.jsonl",
        ),
    )
}


def hub_cache_dir(source: HubSource) -> Path:
    from mipo_engine.models import cache_dir

    return cache_dir() / "benchmarks" / f"{source.task}@{source.revision}"


def cached_hub_path(task: str) -> Path | None:
    """The cached original-layout copy of ``task``'s Hub dataset, if one was written."""
    source = HUB_SOURCES[task]
    path = hub_cache_dir(source) / source.file_name
    return path if path.exists() else None


def _load_split(source: HubSource, split: str) -> list[Record]:
    """Rows of one Hub split at the pinned revision (the only network call here)."""
    import datasets

    arguments: dict[str, Any] = {"split": split, "revision": source.revision}
    if source.config is not None:
        return list(datasets.load_dataset(source.repo, source.config, **arguments))
    return list(datasets.load_dataset(source.repo, **arguments))


def fetch_hub_benchmark(task: str) -> Path:
    """Path of ``task``'s Hub dataset in its original layout, downloading it if not cached.

    Raises ``HubUnavailableError`` naming the file to pass with ``--data`` when the Hub
    cannot be reached (or the dataset not loaded) and nothing is cached.
    """
    source = HUB_SOURCES[task]
    cached = cached_hub_path(task)
    if cached is not None:
        return cached
    try:
        rows = [row for split in source.splits for row in _load_split(source, split)]
    except Exception as error:  # offline, unknown revision, no access: all need local data
        raise HubUnavailableError(
            f"no --data given and {source.repo}@{source.revision[:12]} could not be loaded "
            f"from the Hugging Face Hub ({type(error).__name__}: {error}); pass the local file "
            f"with --data: {source.local_hint}",
            file=f"hub:{source.repo}",
        ) from None
    folder = hub_cache_dir(source)
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    source.write(rows, staging)
    staging.rename(folder)
    return folder / source.file_name
