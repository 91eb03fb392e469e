"""Load the evaluation benchmarks (GSM8K, SVAMP, ARC, MMLU) as rows of the ``prompts`` schema.

Seed 004 (sec. 5.4, App. C.1) evaluates MIPO on GSM8K and SVAMP with an 8-shot
chain-of-thought prompt and on MMLU, ARC-Easy and ARC-Challenge zero-shot. The files are the
original distributions: a file given with ``--data``, a local mirror (``$MIPO_SHARED_DATA``,
``shared_data_dir()``) or the Hub copy written in the same layout (``sources.hub``); the
shared data folder's READMEs document the quirks handled here:

- JSONL is split on ``"\\n"`` only (``str.splitlines`` would also split on U+2028 inside a
  question);
- MMLU CSVs have no header and embedded newlines, so they go through ``csv`` with
  ``newline=""``; the subject comes from the file name ``<subject>_<split>.csv``;
- ARC answer keys are sometimes digits ("1"-"4"); choices are relabelled A, B, C, ... in their
  listed order and the gold letter is found by matching ``answerKey`` to the original labels;
- SVAMP's problem text is ``Body + " " + Question`` and its answers are floats (``51.0``).

Every row has ``prompt`` = the bare question; ``eval_prompt`` (or ``math_prompt`` /
``mcq_prompt``) renders the model input. Gold answers are strings: canonical numbers for math
(``"18"``, ``"1080"``), a letter for MCQ. Malformed records raise ``BenchmarkFormatError`` (a
``ValueError``) naming the file, the 1-based line or record, and the field.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipo_engine.artifacts.schemas import first_repeat
from mipo_engine.errors import InputError
from mipo_engine.numbers import canonical_number
from mipo_engine.templates import render

Row = dict[str, Any]

SHARED_DATA_ENV = "MIPO_SHARED_DATA"

# Few-shot prompts invite a base model to continue with the next "Question:"; generation
# should stop there (extract_number also ignores anything after it).
EVAL_STOP_SEQUENCES: tuple[str, ...] = ("\nQuestion:",)

_MATH_TEMPLATE = "gsm8k_8shot.txt"
_MCQ_TEMPLATE = "mcq_zero_shot.txt"
_MAX_CHOICES = len(string.ascii_uppercase)


class BenchmarkFormatError(InputError, ValueError):
    """A benchmark record that cannot be read; the message names file, line/record and field."""


# --------------------------------------------------------------------------------------------
# Where the data lives


def shared_data_dir() -> Path:
    """Folder holding a local copy of the benchmark files in their original layouts:
    ``$MIPO_SHARED_DATA``.

    There is no default folder: without the variable, benchmarks come from the Hub
    (``Benchmark.default_path``) or from a file given by path. The test suite sets it.
    """
    override = os.environ.get(SHARED_DATA_ENV)
    if not override:
        raise FileNotFoundError(
            f"no local benchmark mirror: set ${SHARED_DATA_ENV} to the folder holding gsm8k/, "
            "svamp/, arc/ and mmlu/ in their original layouts, or pass the file itself"
        )
    folder = Path(override).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"${SHARED_DATA_ENV} points to {folder}, which is not a folder; set it to the "
            "folder holding gsm8k/, svamp/, arc/ and mmlu/"
        )
    return folder


def _existing_path(path: str | Path) -> Path:
    """``path`` as a Path; FileNotFoundError with the path when it does not exist."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"benchmark file or folder not found: {resolved}")
    return resolved


# --------------------------------------------------------------------------------------------
# Shared helpers


def choice_labels(count: int) -> list[str]:
    """The first ``count`` capital letters: the labels every MCQ row uses."""
    if not 1 <= count <= _MAX_CHOICES:
        raise ValueError(f"a question needs 1 to {_MAX_CHOICES} choices, got {count}")
    return list(string.ascii_uppercase[:count])


