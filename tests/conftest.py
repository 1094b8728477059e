"""Suite-wide set-up: no hub access, a private RAR_HOME, tiny random encoders on disk."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Make ``tests.helpers`` importable however pytest is started (``pytest`` or ``python -m``).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Before anything imports huggingface_hub / transformers: no test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SESSION_HOME = tempfile.mkdtemp(prefix="rar-test-home-")
os.environ["RAR_HOME"] = _SESSION_HOME
# An empty hub cache: tests never pick up weights a developer happens to have cached.
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf-home")

import pytest  # noqa: E402

from tests.helpers.tiny_models import make_tiny_hf_clip, make_tiny_openclip  # noqa: E402


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
