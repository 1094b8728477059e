"""The pipeline: encode -> retrieve -> rank over a category memory, for whole images and
for the boxes of an image.

:class:`Recognizer` (:mod:`~rar_agent.pipeline.recognizer`) runs the stages;
:mod:`~rar_agent.pipeline.regions` recognizes boxes with the pure geometry of
:mod:`rar_agent.regions`; :func:`ranked_result` assembles one result;
:func:`vocabulary_memory` builds the cached zero-shot text memory.
"""

from rar_agent.pipeline.ranked import Ranking, ranked_result, ranking_of
from rar_agent.pipeline.recognizer import Recognizer
from rar_agent.pipeline.vocabulary import vocabulary_memory

__all__ = ["Ranking", "Recognizer", "ranked_result", "ranking_of", "vocabulary_memory"]
