"""What each kind of adaptation means, in one place: its params settings, what it trains, how it is rebuilt.

A kind is one settings schema (the params section of the same name; a variant may override any of its keys) and one
entry in :data:`KINDS`. Training, checkpoint loading and the report ask this module instead of branching on
``full`` / ``lora`` / ``none``, so a new kind of arm (adversarial, squeezed, switched) is one class and one entry.

Torch-free at import: torch and :mod:`robustlora.models.lora` are imported where a model is touched.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from robustlora.errors import ModelError

if TYPE_CHECKING:
    import torch.nn as nn

    from robustlora.config import VariantSpec

# ----------------------------------------------------------------------------- schema primitives
# The base of every params section. It lives here, not in config.py, because the kinds' settings below need it and
# config.py imports this module.


class Schema(BaseModel):
    """A params section: strict types (5, not '5'), frozen, unknown keys refused; an empty YAML section is {}."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, raw: Any) -> Any:
        return {} if raw is None else raw


class Invalid(ValueError):
    """A broken rule inside a section; ``key`` is below the section being validated ('' = the section itself)."""

    NO_VALUE: ClassVar[object] = object()  # the message names no bad value

    def __init__(self, key: str, message: str, value: Any = NO_VALUE) -> None:
        super().__init__(message)
        self.key, self.value = key, value


def fraction(value: Any) -> Any:
    """'8/255' -> 8/255 and '1e-4' -> 1e-4 (YAML 1.1 reads an exponent without a dot as a string); else as is."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+))?\s*", value)
        if m:
            try:
                return float(m[1]) / float(m[2]) if m[2] else float(m[1])
            except (ValueError, ZeroDivisionError):
                pass
    return value


Number = Annotated[float, BeforeValidator(fraction)]

# ----------------------------------------------------------------------------- settings of each kind


class FullSettings(Schema):
    """params ``full``: fine-tuning of every weight."""

    lr: Number = Field(0.01, gt=0)
    weight_decay: Number = Field(5e-4, ge=0)
    train_batchnorm: bool = True  # regular fine-tuning also re-estimates the BatchNorm statistics


# ResNet18's LoRA target sets; every set adapts the head (fc) too, so the sets differ only in the layers they add
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "fc": ("fc",),
    "fc+conv1": ("fc", "conv1"),
    "layer4": ("fc", "layer4.*.conv*", "layer4.*.downsample.0"),
    "all_convs": ("fc", "conv1", "layer*.*.conv*", "layer*.*.downsample.0"),
}


class LoraSettings(Schema):
    """params ``lora``: LoRA factors on the variant's targets, everything else frozen (BatchNorm included)."""

    lr: Number = Field(0.05, gt=0)
    weight_decay: Number = Field(0.0, ge=0)
    rank: int = Field(4, ge=1)
    alpha: Number = Field(1.0, gt=0)  # ΔW = α·(A·B), no division by r (PEFT: lora_alpha = α·r)
    # named target sets: a variant's ``targets`` may name one (sweeps: -S 'variants.lora_fc.targets=fc,layer4')
    target_sets: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(TARGET_SETS))

    @field_validator("target_sets", mode="before")
    @classmethod
    def _sets_are_lists(cls, sets: Any) -> Any:
        if isinstance(sets, dict):
            for name, patterns in sets.items():
                if isinstance(patterns, str):
                    patterns = [patterns]
                if not isinstance(patterns, (list, tuple)) or not patterns:
                    raise ValueError(f"set '{name}' must be a non-empty list of layer names or globs")
            return {k: tuple([v] if isinstance(v, str) else v) for k, v in sets.items()}
        return sets


class NoneSettings(Schema):
    """params ``none``: the pretrained model as is; no settings."""


# ----------------------------------------------------------------------------- the kinds


class Kind:
    """One kind of adaptation. A subclass sets ``settings`` and overrides what differs from 'train nothing'."""

    name: ClassVar[str]
    settings: ClassVar[type[Schema]]
    takes_targets: ClassVar[bool] = False  # whether a variant names the layers it adapts

    @property
    def trains(self) -> bool:
        """Whether there is anything to fit (the settings carry the optimiser's lr and weight_decay)."""
        return "lr" in self.settings.model_fields

    def prepare(self, model: nn.Module, spec: VariantSpec) -> None:
        """Make trainable (or wrap) what ``spec`` trains, in place, before training."""
        model.requires_grad_(False)

    def rebuild(self, model: nn.Module, meta: Mapping[str, Any]) -> None:
        """Turn a freshly built model into the architecture a checkpoint of this kind was saved from, in place."""

    def describe(self, spec: VariantSpec) -> str:
        """One line for humans (the report's variant table)."""
        raise NotImplementedError

    def trains_batchnorm(self, spec: VariantSpec) -> bool:
        """Whether training updates the BatchNorm running statistics."""
        return False

    def checkpoint_meta(self, spec: VariantSpec) -> dict[str, Any]:
        """What a checkpoint records of ``spec`` (all :meth:`rebuild` needs), JSON-able."""
        return {"name": spec.name, "adaptation": spec.adaptation, "targets": list(spec.targets),
                **({"target_set": spec.target_set} if spec.target_set else {}),
                **({"adversarial": spec.adversarial.model_dump(mode="json")} if spec.adversarial else {}),
                **spec.settings.model_dump(mode="json", exclude={"target_sets"})}


