"""Great Expectations checks on a data manifest (one row per stored image).

The suite asks: are the per-class counts what the archive and the caps imply (counted in the
archive itself, by :func:`robustlora.data.dataset.expected_counts`, the function preprocessing cuts by),
do labels agree with the class list, are all images the expected size, and is every image
(pixel hash) and archive member unique across all splits (a duplicate across train/val is
leakage). Only the official Tiny ImageNet zip (by md5) must also have the official sizes:
200 classes of 500 train and 50 val images, 64 x 64 px. All expectations run; failures are
reported together with a few offending rows. How GX is run quietly is :mod:`robustlora.data.validation_gx`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from robustlora import layout
from robustlora.data.validation_gx import (MAX_EXAMPLES, ExpectationOutcome, import_gx, plural, quiet_context,
                                          run_suite)
from robustlora.data.manifest import MANIFEST_COLUMNS, SPLITS, read_manifest
from robustlora.io import file_digest

if TYPE_CHECKING:
    from robustlora.data.dataset import ArchiveSizes, Domain

INT_COLUMNS = ("index", "label", "height", "width", "channels")
INT_DTYPES = [f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)]
ROW_KEY = ["split", "index", "member"]  # how an offending manifest row is named in reports
COUNT_KEY = ["split", "wnid"]  # how an offending count-table row is named


@dataclass(frozen=True)
class ValidationReport:
    """All expectation outcomes for one manifest; `success` only if every one passed."""

    name: str  # which manifest: "target" or "source"
    outcomes: tuple[ExpectationOutcome, ...]
    archive: dict[str, Any] | None = None  # which archive the counts came from: {"file", "md5", "official"}

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def statistics(self) -> dict[str, int]:
        n_failed = len(self.failures)
        return {
            "evaluated_expectations": len(self.outcomes),
            "successful_expectations": len(self.outcomes) - n_failed,
            "unsuccessful_expectations": n_failed,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: name, success, statistics, archive and one dict per expectation (see ExpectationOutcome)."""
        return {
            "name": self.name, "success": self.success, "statistics": self.statistics, "archive": self.archive,
            "expectations": [o.to_dict() for o in self.outcomes],
        }

    def summary(self) -> str:
        """Readable multi-line text: the verdict, then one line per failed expectation."""
        source = ""
        if self.archive is not None:
            official = "official Tiny ImageNet sizes checked" if self.archive["official"] else "not the official zip"
            source = f" (counts from {self.archive['file']}; {official})"
        if self.success:
            return f"validation of {self.name} manifest passed: {len(self.outcomes)} expectations{source}"
        n_failed, n_total = len(self.failures), len(self.outcomes)
        lines = [f"validation of {self.name} manifest FAILED: {n_failed} of {n_total} expectations{source}"]
        lines += [f"  - {o.describe()}" for o in self.failures]
        return "\n".join(lines)


def validate_domain(domain: Domain, prepared_dir: str | os.PathLike) -> ValidationReport:
    """Validate a prepared domain (``prepared_dir/manifest.csv``) against what its archive and the params imply.

    Expected counts come from the archive itself (:func:`robustlora.data.dataset.expected_counts`: its images per class,
    the caps, the holdout), so a user's own zip of any size passes. Only when the archive's md5 is the official
    Tiny ImageNet md5 must it also have the official sizes (:func:`validate_archive_sizes`, 64 x 64 px images).
    """
    from robustlora.data.dataset import Archive, expected_counts, official_sizes

    archive = Archive(domain.archive)
    classes = archive.select_classes(domain.classes)
    expected = expected_counts(archive, classes, domain.train_per_class, domain.val_per_class, domain.holdout)
    manifest = read_manifest(Path(prepared_dir) / layout.MANIFEST)
    md5 = file_digest(archive.path, "md5")  # once per archive: it decides whether the official sizes apply
    official = official_sizes(md5)
    size = official.image_size if official else domain.archive_image_size
    report = validate_manifest(manifest, classes, expected, None if size is None else (size, size), name=domain.name)
    outcomes = report.outcomes
    if official:
        outcomes += validate_archive_sizes(archive.available(), official, name=domain.name).outcomes
    info = {"file": archive.path.name, "md5": md5, "official": official is not None}
    return ValidationReport(name=domain.name, outcomes=outcomes, archive=info)