def _prompt_row(
    *,
    row_id: str,
    prompt: str,
    task: str,
    answer: str,
    source: str,
    choices: list[str] | None = None,
) -> Row:
    """One row of the ``prompts`` schema; evaluation rows carry no user context."""
    return {
        "id": row_id,
        "prompt": prompt,
        "context": None,
        "context_items": None,
        "context_group": None,
        "task": task,
        "answer": answer,
        "choices": choices,
        "source": source,
    }


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line; lines split on "\\n" only."""
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(
                f"not valid JSON ({error.msg})", file=path, row=line_number
            ) from None
        if not isinstance(record, dict):
            raise BenchmarkFormatError(
                f"expected a JSON object, got {type(record).__name__}", file=path, row=line_number
            )
        records.append((line_number, record))
    return records


def _text_field(record: dict[str, Any], field: str, path: Path, row: int) -> str:
    """A required non-empty string field, stripped of surrounding whitespace."""
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if field not in record else f"got {value!r}"
        raise BenchmarkFormatError(
            f"expected non-empty text, {found}", file=path, row=row, field=field
        )
    return value.strip()


def _normalised_stem(stem: str) -> str:
    """File stem in lowercase with runs of other characters turned into "_"."""
    return re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_")


def _split_from_stem(stem: str, prefix: str = "") -> str:
    """Split name from a file stem, minus a dataset prefix: "test", "train_subsample_2000_seed0"."""
    normalised = _normalised_stem(stem)
    if prefix and normalised.startswith(prefix + "_"):
        normalised = normalised[len(prefix) + 1 :]
    return normalised or "data"


def _check_unique_ids(rows: Sequence[Row], path: Path) -> None:
    """Raise when two rows share an id (duplicated records in the source)."""
    repeat = first_repeat(row["id"] for row in rows)
    if repeat is not None:
        position, first = repeat
        raise BenchmarkFormatError(
            f"duplicate id {rows[position - 1]['id']!r} (first seen at record {first})",
            file=path,
            row=position,
            field="id",
        )


# --------------------------------------------------------------------------------------------
# Math: GSM8K and SVAMP


def _gsm8k_gold(answer_text: str, path: Path, row: int) -> str:
    """Canonical number after the final ``#### `` of a GSM8K solution."""
    if "####" not in answer_text:
        raise BenchmarkFormatError(
            "solution has no '#### <number>' final line", file=path, row=row, field="answer"
        )
    final = answer_text.rsplit("####", 1)[1]
    number = canonical_number(final)
    if number is None:
        raise BenchmarkFormatError(
            f"text after '####' is not a number: {final.strip()!r}",
            file=path,
            row=row,
            field="answer",
        )
    return number


def load_gsm8k(path: str | Path, *, split: str | None = None) -> list[Row]:
    """GSM8K JSONL (``question``, ``answer`` ending in ``#### N``) as math prompt rows.

    ``split`` names the rows (``gsm8k-<split>-00000``, source ``gsm8k:<split>``); by default it
    is the file stem, e.g. ``test`` or ``train_subsample_2000_seed0``.
    """
    file = _existing_path(path)
    split = split or _split_from_stem(file.stem)
    rows = []
    for index, (line, record) in enumerate(_read_jsonl(file)):
        question = _text_field(record, "question", file, line)
        solution = _text_field(record, "answer", file, line)
        rows.append(
            _prompt_row(
                row_id=f"gsm8k-{split}-{index:05d}",
                prompt=question,
                task="math",
                answer=_gsm8k_gold(solution, file, line),
                source=f"gsm8k:{split}",
            )
        )
    return rows


def _svamp_gold(record: dict[str, Any], path: Path, row: int) -> str:
    """Canonical string of SVAMP's float answer (51.0 -> "51")."""
    value = record.get("Answer")
    number = None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        number = canonical_number(value)
    if number is None:
        raise BenchmarkFormatError(
            f"expected a finite number, got {value!r}", file=path, row=row, field="Answer"
        )
    return number


