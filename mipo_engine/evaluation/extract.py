"""Read final answers out of model outputs: numbers for math, choice labels for MCQ.

The evaluation protocol follows seed 004 App. C.1/C.3: math models write the final number after
``####`` (GSM8K's own convention), MCQ models end with ``The answer is: X``. Models do not always
comply, so each extractor first looks for the requested format and then falls back to the most
plausible reading, in an order documented on each function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

from mipo_engine.numbers import canonical_number, numbers_in

# A line that starts a new few-shot exemplar: anything from here on is a problem the model
# invented after answering, and its "####" must not be read as the answer.
_NEW_EXEMPLAR = re.compile(r"\n\s*Question:")

_FINAL_MARKER = "####"


def extract_number(text: str) -> str | None:
    """Final numeric answer of a math completion, in canonical form, or None.

    Order of preference:

    1. The completion is cut where the model starts a new ``Question:`` line: few-shot prompts
       (``prompts/gsm8k_8shot.txt``) invite base models to invent the next exemplar, and that
       exemplar's answer is not the answer to this problem.
    2. The first number after the last ``####`` (the format the prompt asks for, seed 004
       App. C.1; GSM8K's gold answers use it too).
    3. Otherwise the last number anywhere in the text (the usual lenient reading of free-form
       chain-of-thought output).

    Commas between thousands, ``$`` and ``%`` are dropped, trailing ``.0``/``.00`` removed;
    negatives and decimals are kept (``"-3"``, ``"2.5"``). A fraction such as ``3/4`` is read as
    its last number, which is rarely what a GSM8K answer looks like.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_number expects a str, got {type(text).__name__}")
    text = _NEW_EXEMPLAR.split(text, maxsplit=1)[0]
    if _FINAL_MARKER in text:
        after_marker = text.rsplit(_FINAL_MARKER, 1)[1]
        numbers = numbers_in(after_marker)
        if numbers:
            return numbers[0]
    numbers = numbers_in(text)
    return numbers[-1] if numbers else None


def numbers_equal(a: str | int | float | None, b: str | int | float | None) -> bool:
    """Whether two written numbers have the same value (``"1,080"`` equals ``1080.0``).

    Both sides go through ``canonical_number``; anything that is not a single number (None,
    empty, words) compares unequal, so a failed extraction never counts as correct.
    """
    if a is None or b is None:
        return False
    left, right = canonical_number(a), canonical_number(b)
    if left is None or right is None:
        return False
    return Decimal(left) == Decimal(right)


# Phrases that announce the final choice ("The answer is: B", "Answer: (C)", "the correct option
# would be D"). A connector (is / would be / ":" / "=") is required so that "Answer A is wrong"
# is not read as a statement. Markdown bold, \boxed{...} and words like "option" may sit between
# the phrase and the label.
_STATEMENT_LEAD = (
    r"\b(?:answer|option|choice)"
    r"(?:\s*(?:is|was|would\s+be|should\s+be|will\s+be)\s*[:=]?|\s*[:=])"
    r"(?:\s*(?:\*\*|\\boxed\{|\\text\{|option\b|choice\b|letter\b))*\s*"
)

# Words after which a capital "A" or "I" is still a label ("A is correct"); before any other
# lowercase word it is the English article or pronoun ("A plant needs ...").
_LABEL_VERBS = r"(?:is|was|seems|looks|would|could|must|should|and|or)\b"


def _label_alternatives(labels: Sequence[str]) -> str:
    """Regex alternation over the labels, longest first so "10" wins over "1"."""
    ordered = sorted(labels, key=len, reverse=True)
    return "|".join(re.escape(label) for label in ordered)


def _validate_labels(labels: Sequence[str]) -> list[str]:
    """Labels as a list; raises ValueError when they cannot identify a choice."""
    if isinstance(labels, str):
        raise ValueError(
            f"labels must be a sequence of strings such as ['A', 'B', 'C', 'D'], got the "
            f"string {labels!r}; pass list({labels!r}) if each character is a label"
        )
    label_list = list(labels)
    if not label_list:
        raise ValueError("labels is empty; pass the choice labels, e.g. ['A', 'B', 'C', 'D']")
    for label in label_list:
        if not isinstance(label, str) or not label or label != label.strip():
            raise ValueError(f"each label must be a non-empty string without spaces, got {label!r}")
    if len(set(label_list)) != len(label_list):
        raise ValueError(f"labels must be distinct, got {label_list}")
    return label_list