def validate_archive_sizes(available: dict[str, dict[str, int]], sizes: ArchiveSizes,
                           name: str = "target") -> ValidationReport:
    """Check that an archive holds ``sizes``: ``sizes.wnids`` classes, each with ``sizes.train_per_class`` training
    and ``sizes.val_per_class`` val images. available: images per class, {"train"|"val": {wnid: n}}
    (:meth:`robustlora.data.dataset.Archive.available`). Table "archive_counts", one row per split and wnid.
    """
    wnids = sorted({w for per_class in available.values() for w in per_class})
    official = {"train": {w: sizes.train_per_class for w in wnids}, "val": {w: sizes.val_per_class for w in wnids}}
    held = pd.DataFrame([(split, w, n) for split, per in available.items() for w, n in per.items()],
                        columns=["split", "wnid", "actual"])
    table = _count_table(held, official)
    gx = import_gx()
    E = gx.expectations
    checks = [
        E.ExpectColumnPairValuesToBeEqual(column_A="actual", column_B="expected"),
        E.ExpectColumnUniqueValueCountToBeBetween(column="wnid", min_value=sizes.wnids, max_value=sizes.wnids),
    ]
    outcomes = run_suite(gx, quiet_context(gx), "archive_counts", table, checks, COUNT_KEY, _count_example)
    return ValidationReport(name=name, outcomes=tuple(outcomes))


def validate_manifest(
    manifest: pd.DataFrame,
    classes: list[str],
    expected_counts: dict[str, dict[str, int]],
    image_size: tuple[int, int] | None,
    name: str = "target",
) -> ValidationReport:
    """Run the manifest suite with Great Expectations and collect every outcome.

    manifest: one row per image with columns MANIFEST_COLUMNS. classes: wnids, label i <-> classes[i].
    expected_counts: {split: {wnid: images}}. image_size: (height, width) in pixels every archive image must have;
    None = any size (a user's own zip: images are resized when stored), only positive.
    """
    _check_inputs(manifest, classes, expected_counts, image_size)
    n_expected = sum(sum(per_class.values()) for per_class in expected_counts.values())
    gx = import_gx()
    context = quiet_context(gx)
    E = gx.expectations  # short alias keeps the suite readable

    # a missing class must show as 0 and an unexpected one must show at all, hence the outer join
    counts = class_count_table(manifest, expected_counts)
    count_checks = [E.ExpectColumnPairValuesToBeEqual(column_A="actual", column_B="expected")]

    # wnid == classes[label], vectorised (ExpectColumnPairValuesToBeInSet iterates rows: ~5 s at 110k)
    labelled = manifest[ROW_KEY + ["label", "wnid"]].assign(
        **{"classes[label]": manifest["label"].map(dict(enumerate(classes)))}
    )
    label_checks = [E.ExpectColumnPairValuesToBeEqual(column_A="wnid", column_B="classes[label]")]

    if image_size is None:
        size_checks = [E.ExpectColumnValuesToBeBetween(column=c, min_value=1) for c in ("height", "width")]
    else:
        size_checks = [E.ExpectColumnValuesToBeInSet(column=c, value_set=[int(s)])
                       for c, s in zip(("height", "width"), image_size)]
    manifest_checks = [
        E.ExpectTableRowCountToEqual(value=n_expected),
        E.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=True),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=len(classes) - 1),
        *size_checks,
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[3]),
        E.ExpectColumnValuesToBeUnique(column="pixel_hash"),
        E.ExpectColumnValuesToBeUnique(column="member"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["split", "index"]),
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in MANIFEST_COLUMNS],
        # floats here would mean nulls or arithmetic crept in upstream
        *[E.ExpectColumnValuesToBeInTypeList(column=c, type_list=INT_DTYPES) for c in INT_COLUMNS],
    ]

    outcomes = run_suite(gx, context, "class_counts", counts, count_checks, COUNT_KEY, _count_example)
    outcomes += run_suite(gx, context, "manifest", labelled, label_checks, ROW_KEY, _row_example)
    outcomes += run_suite(gx, context, "manifest", manifest, manifest_checks, ROW_KEY, _row_example)
    outcomes = [_explain_duplicates(o, manifest) for o in outcomes]
    return ValidationReport(name=name, outcomes=tuple(outcomes))


