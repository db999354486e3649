"""params.yaml: loading and validation, one section per stage.

Every value is checked when a stage starts; a bad one gives a single line naming the key, e.g.
``params.yaml: data.holdout must be in [0, 0.5), got 0.9``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robustlora.synthetic import SyntheticConfig

SOURCES = ("synthetic", "tiny-imagenet")
ADAPTATIONS = ("full", "lora", "none")
SECTIONS = ("data", "model", "pretrain", "train", "full", "lora", "none", "variants", "attack", "mlflow")
_WNID = re.compile(r"^n\d{8}$")


class ParamError(ValueError):
    """A params.yaml value that is missing, of the wrong type or out of range."""


class _Section:
    """Reads typed values from one params section, naming the full key in every error."""

    def __init__(self, raw: Any, key: str, file: str = "params.yaml") -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ParamError(f"{file}: {key} must be a mapping, got {raw!r}")
        self.raw, self.key, self.file = raw, key, file
        self.used: set[str] = set()

    def fail(self, name: str, msg: str, value: Any) -> ParamError:
        return ParamError(f"{self.file}: {self.key}.{name} {msg}, got {value!r}")

    def get(self, name: str, default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.raw:
            if default is ...:
                raise ParamError(f"{self.file}: {self.key}.{name} is missing")
            return default
        return self.raw[name]

    def sub(self, name: str) -> "_Section":
        self.used.add(name)
        return _Section(self.raw.get(name), f"{self.key}.{name}", self.file)

    def int(self, name: str, default: Any = ..., lo: int | None = None, hi: int | None = None, none: bool = False) -> int | None:
        v = self.get(name, default)
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, "must be an integer" + (" or null" if none else ""), v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(name, f"must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]", v)
        return v

    def float(self, name: str, default: Any = ..., lo: float | None = None, hi: float | None = None,
              lo_open: bool = False, hi_open: bool = False) -> float:
        v = _number(self.get(name, default))
        if v is None or not math.isfinite(v):
            raise self.fail(name, "must be a finite number", self.raw.get(name, default))
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise self.fail(name, f"must be in {left}{_fmt(lo, '-inf')}, {_fmt(hi, 'inf')}{right}", self.raw.get(name))
        return v

    def bool(self, name: str, default: Any = ...) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise self.fail(name, "must be true or false", v)
        return v

    def str(self, name: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        v = self.get(name, default)
        if not isinstance(v, str) or not v:
            raise self.fail(name, "must be a non-empty string", v)
        if choices is not None and v not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}", v)
        return v

    def check_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ParamError(f"{self.file}: unknown key {self.key}.{unknown[0]} (known: {', '.join(sorted(self.used))})")


def _number(v: Any) -> float | None:
    """Numbers, and fractions written as strings like '8/255' (ε in params)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+))?\s*", v)
        if m:
            try:
                num = float(m.group(1))
                return num / float(m.group(2)) if m.group(2) else num
            except (ValueError, ZeroDivisionError):
                return None
    return None


def _fmt(x: float | None, inf: str) -> str:
    return inf if x is None else f"{x:g}"


# --- sections -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    url: str = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    md5: str | None = "90528d7ca1a48142e341f4ef8d21d0de"
    classes: int | tuple[str, ...] = 10
    train_per_class: int | None = None
    val_per_class: int | None = None
    holdout: float = 0.1
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def parse_data(raw: Any) -> DataConfig:
    s = _Section(raw, "data")
    source = s.str("source", "synthetic", SOURCES)
    url = s.str("url", DataConfig.url)
    md5 = s.get("md5", DataConfig.md5)
    if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
        raise s.fail("md5", "must be 32 hex digits or null", md5)
    classes_raw = s.get("classes", 10)
    if isinstance(classes_raw, list):
        bad = [c for c in classes_raw if not (isinstance(c, str) and _WNID.match(c))]
        if not classes_raw or bad:
            raise s.fail("classes", "must be a number of classes or a non-empty list of wnids like n01443537", bad[0] if bad else classes_raw)
        if len(set(classes_raw)) != len(classes_raw):
            raise s.fail("classes", "must not repeat a wnid", classes_raw)
        classes: int | tuple[str, ...] = tuple(classes_raw)
    else:
        classes = s.int("classes", 10, lo=1)  # type: ignore[assignment]
    cfg = DataConfig(
        source=source,
        url=url,
        md5=md5.lower() if md5 else None,
        classes=classes,
        train_per_class=s.int("train_per_class", None, lo=1, none=True),
        val_per_class=s.int("val_per_class", None, lo=1, none=True),
        holdout=s.float("holdout", 0.1, lo=0.0, hi=0.5, hi_open=True),
        seed=s.int("seed", 0, lo=0),
        synthetic=parse_synthetic(s.sub("synthetic")),
    )
    s.check_unknown()
    return cfg