def load_svamp(path: str | Path, *, split: str = "test") -> list[Row]:
    """SVAMP's JSON array (``ID``, ``Body``, ``Question``, ``Answer``) as math prompt rows.

    The problem text is ``Body + " " + Question`` (SVAMP keeps the final question apart).
    SVAMP has no official split: the whole file is its challenge set, named ``test`` here.
    Rows are ``svamp-<split>-<ID>``; "row" in errors is the 1-based record index.
    """
    file = _existing_path(path)
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(f"not valid JSON ({error.msg})", file=file) from None
    if not isinstance(records, list):
        raise BenchmarkFormatError(
            f"expected a JSON array of problems, got {type(records).__name__}", file=file
        )
    rows = []
    for position, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise BenchmarkFormatError(
                f"expected a JSON object, got {type(record).__name__}", file=file, row=position
            )
        problem_id = _text_field(record, "ID", file, position)
        body = _text_field(record, "Body", file, position)
        question = _text_field(record, "Question", file, position)
        rows.append(
            _prompt_row(
                row_id=f"svamp-{split}-{problem_id}",
                prompt=f"{body} {question}",
                task="math",
                answer=_svamp_gold(record, file, position),
                source=f"svamp:{split}",
            )
        )
    _check_unique_ids(rows, file)
    return rows


# --------------------------------------------------------------------------------------------
# Multiple choice: ARC and MMLU


def _arc_subset_from_stem(stem: str) -> str:
    """``arc_easy`` / ``arc_challenge`` from an ARC file name (``ARC-Easy-Test``), else ``arc``."""
    normalised = _normalised_stem(stem)
    for subset in ("arc_easy", "arc_challenge"):
        if normalised.startswith(subset):
            return subset
    return "arc"


def _arc_question(record: dict[str, Any], path: Path, row: int) -> tuple[str, list[str], str]:
    """(question stem, choice texts in listed order, gold letter) of one ARC record."""
    question = record.get("question")
    if not isinstance(question, dict):
        raise BenchmarkFormatError(
            "expected an object with 'stem' and 'choices'", file=path, row=row, field="question"
        )
    stem = question.get("stem")
    if not isinstance(stem, str) or not stem.strip():
        raise BenchmarkFormatError(
            f"expected non-empty text, got {stem!r}", file=path, row=row, field="question.stem"
        )
    raw_choices = question.get("choices")
    if not isinstance(raw_choices, list) or not 2 <= len(raw_choices) <= _MAX_CHOICES:
        raise BenchmarkFormatError(
            f"expected a list of 2 to {_MAX_CHOICES} choices",
            file=path,
            row=row,
            field="question.choices",
        )
    texts, original_labels = [], []
    for number, choice in enumerate(raw_choices, start=1):
        field = f"question.choices[{number - 1}]"
        if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
            raise BenchmarkFormatError(
                "expected {'text': str, 'label': str}", file=path, row=row, field=field
            )
        label = choice.get("label")
        if not isinstance(label, str) or not label.strip():
            raise BenchmarkFormatError(
                f"missing label, got {label!r}", file=path, row=row, field=field
            )
        texts.append(choice["text"].strip())
        original_labels.append(label.strip())
    if len(set(original_labels)) != len(original_labels):
        raise BenchmarkFormatError(
            f"choice labels repeat: {original_labels}", file=path, row=row, field="question.choices"
        )
    answer_key = record.get("answerKey")
    key = answer_key.strip() if isinstance(answer_key, str) else answer_key
    if key not in original_labels:
        raise BenchmarkFormatError(
            f"answer key {answer_key!r} matches none of the choice labels {original_labels}",
            file=path,
            row=row,
            field="answerKey",
        )
    gold_letter = choice_labels(len(texts))[original_labels.index(key)]
    return stem.strip(), texts, gold_letter


