"""params.yaml: the schema of every section, checked when a stage starts.

A bad value gives one line naming the full key, e.g. ``params.yaml: data.holdout must be in [0, 0.5), got 0.9``.
Values in [0,1] pixel units may be written as fractions (``8/255``). The sections ``full``, ``lora`` and ``none``
are the settings of each kind of adaptation, defined with the kinds in :mod:`robustlora.models.adaptation`.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SerializeAsAny, ValidationInfo
from pydantic import ValidationError as SchemaError  # not robustlora.errors.ValidationError (the data suite's)
from pydantic import field_validator, model_validator

from robustlora.models.adaptation import (KINDS, FullSettings, Invalid, Kind, LoraSettings, NoneSettings, Number, Schema,
                                   fraction)
from robustlora.errors import ParamError

_CLASS = re.compile(r"[^/\\\s]+")  # one folder name of the archive, e.g. a wnid
Text = Annotated[str, Field(min_length=1)]


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # YAML gives lists; strict tuples refuse them


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device)]


def _md5(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{32}", value)):
        raise ValueError("must be 32 hex digits or null")
    return value.lower() if value else None


def _classes(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("must be in [1, inf]")
    # a class is a folder name of the archive: a wnid like n01443537, or a user's own name (no '/')
    bad = [c for c in value if not (isinstance(c, str) and _CLASS.fullmatch(c))] if isinstance(value, list) else [value]
    if not value or bad:
        raise Invalid("", "must be a number of classes or a non-empty list of class folder names like n01443537",
                      (bad or [value])[0])
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a wnid")
    return tuple(value)


def _seeds(value: Any) -> Any:
    ok = isinstance(value, (list, tuple)) and value and len(set(value)) == len(value)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ValueError("must be a non-empty list of distinct integers >= 0")
    return tuple(value)


def _eps_grid(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None  # where the field allows it: "the default grid"
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of ε values in [0, 1] (e.g. 8/255)")
    grid = [fraction(v) for v in value]
    for raw, eps in zip(value, grid):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
            raise Invalid("", "values must be numbers in [0, 1] pixel units (write 8/255 for 8 grey levels)", raw)
    return tuple(sorted({float(e) for e in grid}))


def _eps_text(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-9 else f"{eps:g}"


# ----------------------------------------------------------------------------- sections


class SyntheticConfig(Schema):
    """``data.synthetic``: the offline miniature (see :mod:`robustlora.data.synthetic`)."""

    seed: int = Field(0, ge=0)
    image_size: int = Field(64, ge=16, le=512)
    source_classes: int = Field(16, ge=2, le=256)
    target_classes: int = Field(10, ge=2, le=256)  # a subset of the source classes, drawn with a domain shift
    source_train_per_class: int = Field(150, ge=2)
    source_val_per_class: int = Field(30, ge=1)
    target_train_per_class: int = Field(100, ge=2)
    target_val_per_class: int = Field(50, ge=1)
    test_images: int = Field(20, ge=0)
    shift: Number = Field(1.0, ge=0, le=2)  # domain-shift strength (0 = the source domain's look)

    @model_validator(mode="after")
    def _target_within_source(self) -> SyntheticConfig:
        if self.target_classes > self.source_classes:
            raise Invalid("target_classes", f"must be <= source_classes ({self.source_classes})", self.target_classes)
        return self


class DataConfig(Schema):
    source: Literal["synthetic", "tiny-imagenet"] = "synthetic"
    url: Text = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"  # or a local path / file:// URL
    md5: Annotated[str | None, BeforeValidator(_md5)] = "90528d7ca1a48142e341f4ef8d21d0de"
    classes: Annotated[int | tuple[str, ...], BeforeValidator(_classes)] = 10  # the first N wnids, or wnids
    train_per_class: int | None = Field(None, ge=1)  # null = all
    val_per_class: int | None = Field(None, ge=1)
    holdout: Number = Field(0.1, ge=0, lt=0.5)  # share of each class's training images kept for model selection
    seed: int = Field(0, ge=0)
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(Schema):
    arch: Literal["resnet18"] = "resnet18"
    weights: Text = "pretrain"  # pretrain (on the synthetic source) | imagenet | a checkpoint path
    head: Literal["pretrained", "new"] = "pretrained"  # new: a fresh head, trained in every variant
    input_size: int = Field(64, ge=16, le=512)


class _Loop(Schema):
    """The training loop shared by ``pretrain`` and ``train``."""

    momentum: Number = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step"] = "cosine"
    step_size: int = Field(10, ge=1)  # epochs between decays, for schedule: step
    gamma: Number = Field(0.1, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(50, ge=1)
    warmup_epochs: int = Field(0, ge=0)  # linear lr warm-up before the decay (fine-tuning: keeps epoch 1 gentle)
    patience: int = Field(5, ge=1)  # epochs without a better holdout accuracy before stopping
    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    device: Device = "auto"  # auto = cuda, then mps, then cpu
    eval_batch_size: int = Field(256, ge=1)


class TrainConfig(_Loop):
    """One training run, as :func:`robustlora.training.loop.fit` takes it: ``pretrain``, or :meth:`Params.fit_config`."""

    lr: Number = Field(0.01, gt=0)
    weight_decay: Number = Field(5e-4, ge=0)
    seed: int = Field(0, ge=0)
    adversarial: AdversarialOption = None  # adversarial fine-tuning (train.fit crafts the examples per batch)


def _adversarial(value: Any) -> Any:
    """``adversarial: true`` = the default settings; ``false`` / null = standard training."""
    if value is True:
        return {}
    return None if value is False else value


class AdversarialSettings(Schema):
    """Adversarial fine-tuning (``train.adversarial`` or a variant's ``adversarial``): PGD adversarial training
    (Madry et al. 2018) or TRADES (Zhang et al. 2019), L∞, ε and steps in [0,1] pixel units. The training examples
    are crafted with the model in eval mode (BatchNorm running statistics, as our attacks use them)."""

    method: Literal["pgd", "trades"] = "pgd"
    eps: Number = Field(4 / 255, gt=0, le=1)
    steps: int = Field(2, ge=1)
    rel_step_size: Number | None = Field(None, gt=0)  # step = rel_step_size·ε; null = 2.5/steps (Madry's travel)
    random_start: bool = True  # pgd only (TRADES starts at x + 0.001·N(0, 1))
    beta: Number = Field(6.0, ge=0)  # TRADES only: weight of KL(p(x) ‖ p(x'))
    select: Literal["robust", "clean"] = "robust"  # the best epoch by holdout PGD accuracy (Rice et al. 2020) or clean

    @property
    def step_size(self) -> float:
        """The inner attack's step in [0,1] pixels."""
        return (self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps) * self.eps

    @property
    def label(self) -> str:
        """'PGD-AT ε=4/255, 2 steps of 1.25·ε, random start' or 'TRADES β=6, ε=4/255, 2 steps of 1.25·ε'."""
        head = "PGD-AT" if self.method == "pgd" else f"TRADES β={self.beta:g},"
        start = ", random start" if self.method == "pgd" and self.random_start else ""
        return (f"{head} ε={_eps_text(self.eps)}, {self.steps} step{'s' if self.steps > 1 else ''} of "
                f"{self.step_size / self.eps:.3g}·ε{start}")


AdversarialOption = Annotated[AdversarialSettings | None, BeforeValidator(_adversarial)]


class TrainLoopConfig(_Loop):
    """``train``: the loop of every adapted arm; lr and weight_decay come from the variant's kind."""

    seeds: Annotated[tuple[int, ...], BeforeValidator(_seeds)] = (0,)  # every arm is trained once per seed
    adversarial: AdversarialOption = None  # every adapted arm trains adversarially (a variant's own setting wins)


class PgdConfig(Schema):
    steps: int = Field(10, ge=1)
    rel_step_size: Number | None = Field(None, gt=0)  # step = rel_step_size·ε
    step_size: Number | None = Field(None, gt=0, le=1)  # or an absolute step, [0,1] pixels
    random_start: bool = True
    restarts: int = Field(1, ge=1)
    sanity_eps: Number | None = Field(1.0, gt=0, le=1)  # one extra, unbounded run that must reach ~100 %; null = skip

    @model_validator(mode="after")
    def _one_step_size(self) -> PgdConfig:
        if (self.rel_step_size is None) == (self.step_size is None):
            raise Invalid("", "needs exactly one of step_size (absolute, [0,1] pixels) or rel_step_size "
                          "(fraction of ε)")
        return self

    def step_for(self, eps: float) -> float:
        """The PGD step at ``eps``, both in [0,1] pixels."""
        return self.step_size if self.step_size is not None else self.rel_step_size * eps  # type: ignore[operator]


class ConvergenceConfig(Schema):
    """``attack.convergence``: PGD with ``steps_factor`` x the steps and ``restarts`` random restarts, on the first
    ``n_images`` of the attacked images at every ε; it must not fool more images than PGD did beyond the noise."""

    n_images: int = Field(50, ge=0)  # 0 = skip the check
    all_seeds: bool = True  # false: on each arm's first training seed only
    steps_factor: int = Field(10, ge=1)
    restarts: int = Field(5, ge=1)
    eps: Annotated[tuple[float, ...] | None, BeforeValidator(_eps_grid)] = None  # values of attack.eps; None = all


class AttackConfig(Schema):
    n_images: int = Field(200, ge=1)  # a fixed seeded subset of val, the same for every arm and seed
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    eps: Annotated[tuple[float, ...], BeforeValidator(_eps_grid)] = tuple(k / 255 for k in (1, 2, 4, 8, 16))
    pgd: PgdConfig = PgdConfig(rel_step_size=0.25)
    convergence: ConvergenceConfig = ConvergenceConfig()

    @property
    def convergence_eps(self) -> tuple[float, ...]:
        """The ε of the convergence check (all of ``eps`` unless convergence.eps names some); () when it is off."""
        if not self.convergence.n_images:
            return ()
        return self.convergence.eps if self.convergence.eps is not None else self.eps

    @model_validator(mode="after")
    def _convergence_on_grid(self) -> AttackConfig:
        for e in self.convergence.eps or ():
            if e not in self.eps:
                raise Invalid("convergence.eps", f"must be values of attack.eps ({', '.join(map(_eps_text, self.eps))})"
                              f", got {_eps_text(e)}")
        return self


AutoAttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


class AutoAttackConfig(Schema):
    """``autoattack``: the official AutoAttack (Croce & Hein 2020, package ``pyautoattack``), L∞.

    ``version: standard`` is the authors' ensemble and settings (APGD-CE, APGD-T, FAB-T, Square with 100 iterations,
    9 target classes, 5000 queries): the setting to report, on a GPU. ``custom`` runs ``attacks`` with ``n_iter`` /
    ``n_target_classes`` / ``square_queries``, cheap enough for the CPU default. The images are the first
    ``n_images`` of the attack stage's subset, so every comparison with PGD is paired.
    """

    version: Literal["standard", "custom"] = "standard"
    attacks: Annotated[tuple[AutoAttackName, ...], BeforeValidator(_as_tuple)] = ("apgd-ce", "apgd-t")  # custom only
    n_iter: int = Field(100, ge=1)  # custom only: APGD / FAB iterations
    n_target_classes: int = Field(9, ge=1)  # custom only: APGD-T / FAB-T targets (capped at classes - 1)
    square_queries: int = Field(5000, ge=1)  # custom only
    eps: Annotated[tuple[float, ...], BeforeValidator(_eps_grid)] = (8 / 255,)
    sanity_eps: Number | None = Field(None, gt=0, le=1)  # one more, unbounded ε: success must reach 100 %
    n_images: int = Field(1000, ge=1)
    batch_size: int = Field(500, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"

    @model_validator(mode="after")
    def _some_attack(self) -> AutoAttackConfig:
        if not self.attacks:
            raise Invalid("attacks", "must name at least one of " + ", ".join(get_args(AutoAttackName)))
        return self


class SquareConfig(Schema):
    """``blackbox.square``: Square Attack (Andriushchenko et al. 2020), score-based, L∞, ε-bounded."""

    n_images: int = Field(100, ge=1)  # the first N of the attack stage's images
    queries: int = Field(1000, ge=1)  # query budget per image (ART max_iter)
    p_init: Number = Field(0.8, gt=0, le=1)
    restarts: int = Field(1, ge=1)
    eps: Annotated[tuple[float, ...], BeforeValidator(_eps_grid)] = (8 / 255,)
    sanity_eps: Number | None = Field(None, gt=0, le=1)


class HopSkipJumpConfig(Schema):
    """``blackbox.hopskipjump``: HopSkipJump (Chen et al. 2020), decision-based, minimises the L∞ distance."""

    all_seeds: bool = True  # false: each arm's first training seed only (the CPU default: these are slow)
    n_images: int = Field(20, ge=1)
    max_iter: int = Field(20, ge=1)
    max_eval: int = Field(1000, ge=1)
    init_eval: int = Field(100, ge=1)
    init_size: int = Field(100, ge=1)


class BoundaryConfig(Schema):
    """``blackbox.boundary``: the Boundary Attack (Brendel et al. 2018), decision-based, untargeted, L2."""

    all_seeds: bool = True  # false: each arm's first training seed only (the CPU default: these are slow)
    n_images: int = Field(20, ge=1)
    max_iter: int = Field(1000, ge=1)
    delta: Number = Field(0.01, gt=0)
    epsilon: Number = Field(0.01, gt=0)
    step_adapt: Number = Field(0.667, gt=0, lt=1)
    num_trial: int = Field(25, ge=1)
    sample_size: int = Field(20, ge=1)
    init_size: int = Field(100, ge=1)


class ZooConfig(Schema):
    """``blackbox.zoo``: ZOO (Chen et al. 2017), score-based, coordinate-wise gradient estimates, untargeted, L2."""

    all_seeds: bool = True  # false: each arm's first training seed only (the CPU default: these are slow)
    n_images: int = Field(10, ge=1)
    max_iter: int = Field(100, ge=1)
    binary_search_steps: int = Field(1, ge=1)
    initial_const: Number = Field(1.0, gt=0)
    learning_rate: Number = Field(0.01, gt=0)
    confidence: Number = Field(0.0, ge=0)
    nb_parallel: int = Field(128, ge=1)
    use_resize: bool = False
    use_importance: bool = False
    variable_h: Number = Field(1e-4, gt=0)


BLACKBOX_ATTACKS = ("square", "hopskipjump", "boundary", "zoo")


class BlackboxConfig(Schema):
    """``blackbox``: attacks that only query the model (Adversarial Robustness Toolbox), one DVC stage each.

    The decision-based and ZOO attacks minimise a distance; success at ε means an adversarial input within the
    L∞ ε-ball was found, and the query count is the first query that found one. ``eps`` (default: attack.eps) is
    their grid; Square has its own, since it runs once per ε.
    """

    batch_size: int = Field(256, ge=1)  # model queries per forward pass
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    square: SquareConfig = SquareConfig()
    hopskipjump: HopSkipJumpConfig = HopSkipJumpConfig()
    boundary: BoundaryConfig = BoundaryConfig()
    zoo: ZooConfig = ZooConfig()


class TransferConfig(Schema):
    """``transfer``: PGD examples crafted on one model (a surrogate) and evaluated on every other arm and seed.

    Surrogates are variants (default: every variant, the unadapted ``pretrained`` one the natural choice); each is
    attacked through its first training seed's model with the attack stage's PGD settings, at ``eps``.
    """

    surrogates: Annotated[tuple[str, ...] | None, BeforeValidator(_as_tuple)] = None  # None = every variant
    eps: Annotated[tuple[float, ...], BeforeValidator(_eps_grid)] = (8 / 255,)
    n_images: int = Field(200, ge=1)  # the first N of the attack stage's images


Arm = Literal["baseline", "lora_fc", "lora_fc_conv1"]  # the paper's roles
ARMS: tuple[str, ...] = get_args(Arm)


class AdaptiveSqueezeConfig(Schema):
    """``squeeze.adaptive``: PGD on classifier + detector, through the squeezers by BPDA (robustlora.defences.squeeze)."""

    steps: int = Field(20, ge=1)
    rel_step_size: Number = Field(0.25, gt=0)  # step = rel_step_size·ε
    lam: Number = Field(0.25, ge=0)  # weight of the detector penalty (CE is capped at ce_cap nats)
    ce_cap: Number = Field(2.0, gt=0)


class SqueezeConfig(Schema):
    """``squeeze``: feature squeezing (Xu et al., NDSS 2018) as a detector on every arm, and the attacks on it."""

    bit_depth: int | None = Field(5, ge=1, le=8)  # squeezer: bits per channel (null = not used)
    median: int | None = Field(2, ge=1, le=8)  # squeezer: median filter window, median x median (null = not used)
    fpr: Number = Field(0.05, gt=0, lt=1)  # the threshold's false positive rate on the clean holdout split
    n_images: int = Field(60, ge=1)  # the first N images of the attack subset
    eps: Annotated[tuple[float, ...] | None, BeforeValidator(_eps_grid)] = None  # values of attack.eps; None = report.eps
    adaptive: AdaptiveSqueezeConfig = AdaptiveSqueezeConfig()

    @model_validator(mode="after")
    def _some_squeezer(self) -> SqueezeConfig:
        if self.bit_depth is None and self.median is None:
            raise Invalid("", "needs at least one squeezer: bit_depth or median")
        return self


class SwitchingConfig(Schema):
    """``switching``: one backbone holding a standard and an adversarially trained LoRA adapter; the squeezing
    detector (on the standard adapter) routes flagged inputs to the robust one, per input."""

    standard: str | None = None  # a LoRA variant (null = no switching system)
    robust: str | None = None  # a LoRA variant with the same backbone, targets and rank, trained adversarially
    n_images: int = Field(60, ge=1)  # the first N images of the attack subset
    eps: Annotated[tuple[float, ...] | None, BeforeValidator(_eps_grid)] = None  # values of attack.eps; None = report.eps
    cost_batch_size: int = Field(64, ge=1)  # the batch of the latency measurement
    cost_repeats: int = Field(20, ge=1)  # timed repetitions (the report gives the median and the 5-95 % range)


class ReportConfig(Schema):
    eps: Number = Field(8 / 255, ge=0, le=1)  # the main ε of findings and comparisons; one of attack.eps
    reference_fgsm_asr: Number = Field(0.65, ge=0, le=1)  # the paper's baseline FGSM success rate
    tolerance: Number = Field(0.10, ge=0, le=1)  # "about the reference" = within ± tolerance
    alpha: Number = Field(0.05, gt=0, lt=1)  # significance level after Holm correction
    n_boot: int = Field(2000, ge=100)  # hierarchical bootstrap resamples
    seed: int = Field(0, ge=0)
    arms: dict[Arm, str | None] = Field(default_factory=lambda: {a: a for a in ARMS})  # role -> variant; null = absent

    @field_validator("arms")
    @classmethod
    def _every_role(cls, arms: dict[str, str | None]) -> dict[str, str | None]:
        missing = [a for a in ARMS if a not in arms]
        if missing:
            raise ValueError(f"must give every role ({', '.join(ARMS)}; null = no such arm), missing {missing[0]}")
        return arms


class MlflowConfig(Schema):
    experiment: Text = "robustlora"


class VariantSpec(Schema):
    """One arm: a kind of adaptation, its targets (lora), and the kind's settings with the variant's overrides."""

    name: str
    adaptation: str
    targets: Annotated[tuple[Text, ...], BeforeValidator(_as_tuple)] = ()  # layer names or globs (lora)
    target_set: str | None = None  # the name of lora.target_sets that ``targets`` came from (or equals)
    settings: SerializeAsAny[Schema]  # KINDS[adaptation].settings; defaults to that kind's defaults
    adversarial: AdversarialOption = None  # adversarial fine-tuning; resolved against train.adversarial

    @model_validator(mode="before")
    @classmethod
    def _default_settings(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "settings" not in raw and isinstance(raw.get("adaptation"), str):
            kind = KINDS.get(raw["adaptation"])
            return raw | {"settings": kind.settings()} if kind else raw
        return raw

    @field_validator("adaptation")
    @classmethod
    def _known_kind(cls, adaptation: str) -> str:
        if adaptation not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}")
        return adaptation

    @model_validator(mode="after")
    def _fits_its_kind(self) -> VariantSpec:
        kind, targets = self.kind, list(self.targets)
        if kind.takes_targets and not targets:
            raise Invalid("targets", "must be a non-empty list of layer names or glob patterns", targets)
        if targets and not kind.takes_targets:
            takers = ", ".join(k.name for k in KINDS.values() if k.takes_targets)
            raise Invalid("targets", f"is only for adaptation: {takers} (this variant is {self.adaptation})", targets)
        if not isinstance(self.settings, kind.settings):
            raise Invalid("settings", f"must be {kind.settings.__name__}", self.settings)
        if self.adversarial is not None and not kind.trains:
            raise Invalid("adversarial", f"needs an arm that trains (this variant is {self.adaptation})")
        return self

    @property
    def kind(self) -> Kind:
        return KINDS[self.adaptation]

    @property
    def rank(self) -> int | None:
        return getattr(self.settings, "rank", None)

    @property
    def targets_label(self) -> str:
        """The target set's name, else the targets joined ('' for kinds without targets)."""
        return self.target_set or ",".join(self.targets)

    @property
    def alpha(self) -> float | None:
        return getattr(self.settings, "alpha", None)


class Params(Schema):
    """All of params.yaml. Each kind of adaptation has its settings section under its own name."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig = TrainConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    full: FullSettings = FullSettings()
    lora: LoraSettings = LoraSettings()
    none: NoneSettings = NoneSettings()
    variants: dict[str, VariantSpec]  # after the kinds' sections: a variant's settings start from its section
    attack: AttackConfig = AttackConfig()
    autoattack: AutoAttackConfig = AutoAttackConfig()
    blackbox: BlackboxConfig = BlackboxConfig()
    transfer: TransferConfig = TransferConfig()
    squeeze: SqueezeConfig = SqueezeConfig()
    switching: SwitchingConfig = SwitchingConfig()
    report: ReportConfig = ReportConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @field_validator("variants", mode="before")
    @classmethod
    def _apply_overrides(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, dict) or not raw:
            raise ValueError("must be a non-empty mapping of name -> spec")
        return {str(name): _variant_input(str(name), entry, info.data) for name, entry in raw.items()}

    @model_validator(mode="after")
    def _cross_section_rules(self) -> Params:
        if self.model.weights == "pretrain" and self.data.source != "synthetic":
            raise ParamError(
                "params.yaml: model.weights 'pretrain' trains on the synthetic source domain and needs data.source "
                f"'synthetic', got {self.data.source!r}; use model.weights 'imagenet' or a checkpoint path")
        if self.report.eps not in self.attack.eps:
            grid, eps = ", ".join(map(_eps_text, self.attack.eps)), _eps_text(self.report.eps)
            raise ParamError(f"params.yaml: report.eps must be one of attack.eps ({grid}), got {eps}")
        for name in self.transfer.surrogates or ():
            if name not in self.variants:
                raise ParamError(f"params.yaml: transfer.surrogates names no variant {name!r} "
                                 f"(have: {', '.join(self.variants)})")
        for section in ("squeeze", "switching"):
            if getattr(self, section).eps is None:  # the defences are evaluated at the report's ε by default
                object.__setattr__(self, section, getattr(self, section).model_copy(update={"eps": (self.report.eps,)}))
            for e in getattr(self, section).eps:
                if e not in self.attack.eps:
                    grid = ", ".join(map(_eps_text, self.attack.eps))
                    raise ParamError(f"params.yaml: {section}.eps must be values of attack.eps ({grid}), got "
                                     f"{_eps_text(e)}")
        sw = self.switching
        if (sw.standard is None) != (sw.robust is None):
            raise ParamError("params.yaml: switching needs both standard and robust (or neither), got "
                             f"standard {sw.standard!r}, robust {sw.robust!r}")
        for role in ("standard", "robust"):
            name = getattr(sw, role)
            if name is None:
                continue
            if name not in self.variants:
                raise ParamError(f"params.yaml: switching.{role} names no variant {name!r} "
                                 f"(have: {', '.join(self.variants)})")
            if not self.variants[name].kind.takes_targets:
                raise ParamError(f"params.yaml: switching.{role} must be a LoRA variant (adapters share one "
                                 f"backbone), got {name!r} (adaptation: {self.variants[name].adaptation})")
        if sw.standard is not None and sw.standard == sw.robust:
            raise ParamError(f"params.yaml: switching.standard and switching.robust are both {sw.standard!r}")
        for role, name in self.report.arms.items():
            if name is not None and name not in self.variants:
                raise ParamError(f"params.yaml: report.arms.{role} names no variant {name!r} "
                                 f"(have: {', '.join(self.variants)}; null = no such arm)")
        for spec in self.variants.values():
            if self.model.head == "new" and not spec.kind.trains:
                raise ParamError(f"params.yaml: variants.{spec.name} (adaptation: {spec.adaptation}) has no lr to "
                                 "train the fresh head of model.head 'new'; use model.head 'pretrained' or drop it")
        return self

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise ParamError(f"params.yaml: no variant {name!r} under variants (have: {', '.join(self.variants)})")
        return self.variants[name]

    def fit_config(self, variant: str, seed: int) -> TrainConfig:
        """The run that trains ``variant`` with ``seed``: the ``train`` loop, its kind's lr and weight_decay.

        A kind that trains nothing (``none``) has no fit config: ParamError (its arm is evaluated as is).
        """
        spec = self.variant(variant)
        if not spec.kind.trains:
            raise ParamError(f"params.yaml: variants.{variant} (adaptation: {spec.adaptation}) trains nothing")
        if seed not in self.train.seeds:
            raise ParamError(f"params.yaml: seed {seed} is not in train.seeds {list(self.train.seeds)}")
        loop = self.train.model_dump(exclude={"seeds", "adversarial"})
        return TrainConfig(**loop, lr=spec.settings.lr, weight_decay=spec.settings.weight_decay, seed=int(seed),
                           adversarial=spec.adversarial)


assert set(KINDS) <= set(Params.model_fields), "every kind of adaptation needs its settings section in Params"


def _variant_input(name: str, entry: Any, sections: dict[str, Any]) -> Any:
    """A variants.<name> entry as VariantSpec input: its kind's section with the entry's overrides applied."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ParamError(f"params.yaml: variants.{name} is not a valid name (letters, digits, _ and - only)")
    if not isinstance(entry, dict):
        return entry
    spec = {"name": name, **{k: entry[k] for k in ("adaptation", "targets") if k in entry}}
    kind = KINDS.get(entry["adaptation"]) if isinstance(entry.get("adaptation"), str) else None
    if kind is None or sections.get(kind.name) is None:
        return spec  # VariantSpec names the bad adaptation; a bad section was reported before the variants
    spec |= _resolved_adversarial(name, entry, sections.get("train"), kind.trains)
    overrides = {k: v for k, v in entry.items() if k not in spec and k != "adversarial"}
    known = ["adaptation", *(["targets"] if kind.takes_targets else []), *(["adversarial"] if kind.trains else []),
             *kind.settings.model_fields]
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ParamError(f"params.yaml: unknown key variants.{name}.{unknown[0]} (known: {', '.join(known)})")
    try:
        settings = kind.settings.model_validate(sections[kind.name].model_dump() | overrides)
    except SchemaError as e:
        raise _explain(e, kind.settings, ("variants", name)) from None
    return spec | _named_targets(name, spec.get("targets"), getattr(settings, "target_sets", None)) | {
        "settings": settings}


def _resolved_adversarial(variant: str, entry: dict[str, Any], train: Any, trains: bool) -> dict[str, Any]:
    """The variant's adversarial training: its own ``adversarial`` (a mapping over train.adversarial's or the
    defaults; true = those; false / null = none) or, without the key, train.adversarial (arms that train only)."""
    base = train.adversarial if isinstance(train, TrainLoopConfig) else None
    if "adversarial" not in entry:
        return {"adversarial": base} if trains and base is not None else {}
    own = _adversarial(entry["adversarial"])
    if isinstance(own, dict) and base is not None:
        own = base.model_dump() | own
    try:
        return {"adversarial": AdversarialSettings.model_validate(own) if isinstance(own, dict) else own}
    except SchemaError as e:
        raise _explain(e, AdversarialSettings, ("variants", variant, "adversarial")) from None


def _named_targets(variant: str, targets: Any, sets: dict[str, tuple[str, ...]] | None) -> dict[str, Any]:
    """``targets`` as given (a list) or named (a key of ``lora.target_sets``): the patterns and the set's name."""
    if not sets or targets is None:
        return {}
    if isinstance(targets, str):
        if targets not in sets:
            raise ParamError(f"params.yaml: variants.{variant}.targets '{targets}' is not a target set (known: "
                             f"{', '.join(sets)}; or give a list of layer names / globs)")
        return {"targets": list(sets[targets]), "target_set": targets}
    if isinstance(targets, (list, tuple)):
        same = [n for n, patterns in sets.items() if sorted(patterns) == sorted(map(str, targets))]
        return {"target_set": same[0]} if same else {}
    return {}


# ----------------------------------------------------------------------------- pydantic errors as one line

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


def _explain(e: SchemaError, root: type[BaseModel], prefix: tuple[str, ...] = ()) -> ParamError:
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


# ----------------------------------------------------------------------------- entry points


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML); ParamError names the first bad key."""
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except SchemaError as e:
        raise _explain(e, Params) from None


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


def to_dict(obj: BaseModel) -> dict[str, Any]:
    """A config as plain JSON-able data (tuples as lists), e.g. to record next to an output."""
    return obj.model_dump(mode="json")
