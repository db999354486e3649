"""Great Expectations, run quietly on pandas tables, each result reduced to a plain :class:`ExpectationOutcome`.

GX runs in an in-memory (ephemeral) context: nothing is written to disk, no data docs, no analytics, no progress
bars. It is imported lazily (~7 s) on first use. Which expectations a prepared domain must meet is
:mod:`robustlora.data.validation`'s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

MAX_EXAMPLES = 5  # offending rows kept per expectation
SUMMARY_EXAMPLES = 3  # of those, shown in a one-line description


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation, reduced to plain JSON-able values."""

    type: str  # e.g. "expect_column_values_to_be_unique"
    table: str  # "manifest", "class_counts" (manifest vs expected images per split and class) or "archive_counts"
    columns: tuple[str, ...]  # empty for table-level expectations
    success: bool
    unexpected_count: int | None = None  # offending rows; None for table-level expectations
    examples: tuple[str, ...] = ()  # a few offending rows, readable
    observed: Any = None  # table-level expectations: what was seen
    expected: Any = None  # table-level expectations: what was wanted
    detail: str | None = None  # extra context, e.g. which splits share duplicate images
    error: str | None = None  # the expectation could not be evaluated

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return {
            "type": self.type, "table": self.table, "columns": list(self.columns),
            "success": self.success, "unexpected_count": self.unexpected_count,
            "examples": list(self.examples), "observed": self.observed, "expected": self.expected,
            "detail": self.detail, "error": self.error,
        }

    def describe(self) -> str:
        """One line: which expectation on which columns, and what went wrong."""
        prefix = "" if self.table == "manifest" else f"{self.table}."
        where = ", ".join(prefix + c for c in self.columns)
        head = f"{self.type}({where})" if where else f"{self.type}({self.table})"
        if self.error is not None:
            return f"{head}: could not be evaluated: {self.error}"
        if self.unexpected_count is None:
            return f"{head}: observed {self.observed}, expected {self.expected}"
        text = f"{head}: {plural(self.unexpected_count, 'row')}"
        if self.detail:
            text += f" ({self.detail})"
        if self.examples:
            text += ", e.g. " + "; ".join(self.examples[:SUMMARY_EXAMPLES])
        return text


def import_gx() -> Any:
    """Import Great Expectations with usage statistics off (the env var must be set before import)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


def quiet_context(gx: Any) -> Any:
    """An in-memory context with progress bars off, so nothing lands on disk or stderr."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


Example = Callable[[dict[str, Any], tuple[str, ...]], str]  # offending row -> readable text


def run_suite(
    gx: Any,
    context: Any,
    table: str,
    frame: pd.DataFrame,
    expectations: list[Any],
    key: list[str],
    example: Example,
) -> list[ExpectationOutcome]:
    """Validate one dataframe against expectations; outcomes come back in the order given."""
    suffix = len(context.suites.all())  # names must be unique within the context
    batch = (
        context.data_sources.add_pandas(f"{table}_{suffix}")
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_{suffix}"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{table}_{suffix}", data=batch, suite=suite)
    )
    # SUMMARY keeps only a few offending rows, named by `key` rather than by dataframe position
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": key,
        "partial_unexpected_count": MAX_EXAMPLES,
    }
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    by_id = {r.expectation_config.id: r for r in result.results}  # GX does not keep suite order
    return [_outcome(table, by_id[e.id], example) for e in expectations]


def _outcome(table: str, result: Any, example: Example) -> ExpectationOutcome:
    """Reduce one GX result to the fields a reader needs."""
    config = result.expectation_config
    kwargs = config.kwargs
    columns = tuple(kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs)
    columns += tuple(kwargs.get("column_list", ()))
    info = result.result or {}
    error = _exception_message(result.exception_info)
    if "unexpected_count" not in info:
        expected = kwargs.get("value", kwargs.get("column_set", kwargs.get("type_list")))
        if expected is None and kwargs.get("min_value") is not None:  # a range; "200" when it is one value
            low, high = kwargs["min_value"], kwargs.get("max_value")
            expected = low if low == high else [low, high]
        detail = None
        if "details" in info and "mismatched" in info["details"]:
            detail = str(_plain(info["details"]["mismatched"]))
        return ExpectationOutcome(
            type=config.type, table=table, columns=columns, success=bool(result.success),
            observed=_plain(info.get("observed_value")), expected=_plain(expected), detail=detail,
            error=error,
        )
    rows = info.get("partial_unexpected_index_list") or []
    return ExpectationOutcome(
        type=config.type, table=table, columns=columns, success=bool(result.success),
        unexpected_count=int(info["unexpected_count"]),
        examples=tuple(example(_plain(row), columns) for row in rows[:MAX_EXAMPLES]),
        error=error,
    )


def _exception_message(info: Any) -> str | None:
    """GX nests exceptions either flat or per metric; return the first message."""
    if not info:
        return None
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    raised = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return raised[0].get("exception_message") if raised else None


def plural(n: int, noun: str) -> str:
    """'1 row', '3 rows'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _plain(value: Any) -> Any:
    """numpy scalars, tuples and NaN -> JSON-able Python values (NaN becomes None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
