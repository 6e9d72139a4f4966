"""What every config model is built from: strict frozen models, durations and sizes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from .units import parse_duration, parse_size

__all__ = ["Duration", "Size", "StrictModel"]

Duration = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=float | str)]
Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=int | str)]


class StrictModel(BaseModel):
    """Unknown keys are errors (with a did-you-mean); a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