def class_count_table(manifest: pd.DataFrame, expected_counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Images per (split, wnid): columns split, wnid, actual, expected; 0 where one side has none."""
    actual = manifest.groupby(COUNT_KEY, dropna=False).size().rename("actual").reset_index()
    return _count_table(actual, expected_counts)


def _count_table(actual: pd.DataFrame, expected_counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Join observed counts (columns split, wnid, actual) with expected ones; a missing side counts 0."""
    planned = [(split, wnid, int(n)) for split, per in expected_counts.items() for wnid, n in per.items()]
    expected = pd.DataFrame(planned, columns=["split", "wnid", "expected"])
    table = expected.merge(actual, on=COUNT_KEY, how="outer")
    table[["actual", "expected"]] = table[["actual", "expected"]].fillna(0).astype("int64")
    return table[["split", "wnid", "actual", "expected"]].sort_values(COUNT_KEY, ignore_index=True)


def _check_inputs(
    manifest: pd.DataFrame,
    classes: list[str],
    expected_counts: dict[str, dict[str, int]],
    image_size: tuple[int, int] | None,
) -> None:
    """Refuse arguments the suite cannot judge: these are caller bugs, not data problems."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks column(s) {', '.join(missing)}; expected columns: {', '.join(MANIFEST_COLUMNS)}"
        )
    if not classes or len(set(classes)) != len(classes):
        repeated = len(classes) - len(set(classes))
        raise ValueError(f"classes must be distinct wnids, got {len(classes)} ({repeated} repeated)")
    unknown_splits = sorted(set(expected_counts) - set(SPLITS))
    if unknown_splits:
        raise ValueError(f"expected_counts has unknown split(s) {unknown_splits}; use {list(SPLITS)}")
    known = set(classes)
    for split, per_class in expected_counts.items():
        unknown = sorted(set(per_class) - known)
        if unknown:
            shown = ", ".join(unknown[:5])
            raise ValueError(f"expected_counts[{split!r}] names wnid(s) not in classes: {shown}")
    if image_size is not None and (len(image_size) != 2 or any(int(s) <= 0 for s in image_size)):
        raise ValueError(f"image_size must be (height, width) in pixels, got {image_size!r}")


def _row_example(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    """'train/12 height=32': split/index, then the offending values."""
    values = " ".join(f"{c}={row.get(c)}" for c in columns if c in row and c not in ("split", "index"))
    ref = f"{row.get('split')}/{row.get('index')}"
    return f"{ref} {values}" if values else f"{ref} ({row.get('member')})"


def _count_example(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    """'val/n01443537: 0 images, expected 50'."""
    actual = plural(row.get("actual"), "image")
    return f"{row.get('split')}/{row.get('wnid')}: {actual}, expected {row.get('expected')}"


def _explain_duplicates(outcome: ExpectationOutcome, manifest: pd.DataFrame) -> ExpectationOutcome:
    """For a failed uniqueness check, name which splits collide and show colliding rows side by side."""
    if outcome.success or outcome.type != "expect_column_values_to_be_unique" or outcome.error:
        return outcome
    column = outcome.columns[0]
    repeated = manifest[column].notna() & manifest.duplicated(column, keep=False)
    rows = manifest.loc[repeated, ["split", "index", "member", column]]
    groups = [g for _, g in rows.groupby(column, sort=False)]
    # how often each combination of splits shares a value: "train/val" is leakage, "train" a duplicate
    pairs = pd.Series(["/".join(sorted(set(g["split"].astype(str)))) for g in groups]).value_counts()
    sharing = ", ".join(f"{splits} x{n}" for splits, n in pairs.items())
    detail = f"{plural(len(groups), 'shared value')}; splits sharing: {sharing}"
    examples = []
    for g in groups[:MAX_EXAMPLES]:
        refs = " == ".join(f"{s}/{i}" for s, i in zip(g["split"], g["index"]))
        members = "" if column == "member" else " (" + " == ".join(map(str, g["member"])) + ")"
        examples.append(refs + members)
    return replace(outcome, examples=tuple(examples), detail=detail)

