"""IFEval: verdicts on hand-written responses, the four metrics, --responses scoring.

Expected verdicts are written by hand from the paper's definitions (arXiv:2311.07911
sec. 2-3) and each is also compared with the verifier library (``if-verifiable``) called
directly, so a wrong mapping or wrapper shows up either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import is_complete, read_artifact, summary_path
from mipo_engine.errors import InputError
from mipo_engine.evaluation.ifeval import metric_values, per_instruction_type, verify
from mipo_engine.evaluation.punkt_data import install_punkt
from mipo_engine.sources.ifeval import load_ifeval, read_responses
from mipo_engine.stages.eval import EvalConfig, run_eval

END = "Is there anything else I can help with?"
TWELVE_PLACEHOLDERS = " ".join(f"[field {n}]" for n in range(12))
SEVEN_SENTENCES = (
    "I woke up worried about work. I made a list of tasks. I took a short walk. "
    "I called a friend. I cooked dinner slowly. I wrote down three good things. I slept well."
)

# (IFEval key, response, strict verdict, loose verdict); each key has one instruction.
CASES: list[tuple[int, str, bool, bool]] = [
    # change_case:capital_word_frequency (at least 3)
    (1592, "The KEY point: GREEN energy needs SOLAR power.", True, True),
    (1592, "Only ONE word is in capitals here.", False, False),
    # combination:two_responses (separated by ******)
    (1098, "Yahweh\n******\nAllah", True, True),
    (1098, "People call God Yahweh.", False, False),
    # detectable_content:number_placeholders (at least 12)
    (1005, f"Resume of {TWELVE_PLACEHOLDERS}.", True, True),
    (1005, "Name: [name], school: [school].", False, False),
    # detectable_content:postscript (P.P.S)
    (1246, "Soft and bright, the product shines.\nP.P.S. Buy two.", True, True),
    (1246, "Soft and bright, the product shines.", False, False),
    # detectable_format:constrained_response
    (227, "My answer is no.", True, True),
    (227, "The golden retriever is usually bigger.", False, False),
    # detectable_format:json_format: a lead-in line fails strictly, passes loosely
    (1075, '{"product": "diaper", "claim": "comfortable"}', True, True),
    (1075, 'Here is the advert:\n{"product": "diaper"}', False, True),
    (1075, "A comfortable diaper for babies.", False, False),
    # detectable_format:multiple_sections (4 sections marked "Section X")
    (1131, "Section 1\nIntro\nSection 2\nSkills\nSection 3\nShows\nSection 4\nContact", True, True),
    (1131, "Section 1\nIntro\nSection 2\nSkills", False, False),
    # detectable_format:number_bullet_lists (exactly 3)
    (102, "* Hi\n* Hello\n* Let us go", True, True),
    (102, "* Hi\n* Hello", False, False),
    # detectable_format:title (<<...>>)
    (1322, "<<Kotlin versus Java>>\nKotlin is concise.", True, True),
    (1322, "Kotlin versus Java: Kotlin is concise.", False, False),
    # keywords:existence (atlantis, constable)
    (1531, "A constable from Atlantis will lead the study.", True, True),
    (1531, "A study set in Atlantis.", False, False),
    # keywords:forbidden_words (field, thanks, issue, collaborator)
    (1147, "The repair has been completed.", True, True),
    (1147, "We fixed the issue.", False, False),
    # keywords:frequency (synonyms at least 3 times)
    (1393, "Synonyms help; synonyms confuse; synonyms multiply.", True, True),
    (1393, "Two names are synonyms.", False, False),
    # keywords:letter_frequency (letter t less than 2 times)
    (1130, "Quiz: which sofa is soft?", True, True),
    (1130, "That test is tricky.", False, False),
    # length_constraints:number_sentences (less than 6), counted by NLTK's Punkt
    (1268, "Mr. Lee felt calm at 5 p.m. today. He wrote it down.", True, True),
    (1268, SEVEN_SENTENCES, False, False),
    # length_constraints:number_words (at least 400)
    (1072, " ".join(["hammock"] * 400), True, True),
    (1072, "Hammocks are great.", False, False),
    # length_constraints:number_paragraphs (exactly 2, separated by ***)
    (1082, "He woke up.\n***\nHe saw a health bar.", True, True),
    (1082, "He woke up. *** He saw a bar. *** He left.", False, False),
    # ... removing the first line leaves exactly two paragraphs: a loose pass
    (1082, "He woke up.\n***\nHe saw a bar.\n***\nHe left.", False, True),
    # punctuation:no_comma
    (1001, "Day one we walk in Kyoto.", True, True),
    (1001, "Day one, Kyoto.", False, False),
    # startend:end_checker: a trailing line fails strictly, passes loosely
    (1128, f"The sentiment is negative. {END}", True, True),
    (1128, f"The sentiment is negative. {END}\nGoodbye!", False, True),
    (1128, "The sentiment is negative.", False, False),
    # startend:quotation: markdown asterisks or a lead-in line pass only loosely
    (122, '"The internet changed how teenagers learn."', True, True),
    (122, '**"The internet changed how teenagers learn."**', False, True),
    (122, 'Sure:\n"The internet changed how teenagers learn."', False, True),
    (122, "The internet changed how teenagers learn.", False, False),
    # an empty response follows nothing
    (1001, "", False, False),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the installed Punkt model in a temporary cache."""
    monkeypatch.setenv("MIPO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mipo-cache"))