def load_arc(path: str | Path, *, subset: str | None = None, split: str | None = None) -> list[Row]:
    """One ARC JSONL file (ARC-Easy or ARC-Challenge, any split) as MCQ prompt rows.

    ``subset`` (``arc_easy`` / ``arc_challenge``) and ``split`` default to what the original
    file name says (``ARC-Easy-Test.jsonl`` -> ``arc_easy``, ``test``). Rows are
    ``<subset>-<split>-<ARC id>`` with source ``<subset>:<split>``. Choices keep their listed
    order and are relabelled A, B, C, ...; the gold letter comes from matching ``answerKey``
    to the original labels, which are digits in a few hundred records.
    """
    file = _existing_path(path)
    subset = subset or _arc_subset_from_stem(file.stem)
    split = split or _split_from_stem(file.stem, prefix=subset)
    rows = []
    for line, record in _read_jsonl(file):
        record_id = _text_field(record, "id", file, line)
        stem, choices, gold = _arc_question(record, file, line)
        rows.append(
            _prompt_row(
                row_id=f"{subset}-{split}-{record_id}",
                prompt=stem,
                task="mcq",
                answer=gold,
                source=f"{subset}:{split}",
                choices=choices,
            )
        )
    _check_unique_ids(rows, file)
    return rows


_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def _mmlu_subject_and_split(file: Path) -> tuple[str, str]:
    """("anatomy", "test") from ``anatomy_test.csv``."""
    subject, separator, split = file.stem.rpartition("_")
    if not separator or not subject or not split:
        raise BenchmarkFormatError(
            "MMLU files must be named <subject>_<split>.csv (e.g. anatomy_test.csv)", file=file
        )
    return subject, split


def _load_mmlu_file(file: Path) -> list[Row]:
    """Rows of one headerless MMLU CSV: question, A, B, C, D, answer letter."""
    subject, split = _mmlu_subject_and_split(file)
    rows = []
    with file.open(newline="", encoding="utf-8") as handle:
        for record_number, record in enumerate(csv.reader(handle), start=1):
            if not record:
                continue
            if len(record) != len(_MMLU_COLUMNS):
                raise BenchmarkFormatError(
                    f"expected {len(_MMLU_COLUMNS)} columns {list(_MMLU_COLUMNS)}, got {len(record)}",
                    file=file,
                    row=record_number,
                )
            question, *choices, answer = (value.strip() for value in record)
            if not question:
                raise BenchmarkFormatError(
                    "empty question", file=file, row=record_number, field="question"
                )
            if answer not in _MMLU_COLUMNS[1:5]:
                raise BenchmarkFormatError(
                    f"expected one of A, B, C, D, got {answer!r}",
                    file=file,
                    row=record_number,
                    field="answer",
                )
            rows.append(
                _prompt_row(
                    row_id=f"mmlu-{split}-{subject}-{len(rows):05d}",
                    prompt=question,
                    task="mcq",
                    answer=answer,
                    source=f"mmlu:{split}:{subject}",
                    choices=choices,
                )
            )
    return rows


def load_mmlu(path: str | Path) -> list[Row]:
    """MMLU in its original CSV layout: one ``<subject>_<split>.csv`` file or a folder of them.

    Files have no header; columns are question, A, B, C, D, answer letter. A folder's files are
    read in name order. Rows are ``mmlu-<split>-<subject>-00000`` with source
    ``mmlu:<split>:<subject>``; "row" in errors is the 1-based CSV record of that file.
    """
    location = _existing_path(path)
    if location.is_file():
        return _load_mmlu_file(location)
    files = sorted(location.glob("*.csv"))
    if not files:
        raise FileNotFoundError(
            f"no <subject>_<split>.csv files in {location}; pass an MMLU split folder such as "
            "mmlu/test_subsample or one csv file"
        )
    rows = [row for file in files for row in _load_mmlu_file(file)]
    _check_unique_ids(rows, location)
    return rows


# --------------------------------------------------------------------------------------------
# Evaluation prompts (seed 004 App. C.1 / C.3)