def parse_synthetic(s: _Section) -> SyntheticConfig:
    d = SyntheticConfig()
    cfg = SyntheticConfig(
        seed=s.int("seed", d.seed, lo=0),
        image_size=s.int("image_size", d.image_size, lo=16, hi=512),
        source_classes=s.int("source_classes", d.source_classes, lo=2, hi=256),
        target_classes=s.int("target_classes", d.target_classes, lo=2, hi=256),
        source_train_per_class=s.int("source_train_per_class", d.source_train_per_class, lo=2),
        source_val_per_class=s.int("source_val_per_class", d.source_val_per_class, lo=1),
        target_train_per_class=s.int("target_train_per_class", d.target_train_per_class, lo=2),
        target_val_per_class=s.int("target_val_per_class", d.target_val_per_class, lo=1),
        test_images=s.int("test_images", d.test_images, lo=0),
        shift=s.float("shift", d.shift, lo=0.0, hi=2.0),
    )
    if cfg.target_classes > cfg.source_classes:
        raise s.fail("target_classes", f"must be <= {s.key}.source_classes ({cfg.source_classes})", cfg.target_classes)
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    weights: str = "pretrain"  # pretrain | imagenet | a checkpoint path
    head: str = "pretrained"  # pretrained | new
    input_size: int = 64


def parse_model(raw: Any) -> ModelConfig:
    s = _Section(raw, "model")
    cfg = ModelConfig(
        arch=s.str("arch", "resnet18", ("resnet18",)),
        weights=s.str("weights", "pretrain"),
        head=s.str("head", "pretrained", ("pretrained", "new")),
        input_size=s.int("input_size", 64, lo=16, hi=512),
    )
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    step_size: int = 10  # epochs between decays, for schedule: step
    gamma: float = 0.1
    batch_size: int = 64
    max_epochs: int = 50
    patience: int = 5
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256


def parse_train(raw: Any, key: str = "train") -> TrainConfig:
    s = _Section(raw, key)
    d = TrainConfig()
    cfg = TrainConfig(
        lr=s.float("lr", d.lr, lo=0.0, lo_open=True),
        momentum=s.float("momentum", d.momentum, lo=0.0, hi=1.0, hi_open=True),
        weight_decay=s.float("weight_decay", d.weight_decay, lo=0.0),
        schedule=s.str("schedule", d.schedule, ("cosine", "step")),
        step_size=s.int("step_size", d.step_size, lo=1),
        gamma=s.float("gamma", d.gamma, lo=0.0, hi=1.0, lo_open=True),
        batch_size=s.int("batch_size", d.batch_size, lo=1),
        max_epochs=s.int("max_epochs", d.max_epochs, lo=1),
        patience=s.int("patience", d.patience, lo=1),
        crop_padding=s.int("crop_padding", d.crop_padding, lo=0, hi=64),
        flip=s.bool("flip", d.flip),
        seed=s.int("seed", d.seed, lo=0),
        device=s.str("device", d.device),
        eval_batch_size=s.int("eval_batch_size", d.eval_batch_size, lo=1),
    )
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise s.fail("device", "must be auto, cpu, mps, cuda or cuda:N", cfg.device)
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 4
    alpha: float = 1.0


def parse_lora(raw: Any) -> LoraConfig:
    s = _Section(raw, "lora")
    cfg = LoraConfig(rank=s.int("rank", 4, lo=1), alpha=s.float("alpha", 1.0, lo=0.0, lo_open=True))
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class FullConfig:
    train_batchnorm: bool = True  # regular fine-tuning updates BatchNorm statistics


def parse_full(raw: Any) -> FullConfig:
    s = _Section(raw, "full")
    cfg = FullConfig(train_batchnorm=s.bool("train_batchnorm", True))
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class VariantSpec:
    """One trained setting: ``full`` fine-tuning, ``lora`` on ``targets``, or ``none`` (the pretrained model as is)."""

    name: str
    adaptation: str
    targets: tuple[str, ...] = ()
    rank: int | None = None
    alpha: float | None = None


def parse_variants(raw: Any, lora: LoraConfig) -> dict[str, VariantSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ParamError(f"params.yaml: variants must be a non-empty mapping of name -> spec, got {raw!r}")
    out = {}
    for name, spec in raw.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(name)):
            raise ParamError(f"params.yaml: variants.{name} is not a valid name (letters, digits, _ and - only)")
        s = _Section(spec, f"variants.{name}")
        adaptation = s.str("adaptation", choices=ADAPTATIONS)
        targets = s.get("targets", [])
        if adaptation == "lora":
            if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
                raise s.fail("targets", "must be a non-empty list of layer names or glob patterns", targets)
        elif targets:
            raise s.fail("targets", f"is only for adaptation: lora (this variant is {adaptation})", targets)
        s.check_unknown()
        out[str(name)] = VariantSpec(
            name=str(name), adaptation=adaptation, targets=tuple(targets),
            rank=lora.rank if adaptation == "lora" else None, alpha=lora.alpha if adaptation == "lora" else None,
        )
    return out


