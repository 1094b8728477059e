"""The package's front door: ``from rar_agent import ...`` names, loaded lazily."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import rar_agent

EXPECTED_ALL = [
    "CategoryRetriever",
    "CategoryVectorStore",
    "RarError",
    "RecognitionResult",
    "Recognizer",
    "Settings",
    "__version__",
    "create_rar_agent",
    "load_encoder",
    "make_tools",
]

HEAVY = ["torch", "transformers", "open_clip", "langchain", "langchain_core", "langgraph",
         "gradio", "qdrant_client", "qdrant_edge", "matplotlib", "mcp"]  # fmt: skip


def test_all_is_pinned() -> None:
    assert rar_agent.__all__ == EXPECTED_ALL


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_each_name_resolves_to_its_defining_object(name: str) -> None:
    value = getattr(rar_agent, name)
    assert name in dir(rar_agent)
    if name != "__version__":
        home = importlib.import_module(value.__module__)
        assert getattr(home, name) is value  # the real object, not a copy or a wrapper
    exec(f"from rar_agent import {name}", {})  # the import statement users write


def test_unknown_names_and_submodules() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rar_agent.nope
    from rar_agent import datasets  # a submodule still imports through the package

    assert datasets.__name__ == "rar_agent.datasets"


def test_import_loads_nothing_heavy() -> None:
    code = (
        "import json, sys, rar_agent; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out) == []


# Where ``Any`` is the honest type: the torch/transformers model objects an encoder wraps, the
# ``config`` of overloads inherited from LangChain's Runnable, and the click command typer
# builds (typer vendors its own click, whose types are private).
ANY_ALLOWED = {
    "rar_agent.cli:reflow_help(command)",
    "rar_agent.cli.environment:known_variables(command)",
    "rar_agent.cli.environment:unknown_variables(command)",
    "rar_agent.encoders.hf_backend:TransformersClipEncoder.__init__(image_processor)",
    "rar_agent.encoders.hf_backend:TransformersClipEncoder.__init__(model)",
    "rar_agent.encoders.hf_backend:TransformersClipEncoder.__init__(tokenizer)",
    "rar_agent.encoders.open_clip_backend:OpenClipEncoder.__init__(model)",
    "rar_agent.ranking.chain:RankingChain.abatch_as_completed(config)",
    "rar_agent.ranking.chain:RankingChain.batch_as_completed(config)",
}


def test_public_boundaries_are_typed_not_any() -> None:
    """Issue 11: real types instead of ``Any`` at public boundaries. Eleven came back since
    (query vectors, ASGI scopes and apps, a prior's score, tool error handlers)."""
    import ast
    from pathlib import Path

    from tools.arch_metrics import any_boundaries, source_files

    bare: set[str] = set()
    for module, path in source_files(Path(rar_agent.__file__).parents[1]).items():
        bare |= set(any_boundaries(module, ast.parse(path.read_text(encoding="utf-8")))[0])
    assert bare <= ANY_ALLOWED, sorted(bare - ANY_ALLOWED)
