"""A user's own zip in Tiny ImageNet's layout (other classes, other image counts and sizes) through preprocess and
validate: the counts come from the archive itself; the official sizes apply only to the official zip (by md5)."""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from robustlora.data import dataset as data
from robustlora.data import download
from robustlora.data.dataset import Archive, ArchiveSizes, DataError, expected_counts
from robustlora.errors import ValidationError
from robustlora.data.synthetic import imagenet_wnids
from robustlora.data.validation import validate_domain
from robustlora.io import file_digest

# classes no pretrained head knows (one looks like a number), each with its own train / val counts
OWN = {"n99000001": (7, 4), "my_cats": (5, 2), "0042": (9, 3)}
SIZE = 32  # pixels: not Tiny ImageNet's 64
PARAMS_TEMPLATE = ROOT / "params.yaml"  # the study's params; the fixture points data.* at a user's zip


def make_own_archive(path, counts=OWN, size=SIZE, root="my-data", annotations=None):
    """A Tiny-ImageNet-layout zip with arbitrary wnids, file names, per-class counts and image size.

    annotations: the text of val/val_annotations.txt instead of the right one.
    """
    rng = np.random.default_rng(0)

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(counts) + "\n")  # no words.txt: it is optional
        lines, k = [], 0
        for wnid, (n_train, n_val) in counts.items():
            for i in range(n_train):
                zf.writestr(f"{root}/train/{wnid}/images/photo{i:03d}.jpg", jpeg())
            for _ in range(n_val):
                zf.writestr(f"{root}/val/images/v{k}.jpg", jpeg())
                lines.append(f"v{k}.jpg\t{wnid}\n")
                k += 1
        zf.writestr(f"{root}/val/val_annotations.txt", "".join(lines) if annotations is None else annotations)
    return path


def load_stage(name):
    """A stage module, imported in-process (its `main` is the plain function typer wraps)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own_project(tmp_path, monkeypatch):
    """params.yaml for a user's zip (real-data mode, ImageNet weights, a fresh head) and the zip in raw/."""
    monkeypatch.syspath_prepend(str(ROOT / "stages"))  # the stages import their `_common`
    params = yaml.safe_load(PARAMS_TEMPLATE.read_text())
    params["data"].update(source="tiny-imagenet", url=str(tmp_path / "mine.zip"), classes=3, train_per_class=6,
                          val_per_class=3, holdout=0.2)
    params["model"].update(weights="imagenet", head="new")
    # a fresh head must be trained, so the untrained `none` arm cannot take part (config refuses it)
    params["variants"] = {k: v for k, v in params["variants"].items() if v.get("adaptation") != "none"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "raw").mkdir()
    make_own_archive(tmp_path / "raw" / "tiny-imagenet-200.zip")
    return tmp_path


def preprocess(root):
    load_stage("preprocess").main(params=root / "params.yaml", raw=root / "raw", out=root / "prepared", workers=1)


def validate(root):
    load_stage("validate").main(params=root / "params.yaml", raw=root / "raw", prepared=root / "prepared",
                                out=root / "validation.json")


def _params(root):
    """The fixture's params, parsed."""
    from robustlora.config import load_params

    return load_params(root / "params.yaml")


# what the caps (6 train, 3 val) and holdout 0.2 leave of OWN: train n = min(held, 6), round(0.2 n) to the holdout
PLANNED = {"train": {"0042": 5, "my_cats": 4, "n99000001": 5}, "holdout": {"0042": 1, "my_cats": 1, "n99000001": 1},
           "val": {"0042": 3, "my_cats": 2, "n99000001": 3}}


def test_own_archive_of_any_size_goes_through_preprocess_and_validate(own_project, capsys):
    assert not set(OWN) & set(imagenet_wnids())  # no pretrained head has these (models.adapt_head: model.head new)
    preprocess(own_project)
    validate(own_project)
    result = json.loads((own_project / "validation.json").read_text())
    assert result["success"] is True, capsys.readouterr().out
    assert result["target"]["archive"]["official"] is False  # so no official-size checks ran
    assert {e["table"] for e in result["target"]["expectations"]} == {"class_counts", "manifest"}
    assert "(counts from tiny-imagenet-200.zip; not the official zip)" in capsys.readouterr().out
    manifest = pd.read_csv(own_project / "prepared" / "target" / "manifest.csv", dtype={"wnid": str})
    counts = manifest.groupby(["split", "wnid"]).size().unstack().to_dict(orient="index")
    assert counts == PLANNED
    assert (manifest["height"] == SIZE).all()  # recorded as in the archive; stored at 64 px
    assert json.loads((own_project / "prepared" / "target" / "classes.json").read_text())["wnids"] == sorted(OWN)
    # one function sets both sides: what preprocess cut and what validate expects
    archive = Archive(own_project / "raw" / "tiny-imagenet-200.zip")
    assert expected_counts(archive, sorted(OWN), 6, 3, 0.2) == PLANNED
    assert archive.available() == {"train": {"0042": 9, "my_cats": 5, "n99000001": 7},
                                   "val": {"0042": 3, "my_cats": 2, "n99000001": 4}}


