"""LangChain's standard chat-model conformance suites, run on the tiny offline VLM."""

from __future__ import annotations

import functools
import tempfile

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from rar_agent.ranking.local_vlm import LocalVisionChatModel
from tests.helpers.tiny_vlm import make_tiny_vlm


@functools.cache
def _tiny_dir() -> str:
    return make_tiny_vlm(tempfile.mkdtemp(prefix="tiny-vlm-std-"))[3:]


class _Config:
    @property
    def chat_model_class(self) -> type[LocalVisionChatModel]:
        return LocalVisionChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model_path": _tiny_dir(), "max_new_tokens": 8}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the suite downloads its test image; images are covered offline elsewhere

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestLocalVisionChatModelUnit(_Config, ChatModelUnitTests):
    """Construction, standard params, serialisation."""


class TestLocalVisionChatModelStandard(_Config, ChatModelIntegrationTests):
    """Invoke / stream / batch / conversation / usage on a real (tiny) local model."""
