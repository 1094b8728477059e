"""Suite-wide set-up: no hub access, a private RAR_HOME, tiny random encoders on disk.

Everything a test run writes goes under one temporary root (``RAR_HOME``, pytest's
``tmp_path`` folders, and ``tempfile``'s default directory, so subprocesses too), removed when
the run ends (``RAR_KEEP_TEST_TMP=1`` keeps it and prints where).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Make ``tests.helpers`` importable however pytest is started (``pytest`` or ``python -m``).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Before anything imports huggingface_hub / transformers: no test may reach a model hub, even
# where the developer's shell says otherwise (HF_HUB_OFFLINE=0).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The product's settings (RAR_QDRANT_URL, RAR_CLIP_MODEL, RAR_RANKER, ...) come from the tests
# alone, never from the shell that started them; kept: the test suite's own switches and where
# this machine keeps Fashion-MNIST.
_TEST_SWITCHES = {
    "RAR_KEEP_TEST_TMP",
    "RAR_UPDATE_DOCS_IMG",
    "RAR_CHROMIUM",
    "RAR_MCP_RECORD",
    "RAR_FASHION_MNIST_DIR",
    "RAR_BENCH_SMOKE",
}
for _name in [n for n in os.environ if n.startswith("RAR_") and n not in _TEST_SWITCHES]:
    del os.environ[_name]
# Tests talk to servers they start on loopback: never through a proxy the shell names
# (httpx and urllib send even 127.0.0.1 through HTTP_PROXY / ALL_PROXY unless NO_PROXY says
# otherwise). And no LangChain call of a test is traced to LangSmith.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1,localhost,::1"]))
for _name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
    os.environ.pop(_name, None)
_SESSION_ROOT = tempfile.mkdtemp(prefix="rar-tests-")
_SESSION_HOME = os.path.join(_SESSION_ROOT, "rar-home")
_SESSION_TMP = os.path.join(_SESSION_ROOT, "tmp")
os.makedirs(_SESSION_TMP)
os.environ["RAR_HOME"] = _SESSION_HOME
os.environ["TMPDIR"] = _SESSION_TMP  # subprocesses' temporary files land in the root too
tempfile.tempdir = _SESSION_TMP
# An empty hub cache: tests never pick up weights a developer happens to have cached.
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf-home")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests try the same examples on every run (seeded from each test), with no time limit
# per example: a loaded CI machine is slow, not wrong. Explore afresh with
# ``--hypothesis-profile=default``.
settings.register_profile("rar-tests", derandomize=True, deadline=None)
settings.load_profile("rar-tests")

from tests.helpers.tiny_models import make_tiny_hf_clip, make_tiny_openclip  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """pytest's ``tmp_path`` folders go under the session's root unless --basetemp is given."""
    if config.option.basetemp is None:
        config.option.basetemp = os.path.join(_SESSION_ROOT, "pytest")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's temporary root (kept, and named, with RAR_KEEP_TEST_TMP=1)."""
    if os.environ.get("RAR_KEEP_TEST_TMP") == "1":
        sys.stderr.write(f"test files kept in {_SESSION_ROOT}\n")
        return
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def rar_home() -> Path:
    """The session's private ``RAR_HOME`` directory."""
    return Path(_SESSION_HOME)


@pytest.fixture(scope="session")
def tiny_openclip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``local-dir:`` spec of a tiny random open_clip CLIP (embedding dim 32)."""
    return make_tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"))


@pytest.fixture(scope="session")
def tiny_hf_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``hf:`` spec of a tiny random transformers CLIPModel + processor (dim 32)."""
    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_openclip_spec: str):  # noqa: ANN201 - returns an ImageTextEncoder
    """The tiny open_clip encoder, loaded through ``load_encoder`` on CPU (fp32)."""
    from rar_agent.encoders import load_encoder

    return load_encoder(tiny_openclip_spec, device="cpu")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    """Point skip reasons at our test module, not at a line of an installed package.

    LangChain's standard suites skip from inside ``langchain_tests`` (in the virtual
    environment), and their test methods are defined there too, so the summary would name
    that file. Shown at the test class in our module instead, ``-ra`` says which of our
    suites skipped what, and why.
    """
    outcome = yield
    report = outcome.get_result()
    longrepr = report.longrepr
    if not (report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3):
        return
    if Path(_ROOT) in Path(str(longrepr[0])).parents and ".venv" not in Path(longrepr[0]).parts:
        return
    owner = item.getparent(pytest.Class)  # our subclass of the suite, defined in item.path
    lineno = owner.reportinfo()[1] if owner is not None else None
    report.longrepr = (str(item.path), (lineno or 0) + 1, longrepr[2])
