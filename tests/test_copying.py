"""The copy-shortcut measure, against counts worked out by hand."""

from __future__ import annotations

import pytest

from mipo_engine.evaluation.copying import RESTATE_THRESHOLD, copy_overlap, restates, word_ngrams

USER_TURN = "Plan a picnic.\n\nMy requirements for your answer:\nUse exactly three bullet points."


def test_word_ngrams_ignore_case_and_punctuation():
    # words: plan a picnic my requirements for your answer use exactly three bullet points (13)
    grams = word_ngrams(USER_TURN)
    assert len(grams) == 13 - 4 + 1
    assert ("my", "requirements", "for", "your") in grams
    assert ("picnic", "my", "requirements", "for") in grams  # across the line break


def test_copy_overlap_counts_shared_distinct_4grams():
    # The response repeats "my requirements for your answer use exactly": words 4..10 of the
    # user turn, i.e. the 4-grams starting at words 4, 5, 6, 7: 4 of the 10.
    response = "Sure! My requirements for your answer: use exactly... here is the plan."
    assert copy_overlap(response, USER_TURN) == pytest.approx(4 / 10)
    assert restates(response, USER_TURN)
    # An answer that shares no run of four words.
    answer = "- Bring sandwiches\n- Pack a blanket\n- Check the weather"
    assert copy_overlap(answer, USER_TURN) == 0.0
    assert not restates(answer, USER_TURN)


def test_threshold_and_degenerate_inputs():
    # Exactly at the threshold counts as restating: 1 of 4 grams with a 7-word user turn.
    user = "one two three four five six seven"
    assert copy_overlap("one two three four", user) == pytest.approx(1 / 4) == RESTATE_THRESHOLD
    assert restates("one two three four", user)
    assert copy_overlap("anything at all here", "too short") == 0.0
