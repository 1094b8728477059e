"""The learning tool: store an example image under a label (off unless learning is allowed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import ToolException
from pydantic import BaseModel, Field

from rar_agent.errors import RarError
from rar_agent.results import ExampleAdded
from rar_agent.tools.base import RecognizerTool, tool_error

__all__ = ["AddCategoryInput", "AddCategoryTool"]


class AddCategoryInput(BaseModel):
    """Arguments of :class:`AddCategoryTool`."""

    label: str = Field(
        min_length=1, max_length=200, description="The category name to teach, e.g. 'grey heron'."
    )
    image: str | None = Field(
        default=None,
        description="The example image id from the conversation; omit for the latest image.",
    )


class AddCategoryTool(RecognizerTool):
    """Teach the memory a category from an example image (a new category or a new example).

    Off unless ``enabled=True``: an agent that talks to untrusted people should not be able
    to rewrite what the memory knows. :func:`make_tools` sets it from ``allow_learning``.
    """

    name: str = "add_category_example"
    description: str = (
        "Teach the memory: store an image as an example of a category (label), so it is "
        "recognized next time. Use only when the user asks to teach or correct a category."
    )
    args_schema: type[BaseModel] = AddCategoryInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = ExampleAdded
    writes_memory: ClassVar[bool] = True
    enabled: bool = False

    def _run(
        self,
        label: str,
        image: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        if not self.enabled:
            raise ToolException("learning is disabled for this agent: the memory is read-only")
        from rar_agent import openset
        from rar_agent.ingest.builders import add_images
        from rar_agent.memory import normalize_label

        start = time.perf_counter()
        try:
            clean = normalize_label(label)
            source = self.resolver().resolve(image)
            memory = self.recognizer.memory
            # The builders' own path (as `memory build`): same content hash, no duplicates.
            payload = source.payload
            item = (
                (str(payload), clean)
                if isinstance(payload, Path)
                else (source.name, clean, payload)
            )
            report = add_images(
                memory, self.recognizer.encoder, [item], strict=True, extra={"added_by": self.name}
            )
            added = report.added
            if added:  # a taught example updates the calibration, never a full refit
                openset.update(memory, added=report.sample_ids)
            examples = memory.labels("image").get(clean, 0)
            after = memory.count("image")
        except RarError as e:
            raise tool_error(e) from e
        new = bool(added and examples == 1)
        if not added:
            text = f"{source.name} was already stored as an example of {clean!r}."
        elif new:
            text = (
                f"Stored {source.name} as the first example of the new category {clean!r}; "
                "images like it are now recognized as it."
            )
        else:
            text = f"Stored {source.name} as an example of {clean!r} ({examples} examples now)."
        artifact = ExampleAdded(
            label=clean,
            image=source.name,
            added=added,
            new_category=new,
            category_examples=examples,
            image_entries=after,
            seconds=round(time.perf_counter() - start, 3),
        )
        return text, artifact.model_dump(mode="json")

    async def _arun(
        self,
        label: str,
        image: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, label, image)