@dataclass(frozen=True)
class AttackConfig:
    n_images: int = 200
    batch_size: int = 128
    seed: int = 0
    n_boot: int = 1000
    fgsm_eps: tuple[float, ...] = ()
    pgd_eps: tuple[float, ...] = ()
    pgd_steps: int = 10
    pgd_rel_step_size: float | None = 0.25
    pgd_step_size: float | None = None
    pgd_random_start: bool = True
    pgd_restarts: int = 1
    device: str = "auto"


def _eps_list(s: _Section, name: str) -> tuple[float, ...]:
    raw = s.get(name)
    if not isinstance(raw, list) or not raw:
        raise s.fail(name, "must be a non-empty list of ε values in [0, 1] (e.g. 8/255)", raw)
    out = []
    for v in raw:
        x = _number(v)
        if x is None or not 0.0 <= x <= 1.0:
            raise s.fail(name, "values must be numbers in [0, 1] pixel units (write 8/255 for 8 grey levels)", v)
        out.append(x)
    return tuple(sorted(set(out)))


def parse_attack(raw: Any) -> AttackConfig:
    s = _Section(raw, "attack")
    fg, pg = s.sub("fgsm"), s.sub("pgd")
    fgsm_eps = _eps_list(fg, "eps")
    fg.check_unknown()
    pgd_eps = _eps_list(pg, "eps")
    rel = pg.get("rel_step_size", None)
    absolute = pg.get("step_size", None)
    if (rel is None) == (absolute is None):
        raise ParamError("params.yaml: attack.pgd needs exactly one of step_size (absolute, [0,1] pixels) or rel_step_size (fraction of ε)")
    cfg = AttackConfig(
        n_images=s.int("n_images", 200, lo=1),
        batch_size=s.int("batch_size", 128, lo=1),
        seed=s.int("seed", 0, lo=0),
        n_boot=s.int("n_boot", 1000, lo=100),
        fgsm_eps=fgsm_eps,
        pgd_eps=pgd_eps,
        pgd_steps=pg.int("steps", 10, lo=1),
        pgd_rel_step_size=pg.float("rel_step_size", lo=0.0, lo_open=True) if rel is not None else None,
        pgd_step_size=pg.float("step_size", lo=0.0, hi=1.0, lo_open=True) if absolute is not None else None,
        pgd_random_start=pg.bool("random_start", True),
        pgd_restarts=pg.int("restarts", 1, lo=1),
        device=s.str("device", "auto"),
    )
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise s.fail("device", "must be auto, cpu, mps, cuda or cuda:N", cfg.device)
    pg.check_unknown()
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "robustlora"


def parse_mlflow(raw: Any) -> MlflowConfig:
    s = _Section(raw, "mlflow")
    cfg = MlflowConfig(experiment=s.str("experiment", "robustlora"))
    s.check_unknown()
    return cfg


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    pretrain: TrainConfig
    train: TrainConfig
    full: FullConfig
    lora: LoraConfig
    variants: dict[str, VariantSpec]
    attack: AttackConfig
    mlflow: MlflowConfig
    raw: dict

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise ParamError(f"params.yaml: no variant {name!r} under variants (have: {', '.join(self.variants)})")
        return self.variants[name]


def parse_params(raw: dict) -> Params:
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamError(f"params.yaml: unknown section {unknown[0]} (known: {', '.join(SECTIONS)})")
    _Section(raw.get("none"), "none").check_unknown()  # `adaptation: none` has no settings
    lora = parse_lora(raw.get("lora"))
    params = Params(
        data=parse_data(raw.get("data")),
        model=parse_model(raw.get("model")),
        pretrain=parse_train(raw.get("pretrain"), "pretrain"),
        train=parse_train(raw.get("train")),
        full=parse_full(raw.get("full")),
        lora=lora,
        variants=parse_variants(raw.get("variants"), lora),
        attack=parse_attack(raw.get("attack")),
        mlflow=parse_mlflow(raw.get("mlflow")),
        raw=raw,
    )
    if params.model.weights == "pretrain" and params.data.source != "synthetic":
        raise ParamError(
            "params.yaml: model.weights 'pretrain' trains on the synthetic source domain and needs data.source "
            f"'synthetic', got {params.data.source!r}; use model.weights 'imagenet' or a checkpoint path"
        )
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    import yaml  # only here: the library core itself needs no YAML

    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path}: file not found (run the stage from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_params(raw or {})


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain JSON-able data."""
    return asdict(obj)
