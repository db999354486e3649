"""An offline miniature of the study's data: a source domain and a shifted target domain.

The study adapts an ImageNet-pretrained ResNet18 to Tiny ImageNet, whose 200 classes are ImageNet-1k classes seen
at 64 px. Offline we build the same structure:

- a *source* domain (the stand-in for ImageNet, used to pretrain the backbone) with K classes, and
- a *target* domain (the stand-in for Tiny ImageNet) whose classes are the first N source classes, drawn with a
  visible domain shift (hue rotation, lower saturation and contrast, blur, sensor noise, smaller objects, stronger
  JPEG compression), so a pretrained but unadapted model is measurably worse on it than an adapted one.

A class is a combination of shape, fill texture, texture orientation and colour; every image adds nuisance (position,
scale, rotation, background gradient, clutter strokes, noise), so a CNN has to learn features, not a pixel statistic.
Class ids are real ImageNet wnids, so the ImageNet head-slicing logic serves both worlds. Both domains are written as
zip archives in exactly Tiny ImageNet's layout (``wnids.txt``, ``words.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG``,
``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG``, ``val/val_annotations.txt``, ``test/images/``), so one
reader handles everything. Generation is deterministic: the same settings give byte-identical archives.
"""

from __future__ import annotations

import colorsys
import io
import zipfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from robustlora import layout
from robustlora.io import atomic_path

if TYPE_CHECKING:
    from robustlora.config import SyntheticConfig

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon")
TEXTURES = ("solid", "stripes", "checker", "dots")
HUES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps -> byte-identical archives for a seed


@dataclass(frozen=True)
class DomainStyle:
    """How a domain draws its images; ``shift`` = 0 is the source domain's look."""

    hue_shift: float = 0.0  # rotation of every hue, in turns (0.1 = 36 degrees)
    saturation: float = 1.0  # factor on object colour saturation
    contrast: float = 1.0  # factor on the image's contrast around mid grey
    blur: float = 0.0  # Gaussian blur radius in pixels
    noise: float = 0.03  # std of additive Gaussian noise, [0,1] pixel units
    scale: float = 1.0  # factor on object size
    jpeg_quality: int = 90

    @classmethod
    def target(cls, shift: float) -> "DomainStyle":
        """The target domain's look at shift strength ``shift`` (1.0 = the default miniature)."""
        # a hue rotation moves every class colour towards its neighbour's: information-preserving (an adapted model
        # can undo it), but it misleads a model that learned "red circle" on the source; plus milder sensor changes
        return cls(
            hue_shift=0.125 * shift,
            saturation=1.0 - 0.2 * shift,
            contrast=1.0 - 0.2 * shift,
            blur=0.3 * shift,
            noise=0.03 + 0.01 * shift,
            scale=1.0 - 0.1 * shift,
            jpeg_quality=int(round(90 - 10 * shift)),
        )


@dataclass(frozen=True)
class ClassSpec:
    wnid: str
    shape: str
    texture: str
    hue: str
    angle: float  # texture orientation, radians

    @property
    def words(self) -> str:
        return f"{self.hue} {self.texture} {self.shape} ({int(round(np.degrees(self.angle)))} deg)"


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in torchvision's class-index order."""
    text = resources.files("robustlora.data").joinpath("imagenet1k_wnids.txt").read_text()
    return text.split()


def class_specs(n_classes: int, seed: int) -> list[ClassSpec]:
    """``n_classes`` distinct classes; each attribute value is shared by several classes, so no single cue suffices.

    Up to 64 classes, no two share both shape and hue: those two survive the downscaling to a small ``input_size``
    (a fine texture may not), so every class stays recognisable there; texture and its orientation add cues.
    """
    combos = len(SHAPES) * len(TEXTURES) * len(HUES)
    if not 1 <= n_classes <= combos:
        raise ValueError(f"synthetic classes must be in [1, {combos}], got {n_classes}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(combos)
    pairs = len(SHAPES) * len(HUES)
    seen: set[tuple[int, int]] = set()
    picks = []
    for p in order:  # first the combos with a new (shape, hue) pair, then (beyond 64 classes) the rest
        shape, rest = divmod(int(p), len(TEXTURES) * len(HUES))
        if (shape, rest % len(HUES)) not in seen or len(seen) == pairs:
            seen.add((shape, rest % len(HUES)))
            picks.append(int(p))
        if len(picks) == n_classes:
            break
    picks += [int(p) for p in order if int(p) not in picks][: n_classes - len(picks)]
    wnids = sorted(rng.choice(imagenet_wnids(), size=n_classes, replace=False).tolist())
    specs = []
    for wnid, p in zip(wnids, picks):
        shape, rest = divmod(int(p), len(TEXTURES) * len(HUES))
        texture, hue = divmod(rest, len(HUES))
        angle = float(rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]))
        specs.append(ClassSpec(wnid, SHAPES[shape], TEXTURES[texture], HUES[hue], angle))
    return specs


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft mask of a unit-size shape on object-frame coordinates (u, v), radius ~1."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)

    def polygon(n: int, phase: float = 0.0) -> np.ndarray:
        # distance to a regular n-gon boundary, in units of its circumradius
        t = np.mod(theta + phase, 2 * np.pi / n) - np.pi / n
        return r * np.cos(t) / np.cos(np.pi / n)

    if shape == "circle":
        d = r
    elif shape == "square":
        d = np.maximum(np.abs(u), np.abs(v)) * 1.15
    elif shape == "triangle":
        d = polygon(3, np.pi / 2) * 0.85
    elif shape == "cross":
        arm = np.minimum(np.abs(u), np.abs(v))
        d = np.where(arm < 0.35, np.maximum(np.abs(u), np.abs(v)), 9.0)
    elif shape == "ring":
        d = np.where(r > 0.55, r, 9.0)
    elif shape == "diamond":
        d = (np.abs(u) + np.abs(v)) * 0.9
    elif shape == "star":
        d = r / (0.65 + 0.35 * np.cos(5 * theta))
    elif shape == "hexagon":
        d = polygon(6)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip((1.0 - d) * 12.0, 0.0, 1.0)  # ~1/12 radius anti-aliased edge


