"""Verifiable preference items: recognition from phrasing and adherence checks.

Every expected value below was decided by reading the response, not by running the checker:
word, bullet, sentence and paragraph counts are worked out by hand in the comments.
"""

from __future__ import annotations

import pytest

from mipo_engine.judging.constraints import (
    CONSTRAINT_TYPES,
    check_constraint,
    constraint_adherence,
    constraint_type,
    count_bullets,
    count_paragraphs,
    count_sentences,
    count_words,
    is_verifiable,
    parse_constraint,
)

# type -> (item, responses that satisfy it, responses that do not)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "max_words": (
        "Keep the whole answer to at most 5 words.",
        [
            "One two three four five.",  # 5
            "- one\n- two\n- three",  # 3: list markers are not words
            "Short — and sweet!  \n",  # 3: a lone dash is not a word
            "1. Buy milk\n2. Sleep",  # 5: IFEval counts \\w+ runs, digits too
        ],
        [
            "One two three four five six.",  # 6
            "# Title here\nOne two three four",  # 2 + 4 = 6
            "well-known facts , are six words here",  # 7: "well-known" is two \\w+ runs
        ],
    ),
    "min_words": (
        "Write at least 6 words so I get the full picture.",
        [
            "one two three four five six",  # 6
            "This answer has exactly seven words here.",  # 7
            "- a b c\n- d e f",  # 6
        ],
        [
            "Too short.",  # 2
            "",  # 0
            "- - - one two three four five",  # 5: the dashes are not words
        ],
    ),
    "max_sentences": (
        "Answer in at most 2 sentences.",
        [
            "Dr. Smith agrees. It costs 3.5 dollars.",  # 2: "Dr." and "3.5" do not split
            "Yes! That works.",  # 2
            "One sentence with e.g. an abbreviation.",  # 1
            "The U.S. team won. Great news.",  # 2: initials do not split
        ],
        [
            "One. Two. Three.",  # 3
            "First point. Second point! Third point?",  # 3
            "Really? Yes! Sure.",  # 3
        ],
    ),
    "exact_bullets": (
        "Use exactly 3 bullet points.",
        [
            "- a\n- b\n- c",
            "Intro:\n* one\n* two\n* three\n\nDone.",
            "* a\n  - nested b\n- c",  # nested items count
            "- a\n- b\n- c\n\n**Bold** end",  # bold text is not a bullet
        ],
        [
            "- a\n- b",  # 2
            "1. first\n2. second\n3) third",  # IFEval's bullets are * and - only
            "- a\n- b\n- c\n- d",  # 4
            "a, b and c",  # 0
        ],
    ),
    "no_bullets": (
        "Do not use bullet points or lists; I prefer plain paragraphs.",
        [
            "Plain prose here.\n\nAnother paragraph.",
            "**Bold heading**\nText - with a dash inside.",
            "---\nText after a rule.",
            "In 2024. we moved house.",  # a year is not a list number
        ],
        [
            "- one",
            "Steps:\n1. Open\n2. Close",
            "• item",
            "  * indented item",
        ],
    ),
    "exact_paragraphs": (
        "Write exactly 2 paragraphs, separated by blank lines.",
        [
            "First para.\n\nSecond para.",
            "# Title\n\nFirst.\n\nSecond.\n",  # the heading block is not a paragraph
            "First line\nstill first.\n \nSecond.",  # a whitespace-only line is blank
            "A.\n\n\n\nB.",
        ],
        [
            "One block only.",
            "A.\nB.",  # a single line break does not start a paragraph
            "A.\n\nB.\n\nC.",
            "",
        ],
    ),
    "forbidden_word": (
        'Do not use the word "very".',
        [
            "This is extremely good.",
            "Every verb matters.",  # "very" inside "Every" is not the word
            "Avery went home.",
        ],
        [
            "That is very nice.",
            "VERY good!",
            "It was very, very hot.",
            "(very)",
        ],
    ),
    "required_word": (
        'Include the word "example" somewhere in your answer.',
        [
            "For example, try this.",
            "EXAMPLE: here.",
            "Take this example's lesson.",  # a possessive still counts
            "An “example” in curly quotes.",
        ],
        [
            "Here is a sample.",
            "No such word.",
            "",
            "An exam plea.",  # the letters apart
        ],
    ),
    "starts_with_word": (
        'Start your response with the word "Okay".',
        [
            "Okay, here is the plan.",
            "  **Okay!** Let's go.",
            "okay so first",
            "# Okay\nText",
            '"Okay," she said.',
        ],
        [
            "Sure, okay.",
            "Okaying is not a word.",
            "",
            "Here's the plan. Okay?",
        ],
    ),
    "ends_with_question": (
        "End your response with a question that helps me take the next step.",
        [
            "Does that help?",
            "Want more ideas?**  \n",
            'She asked, "Ready to start?"',
            "Shall we begin? ",
        ],
        [
            "Is it? Yes it is.",
            "That is all.",
            "",
            "Any questions? Bye.",
        ],
    ),
    "ends_with_phrase": (
        'End your response with the exact phrase "Good luck!"',
        [
            "Here you go. Good luck!",
            '"Here you go. Good luck!"',  # surrounding quotes are ignored
            "good luck!\n\n",
        ],
        [
            "Here you go. **Good luck!**",  # strictly, the asterisks end it
            "Here you go.  Good   luck!",  # spacing is compared as is
            "Good luck! Bye.",
            "Here you go. Good luck.",
            "",
            "Good luck with it!",
        ],
    ),
    "all_lowercase": (
        "Write everything in lowercase letters, with no capitals at all.",
        [
            "this answer is written in plain english words.",
            "the meeting starts at nine in the morning and ends at noon.",
            "please bring your own lunch because the kitchen is closed today.",
        ],
        [
            "Hello there.",
            "all lower except I.",
            "ÉCOLE",
            "mostly lower but nasa is NASA",
        ],
    ),
    "no_commas": (
        "Do not use any commas in your answer.",
        [
            "No commas here. Just periods.",
            "Semicolons; dashes — fine.",
            "It costs 3.5 dollars.",
        ],
        [
            "Yes, it works.",
            "1,000 people",
            "one,two",
        ],
    ),
    "title_heading": (
        "Start with a title formatted as a markdown heading.",
        [
            "# My Plan\nStep one.",
            "## Weekly Dinners\n\nMonday: pasta.",
            "\n\n# Title\nBody",
            "###   Spaced title\ntext",
        ],
        [
            "# Title only",  # a heading with no answer after it
            "Title\n# Heading later",
            "**Bold Title**\nBody",
            "#NoSpace\nBody",  # not a markdown heading
            "",
        ],
    ),
    "postscript": (
        'Add a postscript starting with "P.S." at the very end.',
        [
            "Main text.\n\nP.S. Don't forget the milk.",
            "Body\np.s. lowercase works",
            "Body\n**P.S.** with a bold marker",
            "Body\nP. S. with a space",
        ],
        [
            "Main text.\nPS: no dots",
            "Main text only.",
            "Main text.\nPost script: later.",
        ],
    ),
    "no_digits": (
        "Spell out all numbers in words instead of using digits.",
        [
            "Three apples and twenty pears.",
            "",
            "No numbers at all!",
            "Step one: mix.",
        ],
        [
            "3 apples",
            "Call 911",
            "1. First step",
            "The year 2024",
        ],
    ),
}


