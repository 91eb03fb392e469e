"""Verifiable preference items: recognise them from their wording and check a response.

Seed 004 (sec. 5.3-5.4, App. C.2) states a user's context as itemised preferences and judges
each item with a rubric. Some items need no judge at all: "Keep the whole answer to at most 60
words" or "End your response with a question" can be checked by a function. This module keeps
one registry, ``CONSTRAINT_TYPES``, of such item types. Each type has a regular expression that
recognises its canonical phrasing in an item and captures its parameter (a number or a quoted
word), and decides adherence for a response::

    >>> check_constraint("Use exactly 3 bullet points.", "- a\\n- b\\n- c")
    True
    >>> constraint_type("I like a warm tone.") is None
    True

Where IFEval (Zhou et al. 2023) has an instruction for the type, the item is expressed as that
instruction id with its kwargs (``ConstraintType.ifeval``) and checked by IFEval's reference
verifier (strict, ``mipo_engine.evaluation.ifeval.verify``), so adherence means what IFEval's
instruction-level accuracy means: "at most N words" is ``length_constraints:number_words``
with ``less than N+1``, a required word is ``keywords:existence`` (a case-insensitive
search, also inside longer words), an empty response follows no instruction, and so on.
``PROJECT_ONLY_TYPES`` lists the types IFEval lacks; only those keep a checker of their own.

Text conventions of the project's own checkers (the counting helpers are public so evaluation code
reports the same numbers the checkers use):

- words: whitespace-separated tokens that contain a letter or digit; list markers (``-``,
  ``*``, ``+``, ``•``, ``1.``, ``1)``) and heading marks (``#``) do not count;
- bullet points: lines starting with one of those list markers followed by text (nested items
  count too; ``**bold**`` and ``---`` rules are not bullets);
- paragraphs: blocks separated by blank lines (the markdown definition); heading lines are not
  paragraphs, and a list block counts as one paragraph;
- word matching: case-insensitive, on word boundaries, curly apostrophes read as straight ones;
  a possessive ``'s`` still counts as the word.

Project-only absence items (no bullets, no digits) hold for an empty response; presence items
(a first word, a question at the end) do not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

IFEvalInstruction = tuple[str, dict[str, Any]]
"""An IFEval instruction id and its kwargs, e.g. ("punctuation:no_comma", {})."""

__all__ = [
    "CONSTRAINT_TYPES",
    "PROJECT_ONLY_TYPES",
    "ConstraintType",
    "check_constraint",
    "constraint_adherence",
    "constraint_type",
    "count_bullets",
    "count_paragraphs",
    "count_sentences",
    "count_words",
    "is_verifiable",
    "parse_constraint",
]

# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------

_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_HEADING_MARKER = re.compile(r"^\s*#{1,6}\s+")
_HEADING_LINE = re.compile(r"^\s*#{1,6}\s+\S")
_BLANK_LINE_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")
# A sentence ends at . ! ? (or an ellipsis), possibly followed by closing quotes or brackets,
# then whitespace.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_INITIALS = re.compile(r"^(?:[a-z]\.)+$", re.IGNORECASE)
# Common abbreviations whose final period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "approx."}
)
# Abbreviations only before a number ("No. 5", "Fig. 2"); "No. I can't." is two sentences.
_NUMBER_ABBREVIATIONS = frozenset({"no.", "fig."})
# The "reply" rule of count_sentences: abbreviations masked before splitting.
_REPLY_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|approx|Mr|Mrs|Ms|Dr|St)\.", re.I)
_REPLY_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*(?:\s+|$)|\n+")
# Characters that may trail or lead a response as markdown or quoting around its real text.
_TRAILING_MARKUP = " \t\r\n*_\"'”’)]"
_LEADING_MARKUP = " \t\r\n#*_>\"'“‘([-"


def _normalise_quotes(text: str) -> str:
    """Read curly apostrophes and quotes as straight ones, so both spellings match."""
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


def _has_alnum(text: str) -> bool:
    return any(character.isalnum() for character in text)


def _is_list_item(line: str) -> bool:
    """A markdown list item: a marker, whitespace, then text with a letter or digit."""
    marker = _LIST_MARKER.match(line)
    return marker is not None and _has_alnum(line[marker.end() :])


def count_words(text: str) -> int:
    """Number of words: whitespace tokens with a letter or digit, list/heading marks excluded."""
    total = 0
    for line in text.splitlines():
        line = _HEADING_MARKER.sub("", _LIST_MARKER.sub("", line))
        total += sum(1 for token in line.split() if _has_alnum(token))
    return total


def count_bullets(text: str) -> int:
    """Number of markdown list items (``-``, ``*``, ``+``, ``•``, ``1.``, ``1)``), any depth."""
    return sum(1 for line in text.splitlines() if _is_list_item(line))


def count_paragraphs(text: str) -> int:
    """Number of blank-line-separated blocks with text; heading lines do not count."""
    total = 0
    for block in _BLANK_LINE_SPLIT.split(text):
        body = [line for line in block.splitlines() if not _HEADING_LINE.match(line)]
        if _has_alnum("\n".join(body)):
            total += 1
    return total


def _ends_with_abbreviation(piece: str, following: str) -> bool:
    last_token = piece.split()[-1].lower() if piece.split() else ""
    if last_token in _NUMBER_ABBREVIATIONS:
        return following[:1].isdigit()
    return last_token in _ABBREVIATIONS or bool(_INITIALS.match(last_token))


SentenceRule = Literal["response", "reply"]


def count_sentences(text: str, *, rule: SentenceRule = "response") -> int:
    """Number of sentences: split at . ! ? followed by whitespace, and at line breaks.

    Line breaks end a sentence because list items and headings rarely carry a final period.
    A decimal point never ends one (no whitespace follows it). The two rules differ only in
    which periods are not sentence ends:

    - ``"response"`` (checking a response against a verifiable sentence limit): list and
      heading marks are dropped, and a period after a common abbreviation (``e.g.``,
      ``Dr.``), initials (``U.S.``) or a numbering abbreviation before its number (``No. 5``)
      does not end a sentence.
    - ``"reply"`` (checking a model's context item or user statement against its length
      limit): only a fixed list of abbreviations (``e.g.``, ``i.e.``, ``etc.``, ``vs.``,
      ``cf.``, ``approx.``, ``Mr.``, ``Mrs.``, ``Ms.``, ``Dr.``, ``St.``) is skipped, so
      initials and ``No. 5`` count as sentence ends.
    """
    if rule == "reply":
        masked = _REPLY_ABBREVIATIONS.sub(lambda match: match.group(0).replace(".", "_"), text)
        return len([part for part in _REPLY_SENTENCE_BREAK.split(masked) if part.strip()])
    if rule != "response":
        raise ValueError(f"unknown sentence rule {rule!r}; choose 'response' or 'reply'")
    total = 0
    for line in text.splitlines():
        line = _HEADING_MARKER.sub("", _LIST_MARKER.sub("", line)).strip()
        if not line:
            continue
        pieces: list[str] = []
        for piece in _SENTENCE_SPLIT.split(line):
            if pieces and _ends_with_abbreviation(pieces[-1], piece):
                pieces[-1] = f"{pieces[-1]} {piece}"
            else:
                pieces.append(piece)
        total += sum(1 for piece in pieces if _has_alnum(piece))
    return total


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive pattern for a word or phrase on word boundaries (possessive allowed)."""
    words = _normalise_quotes(phrase).split()
    body = r"\s+".join(re.escape(word) for word in words)
    return re.compile(rf"(?<![\w']){body}(?:'s)?(?![\w'])", re.IGNORECASE)


