"""What params knows of each kind of adaptation: its settings section (``full``, ``lora``, ``none``; a variant may
override any of its keys), whether a variant names the layers it adapts, and whether it trains at all.

:data:`KIND_SCHEMAS` is the registry the params schema validates variants against. What a kind *does* to a model
(which weights train, how a checkpoint is rebuilt, how it is described) lives with the models, in
:mod:`robustlora.models.adaptation`, one class per entry here: a new kind of arm is one settings schema and one
entry here, one class there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from robustlora.config.schema import Number, Schema


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


@dataclass(frozen=True)
class KindSchema:
    """One kind of adaptation as params sees it: ``name`` (its params section and a variant's ``adaptation``), its
    ``settings`` schema, and whether a variant names the layers it adapts (``takes_targets``)."""

    name: str
    settings: type[Schema]
    takes_targets: bool = False

    @property
    def trains(self) -> bool:
        """Whether there is anything to fit (the settings carry the optimiser's lr and weight_decay)."""
        return "lr" in self.settings.model_fields


KIND_SCHEMAS: dict[str, KindSchema] = {k.name: k for k in (
    KindSchema("full", FullSettings),
    KindSchema("lora", LoraSettings, takes_targets=True),
    KindSchema("none", NoneSettings),
)}