def test_every_registered_type_has_cases() -> None:
    assert set(CASES) == set(CONSTRAINT_TYPES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_item_is_recognised_as_its_type(name: str) -> None:
    item, _, _ = CASES[name]
    assert constraint_type(item) == name
    assert is_verifiable(item)


@pytest.mark.parametrize("name", sorted(CASES))
def test_passing_responses(name: str) -> None:
    item, passing, _ = CASES[name]
    assert len(passing) >= 3
    for response in passing:
        assert check_constraint(item, response), (name, response)


@pytest.mark.parametrize("name", sorted(CASES))
def test_failing_responses(name: str) -> None:
    item, _, failing = CASES[name]
    assert len(failing) >= 3
    for response in failing:
        assert not check_constraint(item, response), (name, response)


def test_registry_entries_are_documented() -> None:
    for name, entry in CONSTRAINT_TYPES.items():
        assert entry.name == name
        assert entry.description.strip()
        assert constraint_type(entry.example) == name


# ---- phrasing variants and parameters -----------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected_type", "expected_arguments"),
    [
        ("Please use no more than 80 words; I read on my phone.", "max_words", (80,)),
        ("I skim, so at most 40 words please.", "max_words", (40,)),
        ("KEEP THE WHOLE ANSWER TO AT MOST 5 WORDS.", "max_words", (5,)),
        ("I want depth: at least 200 words.", "min_words", (200,)),
        ("No more than 4 sentences, please.", "max_sentences", (4,)),
        ("Give me exactly 5 bullet points I can skim.", "exact_bullets", (5,)),
        ("Please don't use bullet points; write it as a normal message.", "no_bullets", ()),
        ("Please don’t use bullet points.", "no_bullets", ()),  # curly apostrophe
        ("Structure it as exactly 3 paragraphs.", "exact_paragraphs", (3,)),
        ("Write exactly 1 paragraph.", "exact_paragraphs", (1,)),
        ("Answer in at most 1 sentence.", "max_sentences", (1,)),
        ("Use exactly 1 bullet point.", "exact_bullets", (1,)),
        ('Never use the word "just"; it is a pet peeve of mine.', "forbidden_word", ("just",)),
        ('Avoid the word "stuff" entirely.', "forbidden_word", ("stuff",)),
        ("Do not use the word “very”.", "forbidden_word", ("very",)),  # curly quotes
        ('Please include the word "tip" at least once.', "required_word", ("tip",)),
        ('Begin your reply with the word "Sure".', "starts_with_word", ("Sure",)),
        ("End your answer with a follow-up question for me.", "ends_with_question", ()),
        ('Please end the reply with the phrase "Take care."', "ends_with_phrase", ("Take care.",)),
        ("Please type the whole reply in lowercase.", "all_lowercase", ()),
        ("Please don't use commas at all.", "no_commas", ()),
        ("Give the answer a title on the first line as a markdown heading.", "title_heading", ()),
        ('Finish with a short postscript that begins with "P.S."', "postscript", ()),
        ("Write out numbers in words; my screen reader handles digits badly.", "no_digits", ()),
    ],
)
def test_phrasing_variants(
    item: str, expected_type: str, expected_arguments: tuple[object, ...]
) -> None:
    parsed = parse_constraint(item)
    assert parsed is not None
    entry, arguments = parsed
    assert entry.name == expected_type
    assert arguments == expected_arguments