def _contains_phrase(text: str, phrase: str) -> bool:
    return _phrase_pattern(phrase).search(_normalise_quotes(text)) is not None


def _non_empty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Checkers: one per constraint type, each taking the response and the item's parameters
# --------------------------------------------------------------------------------------------


def _check_no_bullets(response: str) -> bool:
    return count_bullets(response) == 0


def _check_exact_paragraphs(response: str, count: int) -> bool:
    return count_paragraphs(response) == count


def _check_starts_with_word(response: str, word: str) -> bool:
    opening = _normalise_quotes(response).lstrip(_LEADING_MARKUP)
    expected = re.escape(_normalise_quotes(word).strip(_LEADING_MARKUP))
    return re.match(rf"{expected}(?![\w'])", opening, re.IGNORECASE) is not None


def _check_ends_with_question(response: str) -> bool:
    return response.rstrip(_TRAILING_MARKUP).endswith("?")


def _check_title_heading(response: str) -> bool:
    # A title is a markdown heading on the first line with text after it (a heading alone is
    # not an answer with a title).
    lines = _non_empty_lines(response)
    return len(lines) >= 2 and _HEADING_LINE.match(lines[0]) is not None


def _check_no_digits(response: str) -> bool:
    return re.search(r"\d", response) is None


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstraintType:
    """One kind of verifiable preference item.

    ``pattern`` recognises the item's canonical phrasing (case-insensitive, anywhere in the
    item) and captures its parameters, which ``argument_types`` converts before they are
    passed to ``checker(response, *arguments)``.
    """

    name: str
    description: str
    example: str
    pattern: re.Pattern[str]
    checker: Callable[..., bool] | None
    """The project's own check, only for types IFEval has no instruction for."""
    argument_types: tuple[type, ...] = ()
    ifeval: Callable[..., IFEvalInstruction] | None = None
    """Parameters -> the IFEval instruction (id, kwargs) this type is checked as."""

    def instruction(self, *arguments: object) -> IFEvalInstruction | None:
        """The IFEval instruction for these parameters; None for a project-only type."""
        return None if self.ifeval is None else self.ifeval(*arguments)

    def verdict(self, response: str, *arguments: object) -> bool:
        """Adherence: IFEval's strict verdict when mapped, else the project's checker."""
        instruction = self.instruction(*arguments)
        if instruction is None:
            assert self.checker is not None
            return self.checker(response, *arguments)
        from mipo_engine.evaluation.ifeval import verify

        instruction_id, kwargs = instruction
        return verify("", [instruction_id], [kwargs], response).strict[0]

    def parse(self, item: str) -> tuple[object, ...] | None:
        """The item's parameters when it has this type's phrasing, else None."""
        match = self.pattern.search(_normalise_quotes(item))
        if match is None:
            return None
        return tuple(
            kind(value) for kind, value in zip(self.argument_types, match.groups(), strict=True)
        )

    def check(self, item: str, response: str) -> bool:
        """Whether ``response`` satisfies ``item`` (which must have this type's phrasing)."""
        arguments = self.parse(item)
        if arguments is None:
            raise ValueError(f"item {item!r} does not have the phrasing of {self.name!r}")
        return self.verdict(response, *arguments)