def test_missing_image_in_manifest_names_split_wnid_observed_and_expected(own_project, capsys):
    preprocess(own_project)
    path = own_project / "prepared" / "target" / "manifest.csv"
    manifest = pd.read_csv(path, dtype=str)
    drop = manifest.index[(manifest["split"] == "train") & (manifest["wnid"] == "my_cats")][0]
    manifest.drop(index=drop).to_csv(path, index=False)
    with pytest.raises(ValidationError, match="validation of target failed"):
        validate(own_project)
    summary = capsys.readouterr().out
    assert "validation of target manifest FAILED" in summary
    assert "expect_column_pair_values_to_be_equal(class_counts.actual, class_counts.expected): 1 row, " \
           "e.g. train/my_cats: 3 images, expected 4" in summary
    assert "expect_table_row_count_to_equal(manifest): observed 24, expected 25" in summary
    result = json.loads((own_project / "validation.json").read_text())
    assert result["success"] is False and result["target"]["success"] is False


def test_official_sizes_apply_only_to_the_official_md5(own_project, monkeypatch):
    preprocess(own_project)  # not the official md5, so validate passes (see above)
    archive = own_project / "raw" / "tiny-imagenet-200.zip"
    (domain,) = data.data_domains(_params(own_project), own_project / "raw").values()
    monkeypatch.setattr(download, "TINY_IMAGENET_MD5", file_digest(archive, "md5"))  # now it *is* "the official zip"
    report = validate_domain(domain, own_project / "prepared" / "target")
    assert not report.success and report.archive["official"] is True
    summary = report.summary()
    assert "official Tiny ImageNet sizes checked" in summary
    assert "expect_column_unique_value_count_to_be_between(archive_counts.wnid): observed 3, expected 200" in summary
    counts = next(o for o in report.failures if o.table == "archive_counts" and o.unexpected_count is not None)
    assert counts.unexpected_count == 6  # every class, train and val
    assert "train/0042: 9 images, expected 500" in summary and "val/0042: 3 images, expected 50" in counts.examples
    assert f"expect_column_values_to_be_in_set(height): 25 rows, e.g. train/0 height={SIZE}" in summary


def test_official_archive_with_the_official_sizes_passes_them(own_project, monkeypatch):
    archive = make_own_archive(own_project / "raw" / "tiny-imagenet-200.zip", counts={w: (7, 3) for w in OWN})
    monkeypatch.setattr(download, "TINY_IMAGENET_MD5", file_digest(archive, "md5"))
    monkeypatch.setattr(data, "TINY_IMAGENET", ArchiveSizes(wnids=3, train_per_class=7, val_per_class=3,
                                                            image_size=SIZE))
    preprocess(own_project)
    (domain,) = data.data_domains(_params(own_project), own_project / "raw").values()
    report = validate_domain(domain, own_project / "prepared" / "target")
    assert report.success, report.summary()
    assert {o.table for o in report.outcomes} == {"class_counts", "manifest", "archive_counts"}


def test_bad_val_annotations_name_the_file_or_member(tmp_path):
    archive = Archive(make_own_archive(tmp_path / "a.zip", annotations="v0.jpg\tn99000001\ngone.jpg\tmy_cats\n"))
    with pytest.raises(DataError, match="val_annotations.txt names my-data/val/images/gone.jpg, which is not in"):
        expected_counts(archive, ["my_cats"], None, None, 0.1)
    assert expected_counts(archive, ["n99000001"], None, None, 0.0)["val"] == {"n99000001": 1}  # others unaffected
    path = make_own_archive(tmp_path / "b.zip", annotations="v0.jpg\tn99000001\n\nv1.jpg\n")
    with pytest.raises(DataError, match=r"b.zip: my-data/val/val_annotations.txt line 3: expected"):
        Archive(path)


def test_missing_manifest_is_one_line(own_project):
    (domain,) = data.data_domains(_params(own_project), own_project / "raw").values()
    with pytest.raises(DataError, match=r"prepared/target/manifest.csv: not found \(run the preprocess stage first\)"):
        validate_domain(domain, own_project / "prepared" / "target")