def math_prompt(question: str) -> str:
    """8-shot chain-of-thought prompt for a math question (GSM8K and SVAMP).

    ``prompts/gsm8k_8shot.txt`` holds 8 solved problems from the GSM8K train subsample with
    their calculator annotations removed, each ending ``#### N``, as seed 004 App. C.3 asks of
    the model. The prompt ends with ``Answer:`` so the model continues on that line.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be non-empty text")
    return render(_MATH_TEMPLATE, question=question.strip()).rstrip()


def format_choices(choices: Sequence[str]) -> str:
    """Lettered choice lines: "A. first\\nB. second..."."""
    if isinstance(choices, str) or not 2 <= len(choices) <= _MAX_CHOICES:
        raise ValueError(f"choices must be a list of 2 to {_MAX_CHOICES} texts")
    labels = choice_labels(len(choices))
    return "\n".join(
        f"{label}. {text.strip()}" for label, text in zip(labels, choices, strict=True)
    )


def mcq_prompt(question: str, choices: Sequence[str]) -> str:
    """Zero-shot MCQ prompt that asks for brief reasoning and a final ``The answer is: X``.

    The closing phrase is the one seed 004 App. C.1 uses for MMLU and ARC, so that
    ``extract_choice`` can read it and the answer letter's next-token distribution can be
    measured right after ``The answer is:``.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be non-empty text")
    return render(
        _MCQ_TEMPLATE, question=question.strip(), choices=format_choices(choices)
    ).rstrip()


def eval_prompt(row: Row) -> str:
    """The model input for a benchmark row: ``math_prompt`` or ``mcq_prompt`` by ``task``."""
    task = row.get("task")
    if task == "math":
        return math_prompt(row["prompt"])
    if task == "mcq":
        if not row.get("choices"):
            raise ValueError(f"row {row.get('id')!r} has task 'mcq' but no choices")
        return mcq_prompt(row["prompt"], row["choices"])
    raise ValueError(
        f"row {row.get('id')!r} has task {task!r}; eval prompts exist for 'math' and 'mcq'"
    )


def subsample(rows: Sequence[Row], count: int, *, seed: int = 0) -> list[Row]:
    """``count`` rows drawn without replacement, kept in their original order.

    Seed 004 evaluates on fixed random subsets (200 GSM8K, 300 SVAMP, 200 MMLU, 500 per ARC
    set; App. C.1). The same ``seed`` gives the same subset; ``count`` at or above
    ``len(rows)`` returns every row.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if count >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[index] for index in chosen]


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its task, default evaluation file and loader."""

    name: str
    task: str
    relative_path: str
    """Default evaluation file or folder, relative to ``shared_data_dir()``."""
    loader: Callable[[Path], list[Row]]

    def default_path(self) -> Path:
        """The default evaluation data: the Hub copy, or a local mirror named by the env.

        With ``$MIPO_SHARED_DATA`` set, its copy of the original files (the folder layout of
        ``relative_path``; how the tests run offline); otherwise the canonical Hub dataset at
        a pinned revision, written once in the original layout under the cache
        (``mipo_engine.sources.hub``). Offline with neither, ``HubUnavailableError`` names
        the file to pass with ``--data``.
        """
        if os.environ.get(SHARED_DATA_ENV):
            return shared_data_dir() / self.relative_path
        from mipo_engine.sources.hub import fetch_hub_benchmark

        return fetch_hub_benchmark(self.name)

    def load(self, path: str | Path | None = None) -> list[Row]:
        """Rows from ``path``, or from the default evaluation data when None."""
        return self.loader(Path(path) if path is not None else self.default_path())


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("gsm8k", "math", "gsm8k/test.jsonl", load_gsm8k),
        Benchmark("svamp", "math", "svamp/SVAMP.json", load_svamp),
        Benchmark(
            "arc_easy",
            "mcq",
            "arc/ARC-Easy/ARC-Easy-Test.jsonl",
            functools.partial(load_arc, subset="arc_easy"),
        ),
        Benchmark(
            "arc_challenge",
            "mcq",
            "arc/ARC-Challenge/ARC-Challenge-Test.jsonl",
            functools.partial(load_arc, subset="arc_challenge"),
        ),
        Benchmark("mmlu", "mcq", "mmlu/test_subsample", load_mmlu),
    )
}


def load_benchmark(name: str, path: str | Path | None = None) -> list[Row]:
    """Rows of a named benchmark (``BENCHMARKS``), from ``path`` or its default file."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name].load(path)