def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex, re.IGNORECASE)


_RESPONSE = r"(?:your|the) (?:response|answer|reply)"
_QUOTED = r'"([^"]+)"'
_NEGATION = r"(?:do not|don't|never)"

_REGISTERED: tuple[ConstraintType, ...] = (
    ConstraintType(
        name="max_words",
        description="The response has at most N words.",
        example="Keep the whole answer to at most 60 words.",
        pattern=_pattern(r"\b(?:at most|no more than) (\d+) words?\b"),
        checker=None,
        ifeval=lambda n: (
            "length_constraints:number_words",
            {"relation": "less than", "num_words": n + 1},
        ),
        argument_types=(int,),
    ),
    ConstraintType(
        name="min_words",
        description="The response has at least N words.",
        example="Write at least 150 words so I get the full picture.",
        pattern=_pattern(r"\bat least (\d+) words?\b"),
        checker=None,
        ifeval=lambda n: (
            "length_constraints:number_words",
            {"relation": "at least", "num_words": n},
        ),
        argument_types=(int,),
    ),
    ConstraintType(
        name="max_sentences",
        description="The response has at most N sentences.",
        example="Answer in at most 3 sentences.",
        pattern=_pattern(r"\b(?:at most|no more than) (\d+) sentences?\b"),
        checker=None,
        ifeval=lambda n: (
            "length_constraints:number_sentences",
            {"relation": "less than", "num_sentences": n + 1},
        ),
        argument_types=(int,),
    ),
    ConstraintType(
        name="exact_bullets",
        description="The response has exactly N bullet points (markdown list items).",
        example="Use exactly 4 bullet points.",
        pattern=_pattern(r"\bexactly (\d+) bullet points?\b"),
        checker=None,
        ifeval=lambda n: ("detectable_format:number_bullet_lists", {"num_bullets": n}),
        argument_types=(int,),
    ),
    ConstraintType(
        name="no_bullets",
        description="The response has no bullet points or numbered list items.",
        example="Do not use bullet points or lists; I prefer plain paragraphs.",
        pattern=_pattern(rf"\b{_NEGATION} use (?:any )?(?:bullet points|bullets|lists)\b"),
        checker=_check_no_bullets,
    ),
    ConstraintType(
        name="exact_paragraphs",
        description="The response has exactly N paragraphs separated by blank lines.",
        example="Write exactly 3 paragraphs, separated by blank lines.",
        pattern=_pattern(r"\bexactly (\d+) paragraphs?\b"),
        checker=_check_exact_paragraphs,
        argument_types=(int,),
    ),
    ConstraintType(
        name="forbidden_word",
        description="The response never uses a given word (case-insensitive, whole word).",
        example='Do not use the word "basically".',
        pattern=_pattern(rf"\b(?:{_NEGATION} use|avoid) the word {_QUOTED}"),
        checker=None,
        ifeval=lambda word: ("keywords:forbidden_words", {"forbidden_words": [word]}),
        argument_types=(str,),
    ),
    ConstraintType(
        name="required_word",
        description="The response uses a given word or phrase at least once.",
        example='Include the word "example" somewhere in your answer.',
        pattern=_pattern(rf"\binclude the (?:word|phrase) {_QUOTED}"),
        checker=None,
        ifeval=lambda word: ("keywords:existence", {"keywords": [word]}),
        argument_types=(str,),
    ),
    ConstraintType(
        name="starts_with_word",
        description="The response's first word is a given word (markdown and quotes ignored).",
        example='Start your response with the word "Okay".',
        pattern=_pattern(rf"\b(?:start|begin) {_RESPONSE} with the word \"([^\"\s]+)\""),
        checker=_check_starts_with_word,
        argument_types=(str,),
    ),
    ConstraintType(
        name="ends_with_question",
        description="The response ends with a question mark.",
        example="End your response with a question that helps me take the next step.",
        pattern=_pattern(rf"\bend {_RESPONSE} with a (?:follow-up )?question\b"),
        checker=_check_ends_with_question,
    ),
    ConstraintType(
        name="ends_with_phrase",
        description="The response ends with a given phrase (case-insensitive).",
        example='End your response with the exact phrase "Good luck!"',
        pattern=_pattern(rf"\bend {_RESPONSE} with the (?:exact )?phrase {_QUOTED}"),
        checker=None,
        ifeval=lambda phrase: ("startend:end_checker", {"end_phrase": phrase}),
        argument_types=(str,),
    ),
    ConstraintType(
        name="all_lowercase",
        description="The response contains no uppercase letters.",
        example="Write everything in lowercase letters.",
        pattern=_pattern(r"\b(?:write|type|keep)\b[^.;]*\bin (?:all )?lowercase\b"),
        checker=None,
        ifeval=lambda: ("change_case:english_lowercase", {}),
    ),
    ConstraintType(
        name="no_commas",
        description="The response contains no commas.",
        example="Do not use any commas in your answer.",
        pattern=_pattern(rf"\b{_NEGATION} use (?:any )?commas\b"),
        checker=None,
        ifeval=lambda: ("punctuation:no_comma", {}),
    ),
    ConstraintType(
        name="title_heading",
        description="The response opens with a title written as a markdown heading.",
        example="Start with a title formatted as a markdown heading.",
        pattern=_pattern(r"\btitle\b[^.;]*\bmarkdown heading\b"),
        checker=_check_title_heading,
    ),
    ConstraintType(
        name="postscript",
        description='The response ends with a postscript: a later line starting with "P.S."',
        example='Add a postscript starting with "P.S." at the very end.',
        pattern=_pattern(r"\bpostscript\b[^.;]*\"?P\.S\."),
        checker=None,
        ifeval=lambda: ("detectable_content:postscript", {"postscript_marker": "P.S."}),
    ),
    ConstraintType(
        name="no_digits",
        description="The response writes numbers in words: it contains no digits.",
        example="Spell out all numbers in words instead of using digits.",
        pattern=_pattern(r"\b(?:spell|write) out (?:all |every )?numbers? in words\b"),
        checker=_check_no_digits,
    ),
)

