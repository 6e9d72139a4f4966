"""What every config model is built from: strict frozen models, durations and sizes.

``Duration`` and ``Size`` are also the plugin API's (``wsgate.Duration``, ``wsgate.Size``):
a handler's own options take the same spellings as config.yaml.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .units import DURATION_PATTERN, SIZE_PATTERN, parse_duration, parse_size

__all__ = ["Duration", "Size", "StrictModel"]


class _NumberOrSpelled:
    """JSON Schema: the number with its ``Field`` bounds, or a string in the given spelling."""

    def __init__(self, pattern: str, examples: list[str]) -> None:
        self.pattern = pattern
        self.examples = examples

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The handler renders the validated number, bounds included: editors then check
        # `history_bytes: 99` as well as `history_bytes: 10 KB`.
        number: dict[str, Any] = handler(schema)
        return {"anyOf": [number, {"type": "string", "pattern": self.pattern, "examples": self.examples}]}


Duration = Annotated[float, BeforeValidator(parse_duration),
                     _NumberOrSpelled(DURATION_PATTERN, ["500ms", "20s", "2m", "1h"])]
"""Seconds, written as a number or as ``"500ms"``, ``"20s"``, ``"2m"``, ``"1h"``; at most a year."""

Size = Annotated[int, BeforeValidator(parse_size),
                 _NumberOrSpelled(SIZE_PATTERN, ["512B", "64KiB", "1MiB", "1MB"])]
"""Bytes, written as a number or as ``"512B"``, ``"64KiB"``, ``"1MiB"``, ``"1MB"``; at most 2**62."""


class StrictModel(BaseModel):
    """Unknown keys are errors (with a did-you-mean); a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
