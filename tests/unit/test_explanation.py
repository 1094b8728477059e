"""One recognition path (issue 18): the stage runner, the verdict, the ranker-skip decision, the
explanation every renderer formats, and a constructor that writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import ToolMessage

from rar_agent.memory import CategoryMemory
from rar_agent.pipeline import Recognizer, explanation_of
from rar_agent.ranking import REJECTED_SKIP_REASON, RankingChain, skip_reason
from rar_agent.results import GateSkip, RecognitionResult
from rar_agent.tools import format_result
from rar_agent.ui import candidates_table, render_reply
from tests.helpers.clusters import KNOWN, STRANGER, Clusters

LABELS = KNOWN


@pytest.fixture
def memory(calibrated_memory: CategoryMemory) -> CategoryMemory:
    return calibrated_memory


def _none_of_these(n: int = 4) -> RankingChain:
    return RankingChain(FakeListChatModel(responses=["None of these."] * n), structured="never")


def _page(result: RecognitionResult) -> str:
    message = ToolMessage(content="...", tool_call_id="1", name="recognize_image")
    message.artifact = result.model_dump(mode="json")
    return render_reply("", [message])


def _cli(result: RecognitionResult, capsys: pytest.CaptureFixture[str]) -> str:
    from rar_agent.cli.recognize import _print_results

    _print_results([result], as_json=False)
    return " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------- the two bugs


def test_reject_off_and_a_ranker_saying_none_is_not_reported_as_no_ranker(
    memory: CategoryMemory, clusters: Clusters
) -> None:
    """The tool said "retrieval order only, no ranker" when rejection was off and the ranker
    answered "none of these"."""
    rec = Recognizer(memory, clusters.encoder, ranker=_none_of_these(), k=3, reject="off")
    result = rec.recognize(clusters.image("lynx", 6))
    assert result.ranking.status == "no_match" and not result.unknown
    text = format_result(result)
    assert "no ranker" not in text
    assert text.startswith(
        "Answer: lynx (ordered by similarity to the memory; the model that double-checks "
        "answers said none of them fits"
    )
    assert "unknown answers are turned off, so the closest category is the answer" in text
    assert result.explanation is not None and result.explanation.order == "retrieval"


def test_the_page_never_says_confident_above_an_unknown_answer(
    memory: CategoryMemory, clusters: Clusters
) -> None:
    """The page printed "Unknown" above "ranking skipped: retrieval was confident" for an
    image the open-set check had rejected."""
    rec = Recognizer(memory, clusters.encoder, ranker=_none_of_these(), k=3)
    result = rec.recognize(clusters.image(STRANGER, 0))
    assert result.unknown and result.ranking.status == "skipped"
    shown = _page(result)
    assert "**Unknown: not a category in memory.**" in shown
    assert "confident" not in shown
    assert "like no category in memory" in shown and "unknown because " in shown
    # in a person's words first (no statistics), its figures after
    said = shown.replace("\\", "").split("unknown because ")[1]
    top = result.candidates[0].label
    assert said.startswith(f"it looks less like the {top} photos in memory than they look like")
    assert "Mahalanobis" not in said and "threshold" not in said


def test_an_unknown_reads_as_how_unusual_it_is_not_as_raw_scores(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page said "known-ness score -74.27, where photos of that category score -55.07 or
    more": two figures of a statistic no person can place. It says how many of the memory's
    own photos look as unlike their category, and where the cut-off is; the tool text and
    the CLI say the same."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image(STRANGER, 0))
    rej = result.rejection
    assert result.unknown and rej.known_share is not None and rej.alpha is not None
    assert rej.similarity is not None and 0 <= rej.known_share <= rej.alpha
    ex = result.explanation
    assert ex is not None and len(ex.why_unknown) == 1
    why = ex.why_unknown[0]
    top = result.candidates[0].label
    assert why.startswith(f"it looks less like the {top} photos in memory than they look like")
    assert "of the memory's own photos look this unlike their own category" in why
    assert why.endswith(f", and the cut-off is the least alike {rej.alpha:.0%}")
    assert f"{rej.similarity:.2f}" not in why and "score" not in why
    page = _page(result).replace("\\", "")
    assert why in page and why in format_result(result) and why in _cli(result, capsys)
    # a result stored before known_share still reads in words, with no figures
    old = result.model_dump(mode="json")
    del old["explanation"], old["rejection"]["known_share"]
    said = explanation_of(old).why_unknown[0]
    assert said.endswith(": below the cut-off, the least alike 5% of the memory's own photos")


def test_one_earlier_look_alike_reads_as_one_image(
    memory: CategoryMemory, clusters: Clusters
) -> None:
    """The second unknown photo of a new thing read "it looks like 1 earlier unknown
    image(s) (group unknown-0)"."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image(STRANGER, 0))
    data = result.model_dump(mode="json")
    del data["explanation"]
    for size, words in ((2, "1 earlier unknown image"), (3, "2 earlier unknown images")):
        data["novel_group"] = {"id": "unknown-0", "size": size, "images": []}
        group = explanation_of(data).novel_group
        assert group == f"it looks like {words}, all in group unknown-0", group


