import hashlib
import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robustlora.data.dataset import Archive, DataError, expected_counts, load_classes, load_split, prepare_domain
from robustlora.config import SyntheticConfig
from robustlora.data.synthetic import class_specs, imagenet_wnids, make_synthetic

WNIDS = ["n01443537", "n01629819", "n01641577"]


def _jpeg(mode: str, size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_archive(path, *, train=4, val=2, corrupt=None, modes=("RGB", "L", "CMYK"), root="tiny-imagenet-200",
                 sizes=None):
    """A small archive in Tiny ImageNet's layout: grayscale and CMYK images, val boxes, optional corrupt member."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(reversed(WNIDS)) + "\n")
        zf.writestr(f"{root}/words.txt", "".join(f"{w}\tthing {i}\n" for i, w in enumerate(WNIDS)))
        k = 0
        for w in WNIDS:
            for i in range(train):
                name = f"{root}/train/{w}/images/{w}_{i}.JPEG"
                zf.writestr(name, b"not a jpeg" if name == corrupt else _jpeg(modes[k % len(modes)], seed=k,
                                                                                 size=(sizes or {}).get(name, 64)))
                k += 1
            zf.writestr(f"{root}/train/{w}/{w}_boxes.txt", "".join(f"{w}_{i}.JPEG\t0\t0\t10\t10\n" for i in range(train)))
        lines = []
        for j in range(val * len(WNIDS)):
            zf.writestr(f"{root}/val/images/val_{j}.JPEG", _jpeg(modes[j % len(modes)], seed=1000 + j))
            lines.append(f"val_{j}.JPEG\t{WNIDS[j % len(WNIDS)]}\t1\t2\t30\t40\n")
        zf.writestr(f"{root}/val/val_annotations.txt", "".join(lines))
        zf.writestr(f"{root}/test/images/test_0.JPEG", _jpeg("RGB", seed=9999))
    return path


def test_prepare_decodes_grayscale_and_cmyk_and_builds_splits(tmp_path):
    archive = make_archive(tmp_path / "a.zip")
    out = tmp_path / "prepared"
    manifest = prepare_domain(archive, out, classes=3, train_per_class=None, val_per_class=None, holdout=0.25,
                              workers=1, progress=False)
    assert list(manifest.columns) == ["split", "index", "label", "wnid", "member", "height", "width", "channels",
                                      "mode", "pixel_hash"]
    assert manifest.groupby("split").size().to_dict() == {"train": 9, "holdout": 3, "val": 6}
    assert set(manifest["mode"]) == {"RGB", "L", "CMYK"}
    assert (manifest["channels"] == 3).all() and (manifest["height"] == 64).all()
    assert load_classes(out) == sorted(WNIDS)  # sorted, whatever the order of wnids.txt
    # labels follow the class list; val labels come from val_annotations.txt (which has box columns)
    assert (manifest["wnid"] == manifest["label"].map(dict(enumerate(sorted(WNIDS))))).all()
    val = load_split(out, "val")
    assert val.images.shape == (6, 64, 64, 3) and val.images.dtype.__str__() == "torch.uint8"
    assert val.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # the stored pixels are the decoded image: grayscale replicated into 3 equal channels, hash matches
    gray = manifest[(manifest["split"] == "val") & (manifest["mode"] == "L")].iloc[0]
    pixels = val.images[gray["index"]].numpy()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest() == gray["pixel_hash"]
    with zipfile.ZipFile(archive) as zf:
        ref = np.asarray(Image.open(io.BytesIO(zf.read(gray["member"]))).convert("RGB"))
    assert (ref == pixels).all()
    assert pd.read_csv(out / "manifest.csv").shape == manifest.shape


def test_parallel_decoding_gives_identical_output(tmp_path, monkeypatch):
    import robustlora.data.dataset as data

    archive = make_archive(tmp_path / "a.zip", train=6)
    m1 = prepare_domain(archive, tmp_path / "one", classes=3, train_per_class=None, val_per_class=None, holdout=0.2,
                        workers=1, progress=False)
    monkeypatch.setattr(data, "DECODE_CHUNK", 4)  # several chunks over two worker processes
    m2 = prepare_domain(archive, tmp_path / "two", classes=3, train_per_class=None, val_per_class=None, holdout=0.2,
                        workers=2, progress=False)
    pd.testing.assert_frame_equal(m1, m2)
    assert (load_split(tmp_path / "one", "train").images == load_split(tmp_path / "two", "train").images).all()


def test_caps_holdout_and_class_selection(tmp_path):
    archive = make_archive(tmp_path / "a.zip", train=10, val=4)
    m = prepare_domain(archive, tmp_path / "p", classes=("n01641577", "n01443537"), train_per_class=5,
                       val_per_class=3, holdout=0.2, seed=1, workers=1, progress=False)
    counts = m.groupby(["split", "wnid"]).size().unstack().to_dict(orient="index")
    assert counts == {"holdout": {"n01443537": 1, "n01641577": 1}, "train": {"n01443537": 4, "n01641577": 4},
                      "val": {"n01443537": 3, "n01641577": 3}}
    assert expected_counts(Archive(archive), ["n01443537", "n01641577"], 5, 3, 0.2) == {
        "train": {"n01443537": 4, "n01641577": 4}, "holdout": {"n01443537": 1, "n01641577": 1},
        "val": {"n01443537": 3, "n01641577": 3}}
    # the seed picks which images the cap keeps; the same seed picks the same ones
    again = prepare_domain(archive, tmp_path / "q", classes=("n01641577", "n01443537"), train_per_class=5,
                           val_per_class=3, holdout=0.2, seed=1, workers=1, progress=False)
    other = prepare_domain(archive, tmp_path / "r", classes=("n01641577", "n01443537"), train_per_class=5,
                           val_per_class=3, holdout=0.2, seed=2, workers=1, progress=False)
    assert list(again["member"]) == list(m["member"])
    assert set(other["member"]) != set(m["member"])


def test_corrupt_jpeg_names_the_member_and_leaves_nothing(tmp_path):
    bad = "tiny-imagenet-200/train/n01629819/images/n01629819_2.JPEG"
    archive = make_archive(tmp_path / "a.zip", corrupt=bad)
    with pytest.raises(DataError, match=f"corrupt image {bad}"):
        prepare_domain(archive, tmp_path / "p", classes=3, train_per_class=None, val_per_class=None, holdout=0.25,
                       workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_unknown_class_and_bad_archives(tmp_path):
    archive = Archive(make_archive(tmp_path / "a.zip"))
    with pytest.raises(DataError, match="wnid n09999999 is not in"):
        archive.select_classes(("n09999999",))
    with pytest.raises(DataError, match="asks for 5 classes but"):
        archive.select_classes(5)
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a zip archive"):
        Archive(tmp_path / "x.zip")
    with pytest.raises(DataError, match="archive not found"):
        Archive(tmp_path / "missing.zip")


def test_unsafe_member_names_are_refused(tmp_path):
    path = make_archive(tmp_path / "a.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("tiny-imagenet-200/../../evil.txt", "x")
    with pytest.raises(ValueError, match="evil.txt"):
        Archive(path)


def test_odd_sized_image_is_resized_but_recorded(tmp_path):
    odd = "tiny-imagenet-200/train/n01443537/images/n01443537_1.JPEG"
    archive = make_archive(tmp_path / "a.zip", sizes={odd: 48})
    m = prepare_domain(archive, tmp_path / "p", classes=3, train_per_class=None, val_per_class=None, holdout=0.0,
                       workers=1, progress=False)
    row = m[m["member"] == odd].iloc[0]
    assert (row["height"], row["width"]) == (48, 48)  # validation flags it; the array still stacks
    assert load_split(tmp_path / "p", "train").images.shape[1:] == (64, 64, 3)


def test_synthetic_archives_have_tiny_imagenet_layout_and_are_deterministic(tmp_path):
    cfg = SyntheticConfig(source_classes=5, target_classes=3, source_train_per_class=4, source_val_per_class=2,
                          target_train_per_class=3, target_val_per_class=2, test_images=2, image_size=32)
    paths = make_synthetic(cfg, tmp_path / "one", progress=False)
    again = make_synthetic(cfg, tmp_path / "two", progress=False)
    for key in ("source", "target"):
        assert paths[key].read_bytes() == again[key].read_bytes()
    with zipfile.ZipFile(paths["target"]) as zf:
        names = zf.namelist()
        wnids = zf.read("tiny-imagenet-200/wnids.txt").decode().split()
        ann = zf.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()
    assert len(wnids) == 3 and set(wnids) <= set(imagenet_wnids())
    w = wnids[0]
    assert f"tiny-imagenet-200/train/{w}/images/{w}_0.JPEG" in names
    assert f"tiny-imagenet-200/train/{w}/{w}_boxes.txt" in names
    assert "tiny-imagenet-200/test/images/test_0.JPEG" in names
    assert len(ann) == 6 and all(len(line.split("\t")) == 6 for line in ann)
    # the target classes are a subset of the source classes
    with zipfile.ZipFile(paths["source"]) as zf:
        source_wnids = zf.read("synthetic-source/wnids.txt").decode().split()
    assert set(wnids) < set(source_wnids)
    # one reader serves both: the synthetic target prepares like Tiny ImageNet
    m = prepare_domain(paths["target"], tmp_path / "p", classes=3, train_per_class=None, val_per_class=None,
                       holdout=0.0, workers=1, progress=False)
    assert len(m) == 3 * 3 + 6 and m["pixel_hash"].is_unique


def test_class_specs_share_attributes_but_are_distinct():
    specs = class_specs(16, seed=0)
    combos = {(s.shape, s.texture, s.hue) for s in specs}
    assert len(combos) == 16
    # no single attribute identifies a class
    assert len({s.shape for s in specs}) < 16 and len({s.hue for s in specs}) < 16


def test_data_domains_follow_the_params(tmp_path):
    import yaml

    from conftest import ROOT
    from robustlora.config import parse_params
    from robustlora.data.dataset import data_domains

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    synthetic = data_domains(parse_params(raw), tmp_path)
    assert set(synthetic) == {"target", "source"}
    assert synthetic["source"].archive == tmp_path / "source.zip"
    size = raw["data"]["synthetic"]["image_size"]
    assert (synthetic["source"].image_size, synthetic["source"].archive_image_size) == (size, size)
    assert (synthetic["target"].holdout, synthetic["target"].seed) == (raw["data"]["holdout"], raw["data"]["seed"])
    raw["data"]["source"], raw["model"]["weights"] = "tiny-imagenet", "imagenet"
    raw["data"]["train_per_class"], raw["data"]["val_per_class"] = 7, 3
    tiny = data_domains(parse_params(raw), tmp_path)
    assert set(tiny) == {"target"}
    t = tiny["target"]
    # a real-data zip may hold any image size (it is resized to 64 px); its counts are read from the archive itself
    assert (t.archive.name, t.train_per_class, t.val_per_class, t.image_size, t.archive_image_size) == (
        "tiny-imagenet-200.zip", 7, 3, 64, None)
