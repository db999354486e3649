"""Tests for robustlora.data.validation: the Great Expectations suite on a data manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robustlora.data.dataset import ArchiveSizes
from robustlora.data.manifest import MANIFEST_COLUMNS, read_manifest
from robustlora.data.validation import class_count_table, validate_archive_sizes, validate_manifest

CLASSES = ["n01443537", "n01629819", "n01641577"]
PER_CLASS = {"train": 4, "holdout": 1, "val": 2}
SIZE = (8, 8)


def make_manifest() -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """A small, valid manifest: 3 classes x (4 train, 1 holdout, 2 val), distinct hashes and members."""
    rows = []
    for split, n in PER_CLASS.items():
        for label, wnid in enumerate(CLASSES):
            for _ in range(n):
                index = sum(r["split"] == split for r in rows)
                rows.append({
                    "split": split, "index": index, "label": label, "wnid": wnid,
                    "member": f"tiny/{split}/{wnid}/{wnid}_{index}.JPEG", "height": SIZE[0], "width": SIZE[1],
                    "channels": 3, "mode": "RGB", "pixel_hash": f"{len(rows):032x}",
                })
    expected = {split: {wnid: n for wnid in CLASSES} for split, n in PER_CLASS.items()}
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), expected


def failed(report) -> list[tuple[str, tuple[str, ...]]]:
    return [(o.type, o.columns) for o in report.failures]


def test_good_manifest_passes_quietly_and_writes_nothing(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    manifest, expected = make_manifest()
    report = validate_manifest(manifest, CLASSES, expected, SIZE, name="source")
    assert report.success, report.summary()
    stats = report.to_dict()["statistics"]
    assert stats["unsuccessful_expectations"] == 0 and stats["evaluated_expectations"] >= 20
    assert report.summary().startswith("validation of source manifest passed")
    assert list(tmp_path.iterdir()) == []  # ephemeral context: no gx/ folder, no data docs
    assert capfd.readouterr().err == ""  # no progress bars or warnings


def test_train_val_duplicate_hash_fails_naming_splits_and_members():
    manifest, expected = make_manifest()
    train_row = manifest.index[(manifest["split"] == "train")][2]
    val_row = manifest.index[(manifest["split"] == "val")][4]
    manifest.loc[val_row, "pixel_hash"] = manifest.loc[train_row, "pixel_hash"]
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    assert not report.success
    assert failed(report) == [("expect_column_values_to_be_unique", ("pixel_hash",))]
    (outcome,) = report.failures
    assert outcome.unexpected_count == 2
    train_ref = f"train/{manifest.loc[train_row, 'index']}"
    val_ref = f"val/{manifest.loc[val_row, 'index']}"
    assert outcome.examples == (
        f"{train_ref} == {val_ref} "
        f"({manifest.loc[train_row, 'member']} == {manifest.loc[val_row, 'member']})",
    )
    summary = report.summary()
    assert summary.startswith("validation of target manifest FAILED: 1 of ")
    assert "expect_column_values_to_be_unique(pixel_hash): 2 rows" in summary
    assert "train/val x1" in summary and manifest.loc[val_row, "member"] in summary


def test_wrong_image_size_fails_naming_column_and_count():
    manifest, expected = make_manifest()
    manifest.loc[[0, 5, 9], "height"] = 32
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    assert failed(report) == [("expect_column_values_to_be_in_set", ("height",))]
    assert report.failures[0].unexpected_count == 3
    assert "expect_column_values_to_be_in_set(height): 3 rows, e.g. train/0 height=32" in report.summary()


def test_missing_class_fails_naming_the_class():
    manifest, expected = make_manifest()
    missing = CLASSES[1]
    manifest = manifest[manifest["wnid"] != missing].reset_index(drop=True)
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    counts = report.failures[0]
    assert (counts.table, counts.columns) == ("class_counts", ("actual", "expected"))
    assert counts.unexpected_count == 3  # one row per split
    assert f"train/{missing}: 0 images, expected 4" in counts.examples
    assert f"val/{missing}: 0 images, expected 2" in report.summary()
    assert ("expect_table_row_count_to_equal", ()) in failed(report)
    row_count = next(o for o in report.failures if o.type == "expect_table_row_count_to_equal")
    assert (row_count.observed, row_count.expected) == (14, 21)


def test_unexpected_class_and_split_show_in_count_table():
    manifest, expected = make_manifest()
    manifest.loc[0, ["split", "wnid"]] = ["test", "n99999999"]
    table = class_count_table(manifest, expected)
    extra = table[(table["split"] == "test") & (table["wnid"] == "n99999999")]
    assert extra[["actual", "expected"]].values.tolist() == [[1, 0]]
    short = table[(table["split"] == "train") & (table["wnid"] == CLASSES[0])]
    assert short[["actual", "expected"]].values.tolist() == [[3, 4]]
    assert len(table) == len(PER_CLASS) * len(CLASSES) + 1


def test_label_wnid_mismatch_fails():
    manifest, expected = make_manifest()
    # swap two labels: per-class counts stay right, only the label <-> wnid pairing breaks
    a, b = 0, 4  # train rows of classes 0 and 1
    manifest.loc[[a, b], "label"] = manifest.loc[[b, a], "label"].to_numpy()
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    assert failed(report) == [("expect_column_pair_values_to_be_equal", ("wnid", "classes[label]"))]
    assert report.failures[0].unexpected_count == 2
    assert f"train/0 wnid={CLASSES[0]} classes[label]={CLASSES[1]}" in report.summary()


def test_label_out_of_range_fails_both_range_and_pairing():
    manifest, expected = make_manifest()
    manifest.loc[3, "label"] = len(CLASSES)
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    assert ("expect_column_values_to_be_between", ("label",)) in failed(report)
    assert ("expect_column_pair_values_to_be_equal", ("wnid", "classes[label]")) in failed(report)


def test_to_dict_is_json_serialisable_with_nulls_and_extra_column():
    manifest, expected = make_manifest()
    manifest.loc[2, "wnid"] = None  # a null string and a float-ified int column both need converting
    manifest.loc[1, "label"] = float("nan")
    manifest["extra"] = 1
    report = validate_manifest(manifest, CLASSES, expected, SIZE)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["success"] is False
    assert data["statistics"]["unsuccessful_expectations"] == len(report.failures) > 0
    kinds = {(e["type"], tuple(e["columns"])) for e in data["expectations"] if not e["success"]}
    assert ("expect_column_values_to_not_be_null", ("wnid",)) in kinds
    assert ("expect_column_values_to_be_in_type_list", ("label",)) in kinds
    columns = next(e for e in data["expectations"] if e["type"] == "expect_table_columns_to_match_set")
    assert not columns["success"] and "extra" in columns["detail"]


def test_bad_arguments_raise_one_clear_line():
    manifest, expected = make_manifest()
    with pytest.raises(ValueError, match="manifest lacks column\\(s\\) pixel_hash"):
        validate_manifest(manifest.drop(columns="pixel_hash"), CLASSES, expected, SIZE)
    with pytest.raises(ValueError, match="names wnid\\(s\\) not in classes: n99999999"):
        validate_manifest(manifest, CLASSES, {"train": {"n99999999": 1}}, SIZE)
    with pytest.raises(ValueError, match="unknown split"):
        validate_manifest(manifest, CLASSES, {"test": {}}, SIZE)


def test_any_image_size_passes_when_none_is_expected_but_not_a_zero_size():
    manifest, expected = make_manifest()
    manifest.loc[[0, 5], ["height", "width"]] = [48, 500]  # a user's zip: images of many sizes, resized when stored
    assert validate_manifest(manifest, CLASSES, expected, None).success
    assert failed(validate_manifest(manifest, CLASSES, expected, SIZE)) == [
        ("expect_column_values_to_be_in_set", ("height",)), ("expect_column_values_to_be_in_set", ("width",))]
    manifest.loc[7, "height"] = 0
    assert failed(validate_manifest(manifest, CLASSES, expected, None)) == [
        ("expect_column_values_to_be_between", ("height",))]


def test_archive_sizes_name_the_class_split_and_the_number_of_classes():
    sizes = ArchiveSizes(wnids=3, train_per_class=5, val_per_class=2, image_size=8)
    held = {"train": {w: 5 for w in CLASSES}, "val": {w: 2 for w in CLASSES}}
    report = validate_archive_sizes(held, sizes, name="target")
    assert report.success and {o.table for o in report.outcomes} == {"archive_counts"}
    held["val"][CLASSES[1]] = 1
    held["train"]["n09999999"] = 5  # a fourth class, with no val images
    summary = validate_archive_sizes(held, sizes).summary()
    assert "expect_column_pair_values_to_be_equal(archive_counts.actual, archive_counts.expected): 2 rows" in summary
    assert f"val/{CLASSES[1]}: 1 image, expected 2" in summary and "val/n09999999: 0 images, expected 2" in summary
    assert "expect_column_unique_value_count_to_be_between(archive_counts.wnid): observed 4, expected 3" in summary


def test_read_manifest_keeps_names_as_strings_and_names_a_missing_file(tmp_path):
    from robustlora.errors import DataError

    manifest, _ = make_manifest()
    manifest = manifest.assign(wnid="0042", pixel_hash="00000000000000000000000000000001")  # would parse as numbers
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    back = read_manifest(tmp_path / "manifest.csv")
    assert list(back.columns) == list(MANIFEST_COLUMNS)
    assert (back["wnid"] == "0042").all() and (back["pixel_hash"] == "00000000000000000000000000000001").all()
    with pytest.raises(DataError, match="missing.csv: not found"):
        read_manifest(tmp_path / "missing.csv")
