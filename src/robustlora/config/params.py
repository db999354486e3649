"""All of params.yaml: :class:`Params` (one field per section, in the file's order), a variant (:class:`VariantSpec`:
a kind of adaptation with its section's settings and the variant's overrides), the rules across sections, and the
entry points :func:`load_params` / :func:`parse_params`, whose errors are one line naming the full key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, SerializeAsAny, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as SchemaError  # not robustlora.errors.ValidationError (the data suite's)

from robustlora.config.adaptation import KIND_SCHEMAS, FullSettings, KindSchema, LoraSettings, NoneSettings
from robustlora.config.attacks import AttackConfig, AutoAttackConfig, BlackboxConfig, TransferConfig
from robustlora.config.data import DataConfig
from robustlora.config.defences import SqueezeConfig, SwitchingConfig
from robustlora.config.explain import explain
from robustlora.config.report import MlflowConfig, ReportConfig
from robustlora.config.schema import Invalid, Schema, Text, as_tuple, off_grid
from robustlora.config.training import (AdversarialOption, AdversarialSettings, ModelConfig, TrainConfig,
                                        TrainLoopConfig, adversarial_input)
from robustlora.errors import ParamError


class VariantSpec(Schema):
    """One arm: a kind of adaptation, its targets (lora), and the kind's settings with the variant's overrides."""

    name: str
    adaptation: str
    targets: Annotated[tuple[Text, ...], BeforeValidator(as_tuple)] = ()  # layer names or globs (lora)
    target_set: str | None = None  # the name of lora.target_sets that ``targets`` came from (or equals)
    settings: SerializeAsAny[Schema]  # KIND_SCHEMAS[adaptation].settings; defaults to that kind's defaults
    adversarial: AdversarialOption = None  # adversarial fine-tuning; resolved against train.adversarial

    @model_validator(mode="before")
    @classmethod
    def _default_settings(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "settings" not in raw and isinstance(raw.get("adaptation"), str):
            kind = KIND_SCHEMAS.get(raw["adaptation"])
            return raw | {"settings": kind.settings()} if kind else raw
        return raw

    @field_validator("adaptation")
    @classmethod
    def _known_kind(cls, adaptation: str) -> str:
        if adaptation not in KIND_SCHEMAS:
            raise ValueError(f"must be one of {', '.join(KIND_SCHEMAS)}")
        return adaptation

    @model_validator(mode="after")
    def _fits_its_kind(self) -> VariantSpec:
        kind, targets = self.kind, list(self.targets)
        if kind.takes_targets and not targets:
            raise Invalid("targets", "must be a non-empty list of layer names or glob patterns", targets)
        if targets and not kind.takes_targets:
            takers = ", ".join(k.name for k in KIND_SCHEMAS.values() if k.takes_targets)
            raise Invalid("targets", f"is only for adaptation: {takers} (this variant is {self.adaptation})", targets)
        if not isinstance(self.settings, kind.settings):
            raise Invalid("settings", f"must be {kind.settings.__name__}", self.settings)
        if self.adversarial is not None and not kind.trains:
            raise Invalid("adversarial", f"needs an arm that trains (this variant is {self.adaptation})")
        return self

    @property
    def kind(self) -> KindSchema:
        """What params knows of the variant's kind (settings schema, targets, whether it trains); what the kind does
        to a model is :mod:`robustlora.models.adaptation`'s."""
        return KIND_SCHEMAS[self.adaptation]

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
            raise ParamError("params.yaml: report.eps must be one of attack.eps "
                             f"{off_grid(self.report.eps, self.attack.eps)}")
        full = self.attack.full_eps
        if full is not None and self.attack.grid_images is not None and self.report.eps not in full:
            raise ParamError("params.yaml: report.eps must be one of attack.full_eps (PGD covers only the first "
                             f"attack.grid_images images elsewhere) {off_grid(self.report.eps, full)}")
        for name in self.transfer.surrogates or ():
            if name not in self.variants:
                raise ParamError(f"params.yaml: transfer.surrogates names no variant {name!r} "
                                 f"(have: {', '.join(self.variants)})")
        for section in ("squeeze", "switching"):
            if getattr(self, section).eps is None:  # the defences are evaluated at the report's ε by default
                object.__setattr__(self, section, getattr(self, section).model_copy(update={"eps": (self.report.eps,)}))
            for e in getattr(self, section).eps:
                if e not in self.attack.eps:
                    raise ParamError(f"params.yaml: {section}.eps must be values of attack.eps "
                                     f"{off_grid(e, self.attack.eps)}")
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


assert set(KIND_SCHEMAS) <= set(Params.model_fields), "every kind of adaptation needs its settings section in Params"


def _variant_input(name: str, entry: Any, sections: dict[str, Any]) -> Any:
    """A variants.<name> entry as VariantSpec input: its kind's section with the entry's overrides applied."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ParamError(f"params.yaml: variants.{name} is not a valid name (letters, digits, _ and - only)")
    if not isinstance(entry, dict):
        return entry
    spec = {"name": name, **{k: entry[k] for k in ("adaptation", "targets") if k in entry}}
    kind = KIND_SCHEMAS.get(entry["adaptation"]) if isinstance(entry.get("adaptation"), str) else None
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
        raise explain(e, kind.settings, ("variants", name)) from None
    return spec | _named_targets(name, spec.get("targets"), getattr(settings, "target_sets", None)) | {
        "settings": settings}


def _resolved_adversarial(variant: str, entry: dict[str, Any], train: Any, trains: bool) -> dict[str, Any]:
    """The variant's adversarial training: its own ``adversarial`` (a mapping over train.adversarial's or the
    defaults; true = those; false / null = none) or, without the key, train.adversarial (arms that train only)."""
    base = train.adversarial if isinstance(train, TrainLoopConfig) else None
    if "adversarial" not in entry:
        return {"adversarial": base} if trains and base is not None else {}
    own = adversarial_input(entry["adversarial"])
    if isinstance(own, dict) and base is not None:
        own = base.model_dump() | own
    try:
        return {"adversarial": AdversarialSettings.model_validate(own) if isinstance(own, dict) else own}
    except SchemaError as e:
        raise explain(e, AdversarialSettings, ("variants", variant, "adversarial")) from None


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


# ----------------------------------------------------------------------------- entry points


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML); ParamError names the first bad key."""
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except SchemaError as e:
        raise explain(e, Params) from None


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
