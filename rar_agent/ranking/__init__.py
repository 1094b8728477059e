"""Ranking: a multimodal chat model puts the retrieved candidates in order.

Public pieces: :class:`RankingChain` (a LangChain Runnable), its input/output models, the
prompt builder shared with fine-tuning data, the reply parser and the confidence gate.
"""

from rar_agent.ranking.chain import (
    RANKING_SCHEMA,
    RankingChain,
    RankingInput,
    RankingOutput,
    describe_model,
)
from rar_agent.ranking.gate import DEFAULT_GATE_MARGIN, parse_gate, should_skip
from rar_agent.ranking.parser import (
    ParseResult,
    match_items,
    normalize_label,
    parse_items,
    parse_ranking,
    parse_reply,
)
from rar_agent.ranking.prompt import (
    SYSTEM_PROMPT,
    RankingExample,
    build_ranking_messages,
    encode_image,
    format_target,
    image_block,
)

__all__ = [
    "DEFAULT_GATE_MARGIN",
    "RANKING_SCHEMA",
    "SYSTEM_PROMPT",
    "ParseResult",
    "RankingChain",
    "RankingExample",
    "RankingInput",
    "RankingOutput",
    "build_ranking_messages",
    "describe_model",
    "encode_image",
    "format_target",
    "image_block",
    "match_items",
    "normalize_label",
    "parse_gate",
    "parse_items",
    "parse_ranking",
    "parse_reply",
    "should_skip",
]