def _last_statement(text: str, alternatives: str) -> str | None:
    """Label named by the last explicit answer statement, or None.

    The phrase is matched case-insensitively. The label must match exactly, except in brackets
    ("(c)") or when it ends the line ("The answer is: c."), where a lowercase letter cannot be
    the start of an English word.
    """
    pattern = re.compile(
        _STATEMENT_LEAD
        + r"(?:[(\[]\s*(?P<bracketed>"
        + alternatives
        + r")\s*[)\]]"
        + r"|(?-i:(?P<bare>"
        + alternatives
        + r"))(?![\w'])"
        + r"|(?P<line_end>"
        + alternatives
        + r")(?=[.!)}*]*[ \t]*$))",
        re.IGNORECASE | re.MULTILINE,
    )
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return last.group("bracketed") or last.group("bare") or last.group("line_end")


def _lone_label_line(text: str, alternatives: str, *, allow_text_after: bool) -> str | None:
    """Label when the last non-empty line is a label: "B", "(B)", "B." or "B) Paris".

    Text after the label is allowed only for letter labels: for digit labels a line such as
    "3. Add the two numbers" is a numbered reasoning step.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    tail = r"(?:[.):]\s*.*)?" if allow_text_after else r"[.)]?"
    pattern = re.compile(r"\**\(?(?P<label>" + alternatives + r")\)?\**" + tail)
    match = pattern.fullmatch(lines[-1])
    return match.group("label") if match else None


def _last_bracketed_label(text: str, alternatives: str) -> str | None:
    """Label of the last "(X)" in the text."""
    matches = re.findall(r"\((" + alternatives + r")\)", text)
    return matches[-1] if matches else None


def _last_choice_text(text: str, labels: Sequence[str], choices: Sequence[str]) -> str | None:
    """Label of the choice whose text occurs last in the output (case-insensitive, whole words).

    Occurrences are ranked by where they end, then by length, so "salt water" beats its
    substring "water" when the output ends with "salt water".
    """
    best_label, best_rank = None, (-1, -1)
    for label, choice in zip(labels, choices, strict=True):
        needle = choice.strip()
        if not needle:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", re.IGNORECASE)
        occurrences = list(pattern.finditer(text))
        if not occurrences:
            continue
        rank = (occurrences[-1].end(), len(needle))
        if rank > best_rank:
            best_label, best_rank = label, rank
    return best_label


def _last_standalone_letter(text: str, labels: Sequence[str]) -> str | None:
    """Last letter label standing as its own token.

    "A" and "I" followed by a lowercase word are read as English words ("A plant needs ..."),
    unless that word is a verb or conjunction that suggests a label ("A is correct").
    """
    alternatives = []
    for label in sorted(labels, key=len, reverse=True):
        escaped = re.escape(label)
        if label in ("A", "I"):
            escaped += r"(?!\s+(?!" + _LABEL_VERBS + r")[a-z])"
        alternatives.append(escaped)
    pattern = re.compile(r"(?<![\w'])(" + "|".join(alternatives) + r")(?![\w'])")
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def extract_choice(
    text: str, labels: Sequence[str], *, choices: Sequence[str] | None = None
) -> str | None:
    """The choice label a MCQ completion commits to, one of ``labels``, or None.

    Order of preference (the first rule that finds something wins):

    1. The last explicit statement: ``The answer is: X`` (the format the prompt asks for,
       seed 004 App. C.1), ``The answer is (X)``, ``Answer: X``, ``the correct option is X``,
       ``**X**`` or ``\\boxed{X}`` after such a phrase. When a text has one, no other rule
       runs, so an article "A" elsewhere in the reasoning cannot override it.
    2. The last non-empty line being a label (``B``, ``(B)``, ``B. Paris``).
    3. For letter labels: the last bracketed label ``(X)``.
    4. When ``choices`` (the choice texts, in label order) are given: the choice whose text
       occurs last in the output.
    5. For letter labels: the last letter standing alone as a token, except an "A" or "I" that
       reads as an English word. Digit labels skip rules 3 and 5 because reasoning is full of
       numbers and numbered steps.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_choice expects a str, got {type(text).__name__}")
    label_list = _validate_labels(labels)
    if choices is not None and len(choices) != len(label_list):
        raise ValueError(
            f"choices has {len(choices)} entries but labels has {len(label_list)}; "
            "pass one choice text per label, in the same order"
        )
    letters = all(label.isalpha() for label in label_list)
    alternatives = _label_alternatives(label_list)
    found = _last_statement(text, alternatives) or _lone_label_line(
        text, alternatives, allow_text_after=letters
    )
    if found is None and letters:
        found = _last_bracketed_label(text, alternatives)
    if found is None and choices is not None:
        found = _last_choice_text(text, label_list, choices)
    if found is None and letters:
        found = _last_standalone_letter(text, label_list)
    return _as_listed_label(found, label_list)


def _as_listed_label(found: str | None, labels: Sequence[str]) -> str | None:
    """Map a case-insensitively matched label back to its spelling in ``labels``."""
    if found is None:
        return None
    for label in labels:
        if label == found:
            return label
    for label in labels:
        if label.lower() == found.lower():
            return label
    return None
