"""Reading a Tiny-ImageNet-layout archive into compact uint8 arrays, a class list and a manifest.

Layout of a prepared domain folder (written by :func:`prepare_domain`, read by :func:`load_split`)::

    classes.json                         wnids (label i <-> classes[i]) and their words
    {train,holdout,val}_images.npy       uint8, N x H x W x 3
    {train,holdout,val}_labels.npy       int64, N
    manifest.csv                         one row per image: split, index, label, wnid, member, height, width,
                                         channels, mode, pixel_hash
    info.json                            what was selected and how many images each split holds
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from robustlora import layout
from robustlora.errors import DataError
from robustlora.io import read_json, reserve, write_json

if TYPE_CHECKING:  # torch and pandas only where used: the stages that load a split start without pandas, preprocess
    import pandas as pd  # and validate without torch (start-up, benchmarks/bench_startup.py)
    import torch

    from robustlora.config import Params

DECODE_CHUNK = 512  # images per worker task
_worker_zip: zipfile.ZipFile | None = None  # a decoding process's open archive


@dataclass(frozen=True)
class Item:
    split: str
    label: int
    wnid: str
    member: str


class Archive:
    """A Tiny-ImageNet-layout zip, read in place (no extraction).

    Training images are the members ``<root>/train/<wnid>/images/*``; val images and their labels are the lines
    ``<image>\t<wnid>...`` of ``<root>/val/val_annotations.txt`` (the image lies at ``<root>/val/images/<image>``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from robustlora.data.download import check_zip_members  # refuses absolute and ../ member names

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: archive not found (run the download stage first)")
        if not zipfile.is_zipfile(self.path):
            raise DataError(f"{self.path}: not a zip archive")
        try:
            check_zip_members(self.path)
        except ValueError as e:
            raise DataError(str(e)) from None
        with zipfile.ZipFile(self.path) as zf:
            self.names = zf.namelist()
            roots = [n[: -len("wnids.txt")] for n in self.names if n.endswith("wnids.txt") and n.count("/") <= 1]
            if len(roots) != 1:
                raise DataError(f"{self.path}: expected one wnids.txt at the top (Tiny ImageNet layout), found {len(roots)}")
            self.root = roots[0]
            self.wnids = self._read(zf, "wnids.txt").split()
            words = self._read(zf, "words.txt", missing_ok=True)
            self.val_annotations = self._read(zf, "val/val_annotations.txt")
        self.words = dict(line.split("\t", 1) for line in words.splitlines() if "\t" in line)
        self.train_members = self._train_members()
        self.val_labels = self._val_labels()

    def _read(self, zf: zipfile.ZipFile, name: str, missing_ok: bool = False) -> str:
        try:
            return zf.read(self.root + name).decode("utf-8")
        except KeyError:
            if missing_ok:
                return ""
            raise DataError(f"{self.path}: missing {self.root + name} (not Tiny ImageNet's layout)") from None

    def _train_members(self) -> dict[str, list[str]]:
        """wnid -> its training images (members ``train/<wnid>/images/*``) in natural order."""
        by_class: dict[str, list[str]] = {}
        for n in self.names:
            parts = n[len(self.root):].split("/") if n.startswith(self.root) else []
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[1] and parts[3]:
                by_class.setdefault(parts[1], []).append(n)
        return {w: sorted(members, key=_natural) for w, members in by_class.items()}

    def _val_labels(self) -> list[tuple[str, str]]:
        """(member, wnid) of every val image, in the order of val/val_annotations.txt."""
        where = f"{self.path}: {self.root}val/val_annotations.txt"
        out = []
        for number, line in enumerate(self.val_annotations.splitlines(), start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) < 2 or not fields[0] or not fields[1]:
                raise DataError(f"{where} line {number}: expected '<image>\\t<wnid>', got {line[:80]!r}")
            out.append((f"{self.root}val/images/{fields[0]}", fields[1]))
        return out

    def available(self) -> dict[str, dict[str, int]]:
        """Images the archive holds per class: {"train": {wnid: n}, "val": {wnid: n}}, every wnid it names."""
        val = Counter(wnid for _, wnid in self.val_labels)
        wnids = sorted(set(self.wnids) | set(self.train_members) | set(val))
        return {"train": {w: len(self.train_members.get(w, ())) for w in wnids}, "val": {w: val[w] for w in wnids}}

    def select_classes(self, classes: int | tuple[str, ...]) -> list[str]:
        """``classes`` = the first N wnids in sorted order, or an explicit list (kept in sorted order)."""
        available = sorted(self.wnids)
        if isinstance(classes, int):
            if classes > len(available):
                raise DataError(f"data.classes asks for {classes} classes but {self.path} has {len(available)}")
            return available[:classes]
        missing = [w for w in classes if w not in available]
        if missing:
            raise DataError(f"data.classes: wnid {missing[0]} is not in {self.path} (it has {len(available)} classes, e.g. {available[0]})")
        return sorted(classes)

    def items(self, classes: list[str], train_per_class: int | None, val_per_class: int | None,
              holdout: float, seed: int) -> list[Item]:
        """Train / holdout / val items of the selected classes, as many as :func:`expected_counts` says,
        deterministic for a seed: the seed shuffles each class's training images before the cap and the holdout."""
        counts = expected_counts(self, classes, train_per_class, val_per_class, holdout)
        label_of = {w: i for i, w in enumerate(classes)}
        rng = np.random.default_rng(seed)
        out: list[Item] = []
        for wnid in classes:
            members, n_hold = self.train_members[wnid], counts["holdout"][wnid]
            members = [members[i] for i in rng.permutation(len(members))][: n_hold + counts["train"][wnid]]
            out += [Item("holdout", label_of[wnid], wnid, m) for m in sorted(members[:n_hold], key=_natural)]
            out += [Item("train", label_of[wnid], wnid, m) for m in sorted(members[n_hold:], key=_natural)]
        left = dict(counts["val"])  # the val cap keeps each class's first images in annotation order
        for member, wnid in self.val_labels:
            if left.get(wnid, 0) > 0:
                left[wnid] -= 1
                out.append(Item("val", label_of[wnid], wnid, member))
        return out


def expected_counts(archive: Archive, classes: list[str], train_per_class: int | None, val_per_class: int | None,
                    holdout: float) -> dict[str, dict[str, int]]:
    """Images per split and class that preprocessing keeps and validation expects: {split: {wnid: n}}.

    Counted in the archive itself: a class keeps n = min(its training images, train_per_class), of which
    round(n * holdout) form the holdout split and the rest the train split, and min(its val images, val_per_class)
    val images. The one place this arithmetic lives (:meth:`Archive.items` cuts by it).
    """
    present = set(archive.names)
    val = {w: 0 for w in classes}
    for member, wnid in archive.val_labels:
        if wnid in val:
            if member not in present:  # decoding would fail later with a bare KeyError
                raise DataError(f"{archive.path}: {archive.root}val/val_annotations.txt names {member}, "
                                "which is not in the archive")
            val[wnid] += 1
    from robustlora.data.manifest import SPLITS  # (pandas)

    out: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for wnid in classes:
        n = len(archive.train_members.get(wnid, ()))
        if not n:
            raise DataError(f"{archive.path}: no training images for class {wnid} "
                            f"under {archive.root}train/{wnid}/images/")
        n = min(n, train_per_class or n)
        n_hold = int(round(n * holdout))
        out["train"][wnid], out["holdout"][wnid] = n - n_hold, n_hold
        out["val"][wnid] = min(val[wnid], val_per_class or val[wnid])
    return out


def _natural(name: str) -> tuple:
    """Sort key 'x_2.JPEG' < 'x_10.JPEG'."""
    stem = name.rsplit("/", 1)[-1].split(".")[0]
    head, _, tail = stem.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (stem, -1)


def decode_image(data: bytes, member: str, size: int) -> tuple[np.ndarray, int, int, str]:
    """JPEG bytes -> (uint8 size x size x 3 RGB, original height, original width, original mode).

    Grayscale and CMYK JPEGs are converted to RGB (Tiny ImageNet contains grayscale images). An image of another size
    is resized so the arrays stack; the manifest keeps its original size, and validation flags it.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, (w, h) = im.mode, im.size
            rgb = im.convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"corrupt image {member}: {e}") from None
    if (h, w) != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), h, w, mode


def _open_worker_zip(archive: str) -> None:
    """Pool initializer: open the archive once per process (reading a 110k-member directory takes ~0.6 s)."""
    global _worker_zip
    _worker_zip = zipfile.ZipFile(archive)


def _decode_chunk(args: tuple, zf: zipfile.ZipFile | None = None) -> list[tuple[int, int, str, str]]:
    """Worker: decode members[start:stop] into the memory-mapped output arrays; returns their metadata.

    ``zf``: the open archive; by default this process's (see :func:`_open_worker_zip`), else it is opened here.
    """
    archive, members, out_paths, offsets, size = args
    if zf is None and _worker_zip is None:
        with zipfile.ZipFile(archive) as own:
            return _decode_chunk(args, own)
    zf = zf or _worker_zip
    meta = []
    arrays = {p: np.load(p, mmap_mode="r+") for p in set(out_paths)}
    for member, path, row in zip(members, out_paths, offsets):
        try:
            pixels, h, w, mode = decode_image(_read_member(zf, member), member, size)
        except DataError as e:  # the archive's name too: the worker's line is all the stage prints
            raise DataError(f"{archive}: {e}") from None
        arrays[path][row] = pixels
        meta.append((h, w, mode, hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()))
    for a in arrays.values():
        a.flush()
    return meta


def _read_member(zf: zipfile.ZipFile, member: str) -> bytes:
    """The bytes of one archive member; a damaged one (bad CRC, cut short) is a DataError naming it."""
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"corrupt member {member}: {' '.join(str(e).split()) or type(e).__name__}") from None


def prepare_domain(archive_path: str | os.PathLike, out_dir: str | os.PathLike, *, classes: int | tuple[str, ...],
                   train_per_class: int | None, val_per_class: int | None, holdout: float, seed: int = 0,
                   image_size: int = 64, workers: int | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Decode the selected classes of an archive into ``out_dir`` (atomically: a temp folder renamed at the end).

    Returns the manifest. A corrupt image stops everything with an error naming the archive member.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from robustlora.data.manifest import MANIFEST_COLUMNS, SPLITS

    archive = Archive(archive_path)
    wnids = archive.select_classes(classes)
    items = archive.items(wnids, train_per_class, val_per_class, holdout, seed)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows, jobs = [], []
        for split in SPLITS:
            split_items = [it for it in items if it.split == split]
            path, labels_path = layout.split_arrays(tmp, split)
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(split_items), image_size, image_size, 3)).flush()
            reserve(path, shown=out_dir / path.name)  # the decoders write through memory maps: no room is an error now
            np.save(labels_path, np.array([it.label for it in split_items], dtype=np.int64))
            for i, it in enumerate(split_items):
                rows.append((split, i, it.label, it.wnid, it.member))
                jobs.append((it.member, str(path), i))
        meta = _run_decode(archive.path, jobs, image_size, workers, tqdm(total=len(jobs), desc=f"decode {archive.path.name}", unit="img", disable=None if progress is None else not progress))
        manifest = pd.DataFrame(
            [r + m[:2] + (3,) + m[2:] for r, m in zip(rows, meta)],
            columns=list(MANIFEST_COLUMNS),
        )
        manifest.to_csv(tmp / layout.MANIFEST, index=False)
        write_json(tmp / layout.CLASSES, {"wnids": wnids, "words": [archive.words.get(w, "") for w in wnids]})
        counts = manifest.groupby("split").size().reindex(list(SPLITS), fill_value=0)
        write_json(tmp / layout.DATA_INFO, {
            "archive": archive.path.name, "image_size": image_size, "classes": len(wnids),
            "counts": {k: int(v) for k, v in counts.items()},
            "grayscale_images": int((manifest["mode"] == "L").sum()),
        })
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)  # swap: there is always a complete folder at out_dir or at .old
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _run_decode(archive: Path, jobs: list[tuple[str, str, int]], size: int, workers: int | None, bar) -> list:
    workers = workers or min(os.cpu_count() or 1, 8)
    chunk = DECODE_CHUNK
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    args = [(str(archive), [j[0] for j in c], [j[1] for j in c], [j[2] for j in c], size) for c in chunks]
    meta: list = []
    if workers <= 1 or len(chunks) <= 1:
        with zipfile.ZipFile(archive) as zf:
            for a in args:
                meta += _decode_chunk(a, zf)
                bar.update(len(a[1]))
    else:
        with ProcessPoolExecutor(workers, initializer=_open_worker_zip, initargs=(str(archive),)) as pool:
            try:
                for a, m in zip(args, pool.map(_decode_chunk, args)):
                    meta += m
                    bar.update(len(a[1]))
            except BaseException:  # a corrupt member: the chunks not yet started are not decoded for nothing
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return meta


# --- reading prepared data -------------------------------------------------------------------------------------------


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x H x W x 3
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


def load_split(prepared_dir: str | os.PathLike, split: str) -> Split:
    """One split of a prepared domain as tensors (uint8 NHWC images, int64 labels)."""
    import torch

    d = Path(prepared_dir)
    img, lab = layout.split_arrays(d, split)
    for p in (img, lab):
        if not p.exists():
            raise DataError(f"{p}: not found (run the preprocess stage first)")
    images = torch.from_numpy(np.load(img))
    labels = torch.from_numpy(np.load(lab))
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise DataError(f"{img}: expected N x H x W x 3 images matching {lab.name}, got {tuple(images.shape)}")
    return Split(images, labels)


def load_classes(prepared_dir: str | os.PathLike) -> list[str]:
    return list(read_json(Path(prepared_dir) / layout.CLASSES)["wnids"])


@dataclass(frozen=True)
class ArchiveSizes:
    """What a known archive holds: its number of classes, images per class, and image size."""

    wnids: int
    train_per_class: int
    val_per_class: int
    image_size: int  # pixels (height = width)


# The official Tiny ImageNet zip; checked only for the archive whose md5 is download.TINY_IMAGENET_MD5
TINY_IMAGENET = ArchiveSizes(wnids=200, train_per_class=500, val_per_class=50, image_size=64)


def official_sizes(md5: str) -> ArchiveSizes | None:
    """Tiny ImageNet's sizes when ``md5`` is the official archive's; None for any other zip (a subset, own classes)."""
    from robustlora.data import download  # looked up at call time, so tests can stand in an archive of their own

    return TINY_IMAGENET if md5.lower() == download.TINY_IMAGENET_MD5.lower() else None


@dataclass(frozen=True)
class Domain:
    """One prepared dataset: its archive and what the params select from it (classes, caps, holdout)."""

    name: str  # "target" (Tiny ImageNet, a user's zip in its layout, or its stand-in) or "source" (pretraining)
    archive: Path
    classes: int | tuple[str, ...]
    train_per_class: int | None  # caps; None = every image the archive holds
    val_per_class: int | None
    holdout: float  # share of each class's kept training images that form the holdout split
    seed: int  # which training images the cap and the holdout pick
    image_size: int  # pixels of the stored arrays (every image is resized to it)
    archive_image_size: int | None  # pixels every image in the archive has; None = any (a user's zip, resized)


def data_domains(p: Params, raw_dir: Path) -> dict[str, Domain]:
    """The domains the data stages prepare: the target, plus the source when model.weights is 'pretrain'.

    Image counts are not promised here: :func:`expected_counts` reads them from each archive.
    """
    d, syn = p.data, p.data.synthetic
    target_size = syn.image_size if d.source == "synthetic" else TINY_IMAGENET.image_size
    # a synthetic archive is drawn at synthetic.image_size; a user's own zip may hold any size
    target = Domain("target", raw_dir / layout.TARGET_ARCHIVE, d.classes, d.train_per_class, d.val_per_class,
                    d.holdout, d.seed, target_size, syn.image_size if d.source == "synthetic" else None)
    out = {"target": target}
    if p.model.weights == "pretrain":
        out["source"] = Domain("source", raw_dir / layout.SOURCE_ARCHIVE, syn.source_classes, None, None, d.holdout,
                               d.seed, syn.image_size, syn.image_size)
    return out
