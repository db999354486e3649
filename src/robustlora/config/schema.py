"""The building blocks of every params section: the strict :class:`Schema` base, the :class:`Invalid` rule error and
the field types the sections share (numbers written as fractions such as ``8/255``, devices, ε grids).

A section is a frozen pydantic model that refuses unknown keys and strings where numbers belong; a validator that
breaks a rule raises :class:`Invalid` naming the key below the section, and :mod:`robustlora.config.explain` turns
either into one line naming the full params key. ε values are in [0,1] pixel units.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from robustlora.formatting import format_eps


class Schema(BaseModel):
    """A params section: strict types (5, not '5'), frozen, unknown keys refused; an empty YAML section is {}."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, raw: Any) -> Any:
        return {} if raw is None else raw


class Invalid(ValueError):
    """A broken rule inside a section; ``key`` is below the section being validated ('' = the section itself)."""

    NO_VALUE: ClassVar[object] = object()  # the message names no bad value

    def __init__(self, key: str, message: str, value: Any = NO_VALUE) -> None:
        super().__init__(message)
        self.key, self.value = key, value


def fraction(value: Any) -> Any:
    """'8/255' -> 8/255 and '1e-4' -> 1e-4 (YAML 1.1 reads an exponent without a dot as a string); else as is."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+))?\s*", value)
        if m:
            try:
                return float(m[1]) / float(m[2]) if m[2] else float(m[1])
            except (ValueError, ZeroDivisionError):
                pass
    return value


Number = Annotated[float, BeforeValidator(fraction)]
Text = Annotated[str, Field(min_length=1)]


def as_tuple(value: Any) -> Any:
    """A YAML list as a tuple (strict tuple fields refuse lists); anything else as is, for the field to judge."""
    return tuple(value) if isinstance(value, list) else value


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device)]


def eps_grid(value: Any) -> tuple[float, ...] | None:
    """A list of ε in [0,1] pixels (fractions such as 8/255 allowed) as a sorted tuple without repeats; None stays
    None where the field allows it ("the default grid")."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of ε values in [0, 1] (e.g. 8/255)")
    grid = [fraction(v) for v in value]
    for raw, eps in zip(value, grid):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
            raise Invalid("", "values must be numbers in [0, 1] pixel units (write 8/255 for 8 grey levels)", raw)
    return tuple(sorted({float(e) for e in grid}))


def off_grid(eps: float, grid: tuple[float, ...]) -> str:
    """Why ``eps`` may not be used: '(2/255, 4/255, 8/255), got 3/255', to follow 'must be values of attack.eps'."""
    return f"({', '.join(map(format_eps, grid))}), got {format_eps(eps)}"


EpsGrid = Annotated[tuple[float, ...], BeforeValidator(eps_grid)]
EpsGridOrDefault = Annotated[tuple[float, ...] | None, BeforeValidator(eps_grid)]  # None: the section's default
