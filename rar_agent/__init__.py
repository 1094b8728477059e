"""rar-agent: retrieve-and-rank visual recognition as a LangChain-native tool.

The names a user starts from are importable from here::

    from rar_agent import Recognizer, make_tools, create_rar_agent

They load on first use (module ``__getattr__``), so ``import rar_agent`` itself stays fast and
pulls in no torch, transformers or LangChain.
"""

# Not ``typing.TYPE_CHECKING``: importing ``typing`` alone would double this module's import
# time. Type checkers treat any ``TYPE_CHECKING`` name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from rar_agent.agent import create_rar_agent
    from rar_agent.config import Settings
    from rar_agent.encoders import load_encoder
    from rar_agent.errors import RarError
    from rar_agent.pipeline import Recognizer
    from rar_agent.results import RecognitionResult
    from rar_agent.retrieval import CategoryRetriever
    from rar_agent.tools import make_tools
    from rar_agent.vectorstore import CategoryVectorStore

__version__ = "0.1.0"

# name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "Recognizer": "rar_agent.pipeline",
    "RecognitionResult": "rar_agent.results",
    "make_tools": "rar_agent.tools",
    "create_rar_agent": "rar_agent.agent",
    "CategoryVectorStore": "rar_agent.vectorstore",
    "CategoryRetriever": "rar_agent.retrieval",
    "load_encoder": "rar_agent.encoders",
    "Settings": "rar_agent.config",
    "RarError": "rar_agent.errors",
}

__all__ = [
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


def __getattr__(name: str) -> object:
    """Import an exported name's module on first access and cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rar_agent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's own names plus the lazily exported ones."""
    return sorted(set(globals()) | set(_EXPORTS))