@pytest.fixture(scope="module")
def items() -> dict[int, dict[str, Any]]:
    return {int(row["id"].removeprefix("ifeval-")): row for row in load_ifeval()}


def _library_verdict(item: dict[str, Any], response: str) -> tuple[list[bool], list[bool]]:
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    install_punkt()
    sample = IFEvalSample(0, item["prompt"], item["instruction_ids"], item["kwargs"])
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    return [r.strict_pass for r in results], [r.loose_pass for r in results]


def test_bundled_prompts_are_the_full_benchmark(items: dict[int, dict[str, Any]]) -> None:
    assert len(items) == 541
    ids = [name for row in items.values() for name in row["instruction_ids"]]
    assert len(ids) == 834 and len(set(ids)) == 25


def test_cases_cover_the_required_spread() -> None:
    keys = {key for key, *_ in CASES}
    assert len(keys) >= 15
    for key in keys:
        verdicts = {strict for k, _, strict, _ in CASES if k == key}
        assert verdicts == {True, False}, f"key {key} needs a passing and a failing response"


@pytest.mark.parametrize(("key", "response", "strict", "loose"), CASES)
def test_verdicts_match_hand_labels_and_the_library(
    items: dict[int, dict[str, Any]], key: int, response: str, strict: bool, loose: bool
) -> None:
    item = items[key]
    assert len(item["instruction_ids"]) == 1
    verdict = verify(item["prompt"], item["instruction_ids"], item["kwargs"], response)
    assert (verdict.strict, verdict.loose) == ((strict,), (loose,))
    if response:
        assert _library_verdict(item, response) == ([strict], [loose])


def test_instruction_types_covered(items: dict[int, dict[str, Any]]) -> None:
    types = {items[key]["instruction_ids"][0] for key, *_ in CASES}
    assert len(types) >= 10


def test_punkt_model_counts_sentences_like_nltk_docs() -> None:
    """NLTK's documented outputs of its English Punkt model (data.doctest, abbreviations)."""
    import nltk

    install_punkt()
    tokenizer = nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    assert tokenizer.tokenize("Hello.  This is a test.  It works!") == [
        "Hello.",
        "This is a test.",
        "It works!",
    ]
    assert nltk.sent_tokenize("Mr. Smith arrived at 5 p.m. on Monday. He left.") == [
        "Mr. Smith arrived at 5 p.m. on Monday.",
        "He left.",
    ]


def test_four_metrics_by_hand() -> None:
    """Two prompts: one follows 2 of 3 instructions, one follows its only instruction."""
    strict = [[True, False, True], [True]]
    loose = [[True, True, True], [True]]
    values = metric_values(strict, loose)
    means = {name: sum(v) / len(v) for name, v in values.items()}
    assert means == {
        "prompt_level_strict": 0.5,
        "prompt_level_loose": 1.0,
        "instruction_level_strict": 0.75,
        "instruction_level_loose": 1.0,
    }
    table = per_instruction_type([["a", "b", "a"], ["b"]], strict, loose)
    assert table == {
        "a": {"n": 2, "strict": 1.0, "loose": 1.0},
        "b": {"n": 2, "strict": 0.5, "loose": 1.0},
    }


