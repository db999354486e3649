"""pydantic's validation errors as the one line a params user reads, e.g.
``params.yaml: data.holdout must be in [0, 0.5), got 0.9``: the full dotted key, the rule, the bad value.

A validator's :class:`~robustlora.config.schema.Invalid` adds the key below its section and its own words; a
:class:`~robustlora.errors.ParamError` raised inside validation is passed on as it is.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic import ValidationError as SchemaError  # not robustlora.errors.ValidationError (the data suite's)

from robustlora.config.schema import Invalid
from robustlora.errors import ParamError

_TYPES = {"int": "an integer", "float": "a finite number", "finite": "a finite number", "bool": "true or false",
          "string": "a non-empty string", "tuple": "a list", "list": "a list", "dict": "a mapping",
          "model": "a mapping"}  # by the first word of pydantic's error type
_BOUNDS = ("gt", "ge", "lt", "le")


def _field(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """(the model holding the last key of ``loc``, that key's FieldInfo or None) — for bounds and known keys."""
    tp: Any = root
    parent, info = None, None
    for part in loc:
        while get_origin(tp) in (Union, types.UnionType, Annotated):
            tp = next(a for a in get_args(tp) if a is not type(None))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            parent, info = tp, tp.model_fields.get(str(part))
            tp = info.annotation if info else None
        else:  # into a dict value or a list item, where the field's own bounds do not apply
            tp, info = ([a for a in get_args(tp) if a is not Ellipsis] or [None])[-1], None
    return parent, info


def explain(e: SchemaError, root: type[BaseModel], prefix: tuple[str, ...] = ()) -> ParamError:
    """The first error of ``e`` as one line naming the full dotted key and the bad value."""
    err = e.errors()[0]
    ctx = err.get("ctx", {})
    cause = ctx.get("error")
    if isinstance(cause, ParamError):  # raised with its full message by a validator
        return cause
    loc = [*prefix, *(str(p) for p in err["loc"] if p != "[key]")]
    parent, info = _field(root, err["loc"])
    value, kind = err.get("input"), err["type"]
    if isinstance(cause, Invalid):
        loc += [cause.key] if cause.key else []
        msg, value = str(cause), cause.value
    elif cause is not None:
        msg = str(cause)
    elif kind == "missing":
        return ParamError(f"params.yaml: {'.'.join(loc)} is missing")
    elif kind == "extra_forbidden":
        what = "key" if len(loc) > 1 else "section"
        known = ", ".join(parent.model_fields) if parent and parent.model_fields else "none: it takes no keys"
        return ParamError(f"params.yaml: unknown {what} {'.'.join(loc)} (known: {known})")
    elif kind == "literal_error":
        msg = "must be one of " + ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = {b: getattr(m, b) for m in (info.metadata if info else []) for b in _BOUNDS if hasattr(m, b)} | ctx
        lo, hi = bounds.get("gt", bounds.get("ge")), bounds.get("lt", bounds.get("le"))
        msg = (f"must be in {'(' if 'gt' in bounds else '['}{'-inf' if lo is None else f'{lo:g}'}, "
               f"{'inf' if hi is None else f'{hi:g}'}{')' if 'lt' in bounds else ']'}")
    elif kind.split("_")[0] in _TYPES:  # int_type, int_from_float, finite_number, string_too_short, ...
        nullable = info is not None and type(None) in get_args(info.annotation)
        msg = f"must be {_TYPES[kind.split('_')[0]]}" + (" or null" if nullable else "")
    else:
        msg = err["msg"].lower()  # pydantic's own words
    got = "" if value is Invalid.NO_VALUE else f", got {value!r}"
    return ParamError(f"params.yaml: {'.'.join(loc)} {msg}{got}")