@pytest.mark.parametrize(
    "item",
    [
        "I like a warm, encouraging tone.",
        "I'm vegetarian, so no meat or fish.",
        "I prefer short answers that get straight to the point.",
        "I like information broken into bullet points.",
        "Use numbered steps when describing a process.",
        "I have about $150 to spend in total.",
        "On weeknights I have about twenty minutes to cook.",
        "Use short headings to separate the sections.",
        "",
    ],
)
def test_non_verifiable_items(item: str) -> None:
    assert constraint_type(item) is None
    assert not is_verifiable(item)


def test_non_verifiable_item_raises_value_error_naming_it() -> None:
    item = "I like a warm, encouraging tone."
    with pytest.raises(ValueError, match="warm, encouraging tone") as raised:
        check_constraint(item, "Hello!")
    assert "not verifiable" in str(raised.value)


def test_non_string_item_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        constraint_type(42)  # type: ignore[arg-type]


def test_type_check_rejects_item_of_another_type() -> None:
    with pytest.raises(ValueError, match="max_words"):
        CONSTRAINT_TYPES["max_words"].check("Do not use any commas.", "text")


# ---- edge cases ----------------------------------------------------------------------------


def test_required_words_match_as_ifeval_keywords() -> None:
    """keywords:existence: a case-insensitive search, inside longer words too."""
    item = 'Include the phrase "olive oil" in the recipe.'
    assert check_constraint(item, "OLIVE OIL is best.")
    assert check_constraint(item, "Buy olive oils.")
    assert not check_constraint(item, "Drizzle with olive\noil.")
    assert not check_constraint(item, "Use olive-oil spray.")


def test_forbidden_words_match_on_word_boundaries() -> None:
    """keywords:forbidden_words: whole words, so a contraction contains the word."""
    item = 'Do not use the word "can".'
    assert not check_constraint(item, "I can't say.")
    assert not check_constraint(item, "I can say.")
    assert check_constraint(item, "I cannot say.")


def test_end_phrase_compares_apostrophes_as_written() -> None:
    item = 'End your response with the exact phrase "You\'ve got this!"'
    assert check_constraint(item, "Keep going. You've got this!")
    assert not check_constraint(item, "Keep going. You’ve got this!")


def test_empty_response_follows_no_ifeval_instruction() -> None:
    """IFEval fails every instruction for an empty response, upper bounds included."""
    for item in ("Keep the whole answer to at most 5 words.", "Do not use any commas."):
        assert not check_constraint(item, "")
    assert check_constraint("Do not use bullet points or lists.", "")  # project-only