CONSTRAINT_TYPES: dict[str, ConstraintType] = {entry.name: entry for entry in _REGISTERED}
"""Registry of verifiable item types by name, in matching order (first match wins)."""

PROJECT_ONLY_TYPES: frozenset[str] = frozenset(
    entry.name for entry in _REGISTERED if entry.ifeval is None
)
"""Types IFEval has no instruction for, checked by the project's own checkers: no bullets
(IFEval only counts bullets), exact paragraphs separated by blank lines (IFEval's separate
paragraphs with ``***``), a given first word, ending with a question, a title as a markdown
heading (IFEval's titles are ``<<...>>``) and numbers written in words."""


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def parse_constraint(item: str) -> tuple[ConstraintType, tuple[object, ...]] | None:
    """The constraint type an item has and its parsed parameters, or None if not verifiable.

    Types are tried in registry order and the first whose phrasing matches wins, so an item
    should state one verifiable requirement.
    """
    if not isinstance(item, str):
        raise TypeError(f"a preference item must be a string, got {type(item).__name__}")
    for entry in CONSTRAINT_TYPES.values():
        arguments = entry.parse(item)
        if arguments is not None:
            return entry, arguments
    return None


def constraint_type(item: str) -> str | None:
    """Name of the item's constraint type in ``CONSTRAINT_TYPES``; None when not verifiable."""
    parsed = parse_constraint(item)
    return None if parsed is None else parsed[0].name


def is_verifiable(item: str) -> bool:
    """Whether a function can check adherence to this preference item."""
    return parse_constraint(item) is not None


def check_constraint(item: str, response: str) -> bool:
    """Whether ``response`` satisfies the verifiable preference ``item``.

    Raises ValueError when the item is not verifiable; test with ``is_verifiable`` first, or
    judge such items with a rubric instead.
    """
    parsed = parse_constraint(item)
    if parsed is None:
        examples = "; ".join(entry.example for entry in list(CONSTRAINT_TYPES.values())[:3])
        raise ValueError(
            f"preference item {item!r} is not verifiable: it matches none of the "
            f"{len(CONSTRAINT_TYPES)} constraint types (phrasings such as: {examples}). "
            "Judge it with a rubric instead, or check is_verifiable(item) first."
        )
    entry, arguments = parsed
    return entry.verdict(response, *arguments)


def constraint_adherence(items: Iterable[str] | None, response: str) -> dict[str, bool]:
    """Adherence of ``response`` to each verifiable item of a context; other items skipped."""
    return {item: check_constraint(item, response) for item in items or () if is_verifiable(item)}
