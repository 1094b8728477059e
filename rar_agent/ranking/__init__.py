"""Ranking: a multimodal chat model puts the retrieved candidates in order.

Public pieces: :class:`RankingChain` (a LangChain Runnable), its input/output models, the
prompt builder shared with fine-tuning data, the reply parser, the confidence gate, and ranker
specs (:func:`load_ranker`: a string such as ``openai:gpt-4o-mini`` or ``hf:<dir>`` -> a chat
model). The local transformers chat model lives in :mod:`rar_agent.ranking.local_vlm`
(imported on first use: it pulls in torch and transformers when it loads weights).
"""

from rar_agent.ranking.chain import DEFAULT_TIMEOUT_S, RankingChain, check_timeout
from rar_agent.ranking.gate import (
    DEFAULT_GATE_MARGIN,
    REJECTED_SKIP_REASON,
    parse_gate,
    should_skip,
    skip_in_plain_words,
    skip_reason,
    skip_text,
    validate_margin,
)
from rar_agent.ranking.io import RANKING_SCHEMA, RankingInput, RankingOutput, describe_model
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
from rar_agent.ranking.rankers import (
    DEFAULT_LOCAL_RANKER,
    NO_RANKER,
    RankerSpec,
    as_ranking_chain,
    hosted_model_spec,
    is_no_ranker,
    load_ranker,
)

__all__ = [
    "DEFAULT_GATE_MARGIN",
    "DEFAULT_LOCAL_RANKER",
    "DEFAULT_TIMEOUT_S",
    "NO_RANKER",
    "RANKING_SCHEMA",
    "SYSTEM_PROMPT",
    "ParseResult",
    "RankerSpec",
    "RankingChain",
    "RankingExample",
    "RankingInput",
    "RankingOutput",
    "as_ranking_chain",
    "hosted_model_spec",
    "build_ranking_messages",
    "check_timeout",
    "describe_model",
    "encode_image",
    "format_target",
    "image_block",
    "is_no_ranker",
    "load_ranker",
    "match_items",
    "normalize_label",
    "parse_gate",
    "parse_items",
    "parse_ranking",
    "parse_reply",
    "should_skip",
    "skip_in_plain_words",
    "skip_reason",
    "skip_text",
    "REJECTED_SKIP_REASON",
    "validate_margin",
]
