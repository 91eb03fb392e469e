"""Answer extraction: numbers from math completions, choice labels from MCQ completions.

Expected values are read off each text by hand; the GSM8K check derives the gold number from
the raw answer field with a plain string split, independent of the extractor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mipo_engine.evaluation import canonical_number, extract_choice, extract_number, numbers_equal
from mipo_engine.sources.benchmarks import shared_data_dir

ABCD = ["A", "B", "C", "D"]
DIGITS = ["1", "2", "3", "4"]


def _shared_gsm8k_dir() -> Path:
    try:
        return shared_data_dir() / "gsm8k"
    except FileNotFoundError as error:
        pytest.skip(f"shared benchmark data not available: {error}")


# --------------------------------------------------------------------------------------------
# extract_number


def test_extract_number_recovers_every_gsm8k_gold_answer() -> None:
    """Every GSM8K solution ends with '#### N'; the extractor must return N without commas."""
    folder = _shared_gsm8k_dir()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        pytest.skip(f"shared GSM8K data not found in {folder}")
    checked = 0
    for file in files:
        for line in file.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            solution = json.loads(line)["answer"]
            gold = solution.split("#### ")[-1].strip().replace(",", "")
            assert extract_number(solution) == gold, solution
            checked += 1
    assert checked == 1319 + 2000


MATH_OUTPUTS = [
    # (model output, expected canonical answer)
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("Total = 12 * 5 = 60\n#### 60\n", "60"),
    ("The cost is $1,080 in total.\n#### $1,080", "1080"),
    ("#### 1,450,000", "1450000"),
    ("He pays 20 - 5 = $15.\n#### 15.", "15"),
    ("The answer is 18.00\n#### 18.00", "18"),
    ("So the result is 51.0\n#### 51.0", "51"),
    ("The temperature drops to -4 degrees.\n#### -4", "-4"),
    ("Change in balance: 20 - 25 = -5\n#### −5", "-5"),
    ("Each slice weighs 2.5 ounces.\n#### 2.5", "2.5"),
    ("Half a dollar per item.\n#### 0.50", "0.5"),
    ("He saves 25% of 80, which is 20.\n#### 20%", "20"),
    ("#### 42 cookies", "42"),
    ("#### The answer is 9", "9"),
    # The last "####" wins when the model corrects itself.
    ("#### 12\nWait, I forgot the tax.\n12 + 3 = 15\n#### 15", "15"),
    # A "####" with no number after it falls back to the last number in the text.
    ("Step 1: 4 * 6 = 24\n####", "24"),
    # An invented next exemplar after the answer is ignored.
    (
        "3 * 4 = 12\n#### 12\n\nQuestion: Tom has 5 pens and buys 2 more.\nAnswer: 5 + 2 = 7\n#### 7",
        "12",
    ),
    ("The answer is 7.\n\nQuestion: How many legs do 3 cats have?\nAnswer: 12", "7"),
    # No "####": the last number in the text.
    ("First, 16 - 3 - 4 = 9 eggs. Then 9 * 2 = 18 dollars.", "18"),
    ("Janet makes $18 every day.", "18"),
    ("The final answer is 1,234.", "1234"),
    ("So she needs 3 more boxes. That is the answer.", "3"),
    ("We get x = -12.", "-12"),
    ("The area is 12.75 square meters", "12.75"),
    ("It costs $.75 per pencil", "0.75"),
    ("In total 2,125 people came, so 2,125 is the answer", "2125"),
    # Hyphens between tokens are not minus signs.
    ("He bought 16-3 = 13 eggs", "13"),
    ("She is a 5-year-old", "5"),
    ("16-3", "3"),
    ("A (-3) change in score", "-3"),
    ("He owes -$40 after the trip.", "-40"),
    ("She reads 10 pages a day for 3 days, 10 x 3 = 30 pages total.", "30"),
    ("Profit: $2,500.00.", "2500"),
    # Nothing to extract.
    ("I am not sure how to solve this.", None),
    ("", None),
    ("#### eighteen", None),
]


@pytest.mark.parametrize(("output", "expected"), MATH_OUTPUTS)
def test_extract_number_on_model_outputs(output: str, expected: str | None) -> None:
    assert extract_number(output) == expected


def test_extract_number_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        extract_number(18)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1,080", "1080"),
        (" $18.00 ", "18"),
        ("51.0", "51"),
        (51.0, "51"),
        (7, "7"),
        (0.1, "0.1"),
        (1e16, "10000000000000000"),
        ("-0", "0"),
        ("0.00", "0"),
        ("50%", "50"),
        ("7.", "7"),
        (".5", "0.5"),
        ("−4", "-4"),
        ("1.2.3", None),
        ("abc", None),
        ("3 apples", None),
        ("", None),
        (float("nan"), None),
    ],
)
def test_canonical_number(written: str | float, expected: str | None) -> None:
    assert canonical_number(written) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1,080", "1080", True),
        ("$18", "18.00", True),
        ("51.0", 51, True),
        (51.0, "51", True),
        ("0.5", ".50", True),
        ("-3", "3", False),
        ("18", "19", False),
        ("2.5", "2.50001", False),
        (None, "3", False),
        ("three", "3", False),
        ("", "", False),
    ],
)
def test_numbers_equal(a: object, b: object, equal: bool) -> None:
    assert numbers_equal(a, b) is equal  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# extract_choice

MCQ_OUTPUTS = [
    # (model output, labels, expected)
    ("Photosynthesis turns light into chemical energy.\nThe answer is: A", ABCD, "A"),
    ("The answer is: C", ABCD, "C"),
    ("The answer is (B).", ABCD, "B"),
    ("Answer: D", ABCD, "D"),
    ("**Answer:** B", ABCD, "B"),
    ("The answer is: **C**", ABCD, "C"),
    ("Thus the correct answer is \\boxed{D}.", ABCD, "D"),
    ("The correct option is C because the others are wrong.", ABCD, "C"),
    ("So the answer would be B.", ABCD, "B"),
    ("The answer is option (A)", ABCD, "A"),
    ("the answer is: c", ABCD, "C"),
    ("The answer is (d)", ABCD, "D"),
    # An article "A" in the reasoning must not override the explicit statement.
    (
        "A plant needs light to grow. A seed in the dark will not sprout.\nThe answer is: B",
        ABCD,
        "B",
    ),
    ("The answer is: C. A magnet attracts iron, which is a metal.", ABCD, "C"),
    # Self-correction: the last statement wins.
    ("The answer is A. Wait, that ignores friction. The answer is: D", ABCD, "D"),
    # "Answer A is wrong" names a choice but states nothing.
    ("Answer A is wrong because mass is conserved. The answer is: B", ABCD, "B"),
    ("The answer is: E", ["A", "B", "C", "D", "E"], "E"),
    # A statement naming a letter that is not a choice falls through to the other rules.
    ("The answer is: E\nC", ABCD, "C"),
    # Digit labels.
    ("The answer is: 3", DIGITS, "3"),
    ("Answer: (2)", DIGITS, "2"),
    ("There are 12 eggs and 4 baskets, so 3 per basket.\nThe answer is: 1", DIGITS, "1"),
    ("The answer is 12", DIGITS, None),
    ("Step 1. Count the legs.\n3. Add them up", DIGITS, None),
    ("Reasoning about the options.\n4", DIGITS, "4"),
    # Fallbacks when there is no statement.
    ("Mercury is closest to the Sun.\nB", ABCD, "B"),
    ("Gravity pulls objects down.\n(C)", ABCD, "C"),
    ("D. Planetary gravity will become stronger.", ABCD, "D"),
    ("Between the options, (B) is the only one about energy.", ABCD, "B"),
    ("I think C is correct.", ABCD, "C"),
    ("A is correct since plants make food.", ABCD, "A"),
    ("A plant makes its own food.", ABCD, None),
    ("I am not sure which one fits.", ABCD, None),
    ("", ABCD, None),
]


@pytest.mark.parametrize(("output", "labels", "expected"), MCQ_OUTPUTS)
def test_extract_choice_on_model_outputs(
    output: str, labels: list[str], expected: str | None
) -> None:
    assert extract_choice(output, labels) == expected


def test_extract_choice_matches_choice_text_when_no_label_is_given() -> None:
    choices = ["water", "salt water", "sand", "air"]
    assert extract_choice("It must be salt water.", ABCD, choices=choices) == "B"
    assert extract_choice("Plain water boils first.", ABCD, choices=choices) == "A"
    # An explicit statement still wins over a later choice text.
    assert extract_choice("The answer is: C, not air", ABCD, choices=choices) == "C"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("ABCD", "sequence of strings"),
        ([], "empty"),
        (["A", "A"], "distinct"),
        (["A", " B"], "without spaces"),
    ],
)
def test_extract_choice_rejects_bad_labels(labels: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_choice("The answer is: A", labels)  # type: ignore[arg-type]


def test_extract_choice_rejects_choices_of_wrong_length() -> None:
    with pytest.raises(ValueError, match="one choice text per label"):
        extract_choice("The answer is: A", ABCD, choices=["x", "y"])