# --------------------------------------------------------------------------------------------
# --responses


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _score(responses: Path, out: Path) -> Path:
    config = EvalConfig.from_options(task="ifeval", out=out, responses=responses)
    return run_eval(config)


def test_responses_file_is_scored_without_a_model(
    items: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    passing: dict[int, str] = {}
    for key, text, strict, _ in CASES:
        if strict and key != 1075 and len(passing) < 10:
            passing.setdefault(key, text)
    loose_only = 'Here is the advert:\n{"product": "diaper"}'
    chosen = [*passing.items(), (1075, loose_only)]  # ten passing, one loose-only
    records = [{"prompt": items[key]["prompt"], "response": text} for key, text in chosen]
    path = _score(_write_jsonl(tmp_path / "responses.jsonl", records), tmp_path / "e.parquet")
    assert is_complete(path)
    frame = read_artifact(path, EVAL)
    summary = json.loads(summary_path(path).read_text())
    assert frame.height == 11 and summary["items"] == 11
    assert summary["prompt_level_strict"]["mean"] == pytest.approx(10 / 11)
    assert summary["prompt_level_loose"]["mean"] == 1.0
    assert summary["instruction_level_strict"]["n"] == 11
    low, high = summary["prompt_level_strict"]["low"], summary["prompt_level_strict"]["high"]
    assert low <= 10 / 11 <= high
    assert summary["per_instruction"]["detectable_format:json_format"] == {
        "n": 1,
        "strict": 0.0,
        "loose": 1.0,
    }
    assert frame["finish_reason"].null_count() == 11

    # The eval artifact itself is a valid --responses input and gives the same numbers.
    again = _score(path, tmp_path / "again.parquet")
    assert (
        json.loads(summary_path(again).read_text())["prompt_level_strict"]
        == (summary["prompt_level_strict"])
    )


def test_parquet_with_prompt_and_response_columns(
    items: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    frame = pl.DataFrame({"prompt": [items[1001]["prompt"]], "response": ["No commas here."]})
    frame.write_parquet(tmp_path / "r.parquet")
    path = _score(tmp_path / "r.parquet", tmp_path / "e.parquet")
    assert read_artifact(path, EVAL)["strict_followed"].to_list() == [[True]]


@pytest.mark.parametrize(
    ("content", "row", "field"),
    [
        (b'{"prompt": "PROMPT"}\n', 1, "response"),
        (
            b'{"prompt": "PROMPT", "response": "ok"}\n{"prompt": "Unknown?", "response": "x"}\n',
            2,
            "prompt",
        ),
        (
            b'{"prompt": "PROMPT", "response": "ok"}\n{"prompt": "PROMPT", "response": "x"}\n',
            2,
            "prompt",
        ),
        (b'{"prompt": "PROMPT", "response": 3}\n', 1, "response"),
        (b'\n{"prompt": "PROMPT", "response": "caf\xe9"}\n', 2, None),
        (b'{"prompt": "PROMPT", "response": "ok"\n', 1, None),
    ],
)
def test_malformed_responses_are_refused(
    items: dict[int, dict[str, Any]], tmp_path: Path, content: bytes, row: int, field: str | None
) -> None:
    prompt = json.dumps(items[1001]["prompt"])[1:-1].encode()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content.replace(b"PROMPT", prompt))
    with pytest.raises(InputError) as error:
        read_responses(bad, list(items.values()))
    assert (error.value.file, error.value.row, error.value.field) == (str(bad), row, field)


def test_cli_refuses_malformed_file_with_exit_2_and_writes_nothing(
    items: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from mipo_engine.commands import eval as eval_command

    app = typer.Typer()
    app.command()(eval_command.command)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": items[1001]["prompt"]}])
    out = tmp_path / "out" / "e.parquet"
    result = CliRunner().invoke(
        app, ["--task", "ifeval", "--responses", str(bad), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "row 1" in result.output
    assert "'response'" in result.output
    assert not out.exists() and not summary_path(out).exists()


def test_unknown_instruction_id_in_prompts_file_is_refused(tmp_path: Path) -> None:
    record = {"key": 1, "prompt": "Hi", "instruction_id_list": ["made:up"], "kwargs": [{}]}
    path = _write_jsonl(tmp_path / "input_data.jsonl", [record])
    with pytest.raises(InputError) as error:
        load_ifeval(path)
    assert (error.value.row, error.value.field) == (1, "instruction_id_list")