# ---------------------------------------------------------------------------- one explanation


def test_every_renderer_formats_the_same_explanation(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    ranked = RankingChain(
        FakeListChatModel(responses=['["lynx", "red fox", "heron"]'] * 2), structured="never"
    )
    cases = [
        Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image("lynx", 6)),
        Recognizer(memory, clusters.encoder, k=3, ranker=ranked).recognize(
            clusters.image("lynx", 6)
        ),
        Recognizer(memory, clusters.encoder, k=3, ranker=_none_of_these()).recognize(
            clusters.image("lynx", 6)
        ),
        Recognizer(memory, clusters.encoder, k=3, ranker=_none_of_these(), reject="off").recognize(
            clusters.image("lynx", 6)
        ),
        Recognizer(memory, clusters.encoder, k=3, ranker=_none_of_these()).recognize(
            clusters.image(STRANGER, 1)
        ),
        Recognizer(memory, clusters.encoder, k=3, gate=0.0, ranker=_none_of_these()).recognize(
            clusters.image("heron", 6)
        ),
    ]
    statuses = [r.ranking.status for r in cases]
    assert statuses == ["disabled", "ranked", "no_match", "no_match", "skipped", "skipped"]
    for result in cases:
        ex = result.explanation
        assert ex is not None and ex == explanation_of(result.model_dump(mode="json"))
        assert ex.unknown == result.unknown and ex.answer == result.label
        assert ex.how in format_result(result)
        assert ex.how in _page(result).replace("\\", "")
        assert ex.how in _cli(result, capsys)
        for why in ex.why_unknown:
            assert why in format_result(result) and why in _cli(result, capsys)
    assert cases[1].explanation.order == "ranker" and cases[1].explanation.how.startswith(
        "double-checked by"
    )
    assert cases[2].explanation.why_unknown == [
        "the model that double-checks answers said none of the candidates fits"
    ]
    assert "the closest category was clearly ahead" in cases[5].explanation.how
    assert "retrieval is confident" in (cases[5].ranking.reason or "")  # the data keeps it
    skip = cases[5].ranking.skip
    assert skip is not None and skip.rule == "confident" and skip.margin == 0.0


def test_a_result_without_an_explanation_is_explained_the_same_way() -> None:
    artifact = {
        "label": "osprey",
        "candidates": [{"label": "osprey", "score": 0.9}, {"label": "kite", "score": 0.8}],
        "ranking": {"status": "skipped", "reason": "only one candidate; nothing to rank"},
    }
    ex = explanation_of(artifact)
    assert ex.answer == "osprey"
    assert ex.how.startswith("ordered by similarity to the memory, not double-checked")
    assert "only one category to choose from" in candidates_table(artifact)


# ---------------------------------------------------------------------------- stages