def _texture(texture: str, u: np.ndarray, v: np.ndarray, angle: float, phase: float) -> np.ndarray:
    """Texture intensity in [0,1] on object-frame coordinates."""
    a = u * np.cos(angle) + v * np.sin(angle)
    b = -u * np.sin(angle) + v * np.cos(angle)
    if texture == "solid":
        return np.ones_like(u)
    if texture == "stripes":
        return (np.sin(a * 9.0 + phase) > 0).astype(np.float64)
    if texture == "checker":
        return ((np.floor(a * 3.0 + phase) + np.floor(b * 3.0)) % 2 == 0).astype(np.float64)
    if texture == "dots":
        return ((np.mod(a * 3.0 + phase, 1.0) - 0.5) ** 2 + (np.mod(b * 3.0, 1.0) - 0.5) ** 2 < 0.09).astype(np.float64)
    raise ValueError(f"unknown texture {texture!r}")


def _rgb(hue_name: str, hue_shift: float, saturation: float, value: float) -> np.ndarray:
    hue = HUES.index(hue_name) / len(HUES) + hue_shift
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def render(spec: ClassSpec, style: DomainStyle, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image (uint8 HxWx3) of class ``spec`` and its object box (x0, y0, x1, y1)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # background: a gentle gradient between two dull colours, plus clutter strokes
    c0, c1 = rng.uniform(0.2, 0.8, size=(2, 3))
    g = rng.uniform(-1, 1, size=2)
    t = np.clip(((xs - size / 2) * g[0] + (ys - size / 2) * g[1]) / size + 0.5, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(rng.integers(0, 3)):
        p, q = rng.uniform(0, size, size=2), rng.uniform(-1, 1, size=2)
        dist = np.abs((xs - p[0]) * q[1] - (ys - p[1]) * q[0]) / (np.hypot(*q) + 1e-9)
        img = np.where((dist < rng.uniform(0.6, 1.5))[..., None], rng.uniform(0, 1, size=3), img)

    # the object: class shape x class texture x class colour, with nuisance pose
    radius = size * rng.uniform(0.24, 0.34) * style.scale
    cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
    rot = rng.uniform(-0.35, 0.35)
    du, dv = (xs - cx) / radius, (ys - cy) / radius
    u = du * np.cos(rot) + dv * np.sin(rot)
    v = -du * np.sin(rot) + dv * np.cos(rot)
    mask = _shape_mask(spec.shape, u, v)[..., None]
    tex = _texture(spec.texture, u, v, spec.angle, rng.uniform(0, 2 * np.pi))[..., None]
    hue_jitter = rng.uniform(-0.02, 0.02)
    sat = np.clip(rng.uniform(0.75, 1.0) * style.saturation, 0, 1)
    fg = _rgb(spec.hue, style.hue_shift + hue_jitter, sat, rng.uniform(0.75, 1.0))
    fill = fg * (0.35 + 0.65 * tex) + 0.1 * (1 - tex)  # texture as light/dark modulation of the class colour
    img = img * (1 - mask) + fill * mask

    img = 0.5 + (img - 0.5) * style.contrast * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    img = np.clip(img + rng.normal(0, style.noise, size=img.shape), 0, 1)
    out = (img * 255 + 0.5).astype(np.uint8)
    if style.blur > 0:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(style.blur)))
    box = tuple(int(np.clip(c, 0, size - 1)) for c in (cx - radius, cy - radius, cx + radius, cy + radius))
    return out, box  # type: ignore[return-value]


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _ArchiveWriter:
    """Writes members under one root folder with fixed timestamps (deterministic bytes)."""

    def __init__(self, zf: zipfile.ZipFile, root: str) -> None:
        self.zf, self.root = zf, root

    def add(self, name: str, data: bytes | str, compress: bool = False) -> None:
        info = zipfile.ZipInfo(f"{self.root}/{name}", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self.zf.writestr(info, data)


def write_domain_archive(
    path: Path,
    specs: list[ClassSpec],
    style: DomainStyle,
    *,
    train_per_class: int,
    val_per_class: int,
    test_images: int = 0,
    image_size: int = 64,
    seed: int = 0,
    root: str = "tiny-imagenet-200",
    progress: bool | None = None,
) -> Path:
    """Write one domain as a zip in Tiny ImageNet's layout; atomic, deterministic for a seed."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    total = len(specs) * (train_per_class + val_per_class) + test_images
    bar = tqdm(total=total, desc=f"synthesise {Path(path).name}", unit="img", disable=_quiet(progress))
    with atomic_path(path, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w") as zf:
        out = _ArchiveWriter(zf, root)
        out.add("wnids.txt", "".join(f"{s.wnid}\n" for s in specs), compress=True)
        out.add("words.txt", "".join(f"{s.wnid}\t{s.words}\n" for s in specs), compress=True)
        for spec in specs:
            boxes = []
            for i in range(train_per_class):
                pixels, box = render(spec, style, rng, image_size)
                name = f"{spec.wnid}_{i}.JPEG"
                out.add(f"train/{spec.wnid}/images/{name}", _jpeg(pixels, style.jpeg_quality))
                boxes.append(f"{name}\t" + "\t".join(map(str, box)) + "\n")
                bar.update()
            out.add(f"train/{spec.wnid}/{spec.wnid}_boxes.txt", "".join(boxes), compress=True)
        # val images are interleaved across classes, as in Tiny ImageNet
        val_labels = np.repeat(np.arange(len(specs)), val_per_class)
        rng.shuffle(val_labels)
        annotations = []
        for i, label in enumerate(val_labels):
            spec = specs[int(label)]
            pixels, box = render(spec, style, rng, image_size)
            out.add(f"val/images/val_{i}.JPEG", _jpeg(pixels, style.jpeg_quality))
            annotations.append(f"val_{i}.JPEG\t{spec.wnid}\t" + "\t".join(map(str, box)) + "\n")
            bar.update()
        out.add("val/val_annotations.txt", "".join(annotations), compress=True)
        for i in range(test_images):
            pixels, _ = render(specs[int(rng.integers(len(specs)))], style, rng, image_size)
            out.add(f"test/images/test_{i}.JPEG", _jpeg(pixels, style.jpeg_quality))
            bar.update()
        if test_images == 0:
            out.add("test/images/", b"")  # the folder exists, as in Tiny ImageNet
    bar.close()
    return Path(path)


def make_synthetic(cfg: SyntheticConfig, out_dir: Path, progress: bool | None = None) -> dict[str, Path]:
    """Write ``source.zip`` and ``tiny-imagenet-200.zip`` (the target) into ``out_dir``."""
    if not 1 <= cfg.target_classes <= cfg.source_classes:
        raise ValueError(
            f"data.synthetic.target_classes must be in [1, source_classes={cfg.source_classes}], got {cfg.target_classes}"
        )
    specs = class_specs(cfg.source_classes, cfg.seed)
    # the target classes: a seeded subset of the source classes, in sorted wnid order
    rng = np.random.default_rng(cfg.seed + 1)
    target = sorted(rng.choice(len(specs), size=cfg.target_classes, replace=False).tolist())
    common = dict(image_size=cfg.image_size, test_images=cfg.test_images, progress=progress)
    source = write_domain_archive(
        Path(out_dir) / layout.SOURCE_ARCHIVE, specs, DomainStyle(),
        train_per_class=cfg.source_train_per_class, val_per_class=cfg.source_val_per_class,
        seed=cfg.seed * 2 + 0, root="synthetic-source", **common,
    )
    tiny = write_domain_archive(
        Path(out_dir) / layout.TARGET_ARCHIVE, [specs[i] for i in target], DomainStyle.target(cfg.shift),
        train_per_class=cfg.target_train_per_class, val_per_class=cfg.target_val_per_class,
        seed=cfg.seed * 2 + 1, root="tiny-imagenet-200", **common,
    )
    return {"source": source, "target": tiny}


def describe(cfg: SyntheticConfig) -> dict:
    """The settings and the class definitions, for the record written next to the archives."""
    classes = [asdict(s) | {"words": s.words} for s in class_specs(cfg.source_classes, cfg.seed)]
    return {"config": cfg.model_dump(mode="json"), "classes": classes}


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
