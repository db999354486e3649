"""What each kind of adaptation does to a model, in one place: what it trains, how a checkpoint of it is rebuilt,
how it is described.

A kind is one class here and one entry in :data:`KINDS`; its params side (the settings section of the same name,
whether a variant names targets, whether it trains) is its :class:`~robustlora.config.adaptation.KindSchema` in
:data:`robustlora.config.adaptation.KIND_SCHEMAS`. Training, checkpoint loading and the report ask this module
instead of branching on ``full`` / ``lora`` / ``none``, so a new kind of arm (adversarial, squeezed, switched) is
one settings schema and one entry there, one class and one entry here.

Torch-free at import: torch and :mod:`robustlora.models.lora` are imported where a model is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from robustlora.config.adaptation import KIND_SCHEMAS, KindSchema
from robustlora.config.schema import Schema
from robustlora.errors import ModelError

if TYPE_CHECKING:
    import torch.nn as nn

    from robustlora.config.params import VariantSpec

# ----------------------------------------------------------------------------- the kinds


class Kind:
    """One kind of adaptation. A subclass sets its ``schema`` (params' side) and overrides what differs from
    'train nothing'."""

    schema: ClassVar[KindSchema]

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def settings(self) -> type[Schema]:
        return self.schema.settings

    @property
    def takes_targets(self) -> bool:
        """Whether a variant names the layers it adapts."""
        return self.schema.takes_targets

    @property
    def trains(self) -> bool:
        """Whether there is anything to fit (the settings carry the optimiser's lr and weight_decay)."""
        return self.schema.trains

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
    schema = KIND_SCHEMAS["full"]

    def prepare(self, model: nn.Module, spec: VariantSpec) -> None:
        model.requires_grad_(True)

    def describe(self, spec: VariantSpec) -> str:
        if spec.settings.train_batchnorm:
            return "full fine-tuning (BatchNorm statistics re-estimated)"
        return "full fine-tuning, BatchNorm frozen"

    def trains_batchnorm(self, spec: VariantSpec) -> bool:
        return spec.settings.train_batchnorm


class Lora(Kind):
    schema = KIND_SCHEMAS["lora"]

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
    schema = KIND_SCHEMAS["none"]

    def describe(self, spec: VariantSpec) -> str:
        return "no adaptation (pretrained weights)"


KINDS: dict[str, Kind] = {k.name: k for k in (Full(), Lora(), NoAdaptation())}
assert KINDS.keys() == KIND_SCHEMAS.keys(), "every kind of adaptation in params needs its class here, and only those"

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