def test_one_ranker_skip_decision(memory: CategoryMemory, clusters: Clusters) -> None:
    assert skip_reason(1, [0.9], None, rejected=True) == GateSkip(rule="one_candidate")
    assert skip_reason(3, [0.9, 0.2, 0.1], 0.05, rejected=True) == GateSkip(rule="rejected")
    confident = skip_reason(3, [0.9, 0.2, 0.1], 0.05)
    assert confident is not None and confident.rule == "confident"
    assert skip_reason(3, None, 0.05) is None
    chain = _none_of_these()
    rec = Recognizer(memory, clusters.encoder, ranker=chain, k=3)
    result = rec.recognize(clusters.image(STRANGER, 0))
    assert result.ranking.reason == REJECTED_SKIP_REASON
    assert result.ranking.skip == GateSkip(rule="rejected")
    assert chain.stats["skipped"] == 1 and chain.stats["model_calls"] == 0  # the chain decided


async def test_async_recognition_ranks_through_the_chains_abatch(
    memory: CategoryMemory, clusters: Clusters, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = RankingChain.abatch

    async def counting(self: RankingChain, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(inputs))
        return await original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(RankingChain, "abatch", counting)
    chain = RankingChain(
        FakeListChatModel(responses=['["lynx", "red fox", "heron"]'] * 8), structured="never"
    )
    rec = Recognizer(memory, clusters.encoder, ranker=chain, k=3)
    images = [clusters.image("lynx", 6), clusters.image(STRANGER, 0), b"not an image"]
    results = await rec.arecognize_batch(images)
    assert calls == [2]  # one batch: the stranger goes too, and the chain's gate skips it
    assert results[0].label == "lynx" and results[0].ranking.status == "ranked"
    assert results[1].unknown and results[1].ranking.reason == REJECTED_SKIP_REASON
    assert results[2].error and results[2].explanation is not None
    assert results[2].explanation.sentence.startswith("Recognition failed")
    single = await rec.arecognize(clusters.image("lynx", 7))
    assert single.label == "lynx" and "load" in single.timings_ms and calls == [2, 1]


def test_the_constructor_writes_nothing_and_the_factory_binds(
    tmp_path: Path, clusters: Clusters
) -> None:
    memory = CategoryMemory.open(tmp_path / "fresh", collection="fresh")
    try:
        Recognizer(memory, clusters.encoder)
        assert memory.info.fingerprint is None  # nothing recorded by the constructor
        Recognizer.from_memory(memory, clusters.encoder, reject="off")
        assert memory.info.fingerprint == clusters.encoder.fingerprint
    finally:
        memory.close()


def test_the_cli_names_the_example_an_answer_rests_on(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rar-agent recognize` printed the candidates and scores but not which stored example
    an answer rests on (the chat page and the JSON do): a wrong example could not be found
    to relabel."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image("lynx", 6))
    top = result.candidates[0]
    assert top.examples and top.source
    shown = _cli(result, capsys)
    assert (
        f"why: the closest stored example of {top.label} is {top.source}, similarity "
        f"{top.examples[0].score:.3f} (entry {top.examples[0].id})"
    ) in shown


def test_the_cli_says_what_a_score_above_the_closest_example_is(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    """A walk's `recognize` printed 'bag 0.6929' in the table and 'why: the closest stored
    example of bag is ..., similarity 0.581' under it, a score above every example's with no
    word why: the score is the similarity to a local class mean. The line now says so where
    the two differ, and stays as it was where they agree."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image("lynx", 6))
    top = result.candidates[0]
    same = top.model_copy(update={"score": top.examples[0].score})
    above = top.model_copy(update={"score": top.examples[0].score + 0.1})
    shown = _cli(result.model_copy(update={"candidates": [above, *result.candidates[1:]]}), capsys)
    assert (
        f"(entry {top.examples[0].id}); its score {above.score:.3f} is the similarity to the "
        "mean of its examples nearest the photo"
    ) in shown
    shown = _cli(result.model_copy(update={"candidates": [same, *result.candidates[1:]]}), capsys)
    assert f"(entry {top.examples[0].id})" in shown and "its score" not in shown


def test_the_cli_names_no_example_for_a_class_name(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over a memory of class names (the README's first command: the built-in ImageNet
    classes) the 'why:' line said "the closest stored class name of Egyptian Mau is
    efficientnet-lite0/imagenet-fc classifier": the class name is the candidate itself, and
    its source a vocabulary. No line is printed for it; a photo example still gets one."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image("lynx", 6))
    top = result.candidates[0]
    as_text = top.model_copy(
        update={
            "kind": "text",
            "source": "palette/classifier",
            "examples": [top.examples[0].model_copy(update={"kind": "text"})],
        }
    )
    named = result.model_copy(update={"candidates": [as_text, *result.candidates[1:]]})
    shown = _cli(named, capsys)
    assert "why:" not in shown
    assert "palette/classifier" not in shown
    assert "why: the closest stored example of" in _cli(result, capsys)


def test_no_promise_is_stated_where_no_threshold_judged_the_image() -> None:
    """Two taught photos in the built-in memory, a view of one asked: the JSON explanation
    said 'promise': 'at most 5% of known images rejected' beside 'check_note': 'cannot
    calibrate: no category has two example images ...', a promise nothing kept (the field
    promises it for a calibrated threshold only; the CLI already left it out)."""
    from rar_agent.pipeline import explain
    from rar_agent.results import RankingInfo, RejectionInfo

    note = "cannot calibrate: no category has two example images"
    said = explain(
        label="my cat",
        candidates=[("my cat", 0.98), ("Egyptian Mau", 0.22)],
        ranking=RankingInfo(status="disabled"),
        rejection=RejectionInfo(mode="auto", similarity=0.98, alpha=0.05, note=note),
        unknown=False,
    )
    assert said.promise is None and said.check_note == note
    judged = explain(
        label="my cat",
        candidates=[("my cat", 0.98), ("Egyptian Mau", 0.22)],
        ranking=RankingInfo(status="disabled"),
        rejection=RejectionInfo(mode="auto", similarity=0.9, threshold=0.5, alpha=0.05),
        unknown=False,
    )
    assert judged.promise == "at most 5% of known images rejected" and judged.check_note is None


def _depth(text: str) -> int:
    """How deep the parentheses of ``text`` nest."""
    deepest = level = 0
    for char in text:
        level += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, level)
    return deepest


@pytest.mark.parametrize("rule", ["taught", "confident", "one_candidate", "rejected"])
def test_why_a_model_was_not_asked_reads_without_nested_parentheses(rule: str) -> None:
    """A photo of a taught thing in the built-in memory, with a ranker: the tool said "Answer:
    my cat (ordered by similarity to the memory, not double-checked by a model (it is the same
    thing as a photo you taught, whose name no model knows))." and the CLI "ranking: skipped
    (... (...))"; the reason follows a comma."""
    from rar_agent.pipeline import explain
    from rar_agent.results import RankingInfo, RejectionInfo

    skip = GateSkip(rule=rule, lead=0.21, margin=0.05) if rule == "confident" else None
    said = explain(
        label="my cat",
        candidates=[("my cat", 0.98), ("Egyptian Mau", 0.22)],
        ranking=RankingInfo(status="skipped", skip=skip or GateSkip(rule=rule)),
        rejection=RejectionInfo(mode="off"),
        unknown=False,
    )
    assert _depth(said.sentence) == 1 and _depth(f"ranking: skipped ({said.how})") == 1, said
    assert said.how.startswith("ordered by similarity to the memory, not double-checked by a ")
    if rule == "taught":
        assert said.sentence == (
            "my cat (ordered by similarity to the memory, not double-checked by a model, as it "
            "is the same thing as a photo you taught, whose name no model knows)."
        )


class _Down(BaseChatModel):
    """A chat model whose provider is down: every call raises."""

    @property
    def _llm_type(self) -> str:
        return "down"

    def _generate(self, messages: Any, stop: Any = None, **kwargs: Any) -> Any:
        raise RuntimeError("provider is down")


@pytest.mark.parametrize(
    ("ranker", "reject", "said"),
    [
        (_Down(), "off", "could not be used, as the model call failed after 1 attempt: Runtime"),
        (FakeListChatModel(responses=[" "] * 4), "off", "as the model returned an empty reply"),
        (FakeListChatModel(responses=["None of these."] * 4), "off", "but unknown answers are"),
    ],
)
def test_fallback_answers_read_without_nested_parentheses(
    memory: CategoryMemory,
    clusters: Clusters,
    capsys: pytest.CaptureFixture[str],
    ranker: Any,
    reject: str,
    said: str,
) -> None:
    """A ranker that failed answered 'cat (ordered by similarity to the memory: the reply of
    the model that double-checks answers could not be used (model call failed (1 attempt):
    RuntimeError: provider is down)).' in the tool, the chat page and the CLI's ranking line;
    'said none of them fits' with unknown answers off added '(unknown answers are turned off,
    ...)' inside the answer's parentheses. Each reason follows a comma now."""
    chain = RankingChain(ranker, structured="never", max_retries=0)
    result = Recognizer(memory, clusters.encoder, ranker=chain, k=3, reject=reject).recognize(
        clusters.image(KNOWN[0], 0)
    )
    ex = result.explanation
    assert ex is not None and said in ex.how, ex.how
    for text in (ex.sentence, format_result(result), _cli(result, capsys), _page(result)):
        assert _depth(text) <= 1, text


def test_an_unknown_photos_reasons_read_without_nested_parentheses(
    memory: CategoryMemory, clusters: Clusters
) -> None:
    """An unknown photo's sentence nested its reasons: '(it looks less like ... (below the
    cut-off, ...); it looks like 2 earlier unknown images (group unknown-0))'."""
    result = Recognizer(memory, clusters.encoder, k=3).recognize(clusters.image(STRANGER, 0))
    data = result.model_dump(mode="json")
    del data["explanation"], data["rejection"]["known_share"]
    data["novel_group"] = {"id": "unknown-0", "size": 3, "images": []}
    ex = explanation_of(data)
    assert ex.unknown and len(ex.why_unknown) == 2, ex
    assert _depth(ex.sentence) == 1, ex.sentence


def test_each_similarity_a_fixed_threshold_judges_says_what_it_is(
    memory: CategoryMemory, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    """A walk's result showed the closest example's similarity, the table's score and, under a
    fixed threshold, 'open-set check (fixed): known; similarity 0.9863 vs threshold 0.0010',
    a fourth figure nothing explained (the average of the first candidate's two closest
    examples). The check now says which similarity it judged, known or unknown: the average
    of two, the one example's, or the class name's."""
    from rar_agent.pipeline.explain import explain_result

    known = Recognizer(memory, clusters.encoder, k=3, reject=0.001).recognize(
        clusters.image("lynx", 6)
    )
    top = known.candidates[0]
    average = sum(top.scores[:2]) / 2
    said = (
        f"its 2 closest examples of {top.label} average similarity {average:.3f}, at or above "
        "the fixed threshold 0.001"
    )
    assert known.explanation is not None and known.explanation.check_figures == said
    assert f"open-set check (fixed): known; {said}" in _cli(known, capsys)
    unknown = Recognizer(memory, clusters.encoder, k=3, reject=0.999).recognize(
        clusters.image("lynx", 6)
    )
    assert unknown.explanation is not None and unknown.explanation.why_unknown[0] == (
        f"its 2 closest examples of {top.label} average similarity {average:.3f}, below the "
        "fixed threshold 0.999"
    )
    one = unknown.model_copy(
        update={"candidates": [top.model_copy(update={"scores": top.scores[:1]})]}
    )
    [why] = explain_result(one).why_unknown
    assert why.startswith(f"its closest example of {top.label} has similarity "), why
    name = unknown.model_copy(
        update={"candidates": [top.model_copy(update={"scores": top.scores[:1], "kind": "text"})]}
    )
    [why] = explain_result(name).why_unknown
    assert why.startswith(f"the class name {top.label} has similarity "), why
