"""rar-agent: retrieve-and-rank visual recognition as a LangChain-native tool.

The names a user starts from are importable from here::

    from rar_agent import Recognizer, make_tools, create_rar_agent

They load on first use (module ``__getattr__``), so ``import rar_agent`` itself stays fast and
pulls in no torch, transformers or LangChain.
"""

import os

#: How many times an idle OpenMP thread of torch's (libgomp) checks for work before it
#: sleeps; libgomp's own default is 300000, about 8 ms here. After each forward pass torch's
#: second thread spun that long on the second CPU, just when the next photo's decode wanted
#: it: a JPEG with restart markers (as iPhones and Samsung phones write them) decoded in two
#: parts gained nothing, and every spin was CPU time burnt. 10000 (about 0.3 ms) still spans
#: the gaps between a pass's layers, so the pass is no slower. Measured in one process on
#: 2 cores, recognize one by one, median ms of 90 calls each (docs/benchmarks.md, session
#: 13): the small photo 14.2 wall / 28.4 CPU at the default, 13.7 / 24.2 at 10000; a 12 MP
#: JPEG with restart markers 26.9 / 46.0 against 20.4 / 35.5; without markers 24.7 / 43.1
#: against 23.6 / 34.1; 0 (sleep at once) slowed the small photo to 23.9 ms.
OPENMP_SPIN_COUNT = "10000"


def _bound_openmp_spin() -> None:
    """Set ``GOMP_SPINCOUNT`` for torch's OpenMP threads unless the user chose how they wait.

    libgomp reads it once, when torch loads it, so it takes effect only where this package
    is imported before torch (every ``rar-agent`` command is); it also reaches the child
    processes this one starts.
    """
    if not (os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY")):
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT


_bound_openmp_spin()

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
