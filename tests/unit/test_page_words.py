"""The words under an answer on the chat page, as a person reads them: how the candidates
were ordered, in plain words ("retrieval order only, no ranker" meant nothing to a person
who had never heard of retrieval or a ranker), and a table whose score says what it is."""

from __future__ import annotations

from typing import Any

import pytest

from rar_agent.ui import candidates_table

JARGON = ("retrieval", "ranker", "no_match", "fallback", "disabled", "gate")


def _result(status: str, reason: str | None = None, **ranking: Any) -> dict[str, Any]:
    return {
        "label": "tabby cat",
        "candidates": [
            {"label": "tabby cat", "score": 0.21},
            {"label": "tiger cat", "score": 0.20},
            {"label": "lynx", "score": 0.15},
        ],
        "ranking": {"status": status, "reason": reason, **ranking},
        "rejection": {"mode": "off"},
    }


@pytest.mark.parametrize(
    ("status", "said"),
    [
        ("disabled", "no model is set up to double-check"),
        ("skipped", "not double-checked"),
        ("fallback", "could not be used"),
        ("no_match", "said none of them fits"),
        ("ranked", "double-checked by gpt-4o-mini"),
    ],
)
def test_how_an_answer_was_ordered_is_said_in_plain_words(status: str, said: str) -> None:
    result = _result(status, model="gpt-4o-mini" if status == "ranked" else None)
    note = candidates_table(result).rsplit("<sub>", 1)[1]
    words = note.replace("\\", "")
    assert said in words, words
    for term in JARGON:
        assert term not in words.lower(), (term, words)


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        (
            "retrieval is confident: top score leads by 0.1234 > gate 0.0500",
            "the closest category was clearly ahead: its similarity led the next one's by 0.12, "
            "more than the 0.05 below which a model double-checks",
        ),
        ("only one candidate; nothing to rank", "there was only one category to choose from"),
        ("no candidates to rank", "there was no category to choose from"),
        (
            "unknown: the best match is below the memory's threshold",
            "it is like no category in memory, so there was nothing to check",
        ),
    ],
)
def test_why_the_double_check_was_skipped_is_said_in_plain_words(reason: str, said: str) -> None:
    """The page said "not double-checked by a model (retrieval is confident: top score leads
    by 0.1234 > gate 0.0500)": the gate's reason in the code's words."""
    note = candidates_table(_result("skipped", reason)).rsplit("<sub>", 1)[1]
    words = note.replace("\\", "")
    assert f"not double-checked by a model, as {said}" in words, words
    for term in JARGON:
        assert term not in words.lower(), (term, words)


def test_the_table_says_what_its_score_is() -> None:
    head = candidates_table(_result("disabled")).splitlines()[0]
    assert head == "| # | category | similarity to the category |"


def test_the_category_score_and_the_closest_examples_similarity_are_told_apart() -> None:
    """An answer showed two numbers for one category, 0.913 in the table and 'tabby cat
    0.962' under "Why", both bare: the table's is the category's score (its nearby examples
    together), the other the closest single example's similarity. Each says which it is."""
    from langchain_core.messages import ToolMessage

    from rar_agent.ui import render_reply

    thumb = "data:image/jpeg;base64,/9j/AAAA"
    result = _result("disabled")
    result["candidates"][0] |= {"score": 0.913, "examples": [{"score": 0.962, "thumbnail": thumb}]}
    message = ToolMessage(content="...", tool_call_id="1", name="recognize_image", artifact=result)
    page = render_reply("", [message], recognition_only=True, queries={})
    table, why = page.split("<sub>Why: ", 1)
    assert "| # | category | similarity to the category |" in table
    assert "| 1 | **tabby cat** | 0.913 |" in table and "0.962" not in table
    assert why.startswith(
        "the closest stored example of each category, with its own similarity to this photo "
        "(the table's similarity to the category takes its nearby examples together)</sub>"
    ), why
    assert "| tabby cat: example 0.962 |" in why and f"![tabby cat: example 0.962]({thumb})" in why


def test_an_answer_without_a_chat_model_says_so_in_plain_words() -> None:
    """Each answer of a page without a chat model began "Retrieval/ranking output: no chat
    model is configured, so this is the recognizer's result, not a conversational answer"
    (three lines of a phone, in words of the code)."""
    from langchain_core.messages import ToolMessage

    from rar_agent.ui import render_reply

    result = ToolMessage(
        content="...", tool_call_id="1", name="recognize_image", artifact=_result("disabled")
    )
    head = render_reply("", [result], recognition_only=True).split("\n\n")[0]
    assert head == "*The closest categories in memory (this page has no chat model to talk with).*"