def test_word_limit_boundary_is_inclusive() -> None:
    item = "Keep the whole answer to at most 3 words."
    assert check_constraint(item, "one two three")
    assert not check_constraint(item, "one two three four")


def test_trailing_whitespace_does_not_change_checks() -> None:
    assert check_constraint("End your answer with a follow-up question for me.", "Ok?\n\n  \t")
    assert check_constraint("Use exactly 2 bullet points.", "- a\n- b\n\n   \n")
    assert check_constraint("Write exactly 1 paragraph.", "Only one.\n\n\n   ")


def test_adherence_covers_only_verifiable_items() -> None:
    items = ["I like a warm tone.", "Use exactly 2 bullet points.", "Do not use any commas."]
    assert constraint_adherence(items, "- one, two\n- three") == {
        "Use exactly 2 bullet points.": True,
        "Do not use any commas.": False,
    }
    assert constraint_adherence(None, "text") == {}


# ---- counting helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Hello, world!", 2),
        ("# Heading words\n\n- item one\n1. item two", 6),
        ("don't stop — it's fine ...", 4),
        ("  spaced   out\twords \n", 3),
    ],
)
def test_count_words(text: str, expected: int) -> None:
    assert count_words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("- a\n* b\n+ c\n• d\n1. e\n2) f", 6),
        ("**bold**\n---\n* * *\n-no space", 0),
        ("- \n- real", 1),  # a marker with no text is not an item
    ],
)
def test_count_bullets(text: str, expected: int) -> None:
    assert count_bullets(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("one\n\ntwo\n\n\nthree", 3),
        ("# Only heading", 0),
        ("Intro line\n- a\n- b\n\nOutro", 2),
    ],
)
def test_count_paragraphs(text: str, expected: int) -> None:
    assert count_paragraphs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("One. Two! Three?", 3),
        ("Wait... what happened.", 2),
        ('He said "stop." Then left.', 2),
        ("Costs 4.99 each, i.e. cheap.", 1),
        ("- item\n- another item", 2),
        ("See No. 5 and Fig. 2 today.", 1),
        ("No. No. No. No.", 4),
        ("Ask Dr. Lee. No. I will not.", 3),
    ],
)
def test_count_sentences(text: str, expected: int) -> None:
    assert count_sentences(text) == expected


# ---- IFEval mapping -------------------------------------------------------------------------

# Types IFEval has no instruction for (also listed in docs/evaluation.md).
EXPECTED_PROJECT_ONLY = {
    "no_bullets",
    "exact_paragraphs",
    "starts_with_word",
    "ends_with_question",
    "title_heading",
    "no_digits",
}


def test_every_type_maps_to_ifeval_or_is_listed_project_only() -> None:
    """A new type fails here until it gets an IFEval instruction or is listed above."""
    from mipo_engine.judging.constraints import PROJECT_ONLY_TYPES
    from mipo_engine.sources.ifeval import is_instruction_id

    assert PROJECT_ONLY_TYPES == EXPECTED_PROJECT_ONLY
    for name, entry in CONSTRAINT_TYPES.items():
        parsed = parse_constraint(entry.example)
        assert parsed is not None
        instruction = entry.instruction(*parsed[1])
        if name in EXPECTED_PROJECT_ONLY:
            assert instruction is None and entry.checker is not None, name
        else:
            assert instruction is not None and entry.checker is None, name
            assert is_instruction_id(instruction[0]), instruction


def test_builtin_verifiable_items_are_checked_as_ifeval_instructions() -> None:
    """Every verifiable item of the built-in sets gets a verdict from its checker."""
    import json

    from mipo_engine.evaluation.ifeval import verify
    from mipo_engine.resources import resource_dir

    seen: set[str] = set()
    path = resource_dir("data") / "personalization.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        for item in json.loads(line)["context_items"] or []:
            parsed = parse_constraint(item)
            if parsed is None:
                continue
            entry, arguments = parsed
            seen.add(entry.name)
            instruction = entry.instruction(*arguments)
            if instruction is not None:  # the kwargs build the reference verifier
                verify("", [instruction[0]], [instruction[1]], "A short reply.")
            assert isinstance(check_constraint(item, "A short reply."), bool)
    assert seen - EXPECTED_PROJECT_ONLY, "the built-in set has IFEval-mapped items"