class Full(Kind):
    name, settings = "full", FullSettings

    def prepare(self, model: nn.Module, spec: VariantSpec) -> None:
        model.requires_grad_(True)

    def describe(self, spec: VariantSpec) -> str:
        if spec.settings.train_batchnorm:
            return "full fine-tuning (BatchNorm statistics re-estimated)"
        return "full fine-tuning, BatchNorm frozen"

    def trains_batchnorm(self, spec: VariantSpec) -> bool:
        return spec.settings.train_batchnorm


class Lora(Kind):
    name, settings, takes_targets = "lora", LoraSettings, True

    def prepare(self, model: nn.Module, spec: VariantSpec) -> None:
        from robustlora.models.lora import apply_lora

        apply_lora(model, list(spec.targets), rank=spec.settings.rank, alpha=spec.settings.alpha)

    def rebuild(self, model: nn.Module, meta: Mapping[str, Any]) -> None:
        from robustlora.models.lora import apply_lora

        missing = [k for k in ("targets", "rank", "alpha") if meta.get(k) is None]
        if missing:
            raise ModelError(f"LoRA checkpoint without {', '.join(missing)} in its variant entry; retrain the variant")
        apply_lora(model, list(meta["targets"]), rank=int(meta["rank"]), alpha=float(meta["alpha"]))

    def describe(self, spec: VariantSpec) -> str:
        where = ', '.join(spec.targets)
        where = f"{spec.target_set} ({where})" if spec.target_set and spec.target_set != where else where
        return f"LoRA r={spec.settings.rank}, α={spec.settings.alpha:g} on {where}"


class NoAdaptation(Kind):
    name, settings = "none", NoneSettings

    def describe(self, spec: VariantSpec) -> str:
        return "no adaptation (pretrained weights)"


KINDS: dict[str, Kind] = {k.name: k for k in (Full(), Lora(), NoAdaptation())}

# ----------------------------------------------------------------------------- what callers use


def prepare(model: nn.Module, spec: VariantSpec, *, train_head: bool = False) -> nn.Module:
    """Make trainable what ``spec`` trains; ``train_head`` (model.head: new): also the fresh head ``fc``, in full."""
    KINDS[spec.adaptation].prepare(model, spec)
    if train_head:
        model.fc.requires_grad_(True)
    return model


def rebuild(model: nn.Module, meta: Mapping[str, Any], source: str = "checkpoint") -> nn.Module:
    """The architecture of a saved variant, from its checkpoint meta (:func:`checkpoint_meta`), ready to load."""
    kind = KINDS.get(meta.get("adaptation"))  # type: ignore[arg-type]
    if kind is None:
        raise ModelError(f"{source}: unknown adaptation {meta.get('adaptation')!r} (known: {', '.join(KINDS)})")
    kind.rebuild(model, meta)
    return model


def describe(spec: VariantSpec) -> str:
    """One line for humans, e.g. 'LoRA r=4, α=1 on fc, conv1' or 'full fine-tuning, BatchNorm frozen'; adversarial
    fine-tuning is appended ('…; PGD-AT ε=4/255, 2 steps of 1.25·ε, random start')."""
    text = KINDS[spec.adaptation].describe(spec)
    return f"{text}; {spec.adversarial.label}" if spec.adversarial is not None else text


def trains_batchnorm(spec: VariantSpec) -> bool:
    """Whether training ``spec`` updates BatchNorm running statistics (train.fit's ``train_batchnorm``)."""
    return KINDS[spec.adaptation].trains_batchnorm(spec)


def checkpoint_meta(spec: VariantSpec) -> dict[str, Any]:
    """The variant entry a checkpoint records: name, adaptation, targets and the resolved settings."""
    return KINDS[spec.adaptation].checkpoint_meta(spec)


def training_seeds(spec: VariantSpec, seeds: tuple[int, ...] | list[int]) -> list[int]:
    """The training seeds of a variant: every seed of ``train.seeds`` for a kind that trains, the first one (one model)
    for a kind that does not."""
    return [int(s) for s in seeds] if KINDS[spec.adaptation].trains else [int(seeds[0])]
