"""The pipeline: encode -> retrieve -> reject -> rank over a category memory, for whole images,
for the boxes of an image and for the evaluation.

:class:`StageRunner` (:mod:`~rar_agent.pipeline.stages`) runs the stages once for all three;
:class:`Recognizer` (:mod:`~rar_agent.pipeline.recognizer`) holds the parts and is the entry
point; :mod:`~rar_agent.pipeline.regions` crops boxes with the pure geometry of
:mod:`rar_agent.regions`; :mod:`~rar_agent.pipeline.verdict` decides *unknown*;
:func:`ranked_result` assembles one result and :func:`explain` its one explanation;
:func:`vocabulary_memory` builds the cached zero-shot text memory.
"""

from rar_agent.pipeline.explain import explain, explanation_of
from rar_agent.pipeline.ranked import Ranking, failed_result, ranked_result, ranking_of
from rar_agent.pipeline.recognizer import Recognizer
from rar_agent.pipeline.stages import Outcome, StageRunner
from rar_agent.pipeline.verdict import is_unknown, open_set_check, verdict
from rar_agent.pipeline.vocabulary import vocabulary_memory

__all__ = [
    "Outcome",
    "Ranking",
    "Recognizer",
    "StageRunner",
    "explain",
    "explanation_of",
    "failed_result",
    "is_unknown",
    "open_set_check",
    "ranked_result",
    "ranking_of",
    "verdict",
    "vocabulary_memory",
]
