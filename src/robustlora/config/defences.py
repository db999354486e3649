"""The defence sections: ``squeeze`` (feature squeezing as a detector, and the adaptive attack on it) and
``switching`` (a standard and a robust LoRA adapter on one backbone, the detector choosing per input). ε values are
in [0,1] pixel units and must be values of attack.eps (checked in :class:`robustlora.config.params.Params`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from robustlora.config.schema import EpsGridOrDefault, Invalid, Number, Schema


class AdaptiveSqueezeConfig(Schema):
    """``squeeze.adaptive``: PGD on classifier + detector, through the squeezers by BPDA
    (robustlora.defences.squeeze)."""

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
    eps: EpsGridOrDefault = None  # values of attack.eps; None = report.eps
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
    eps: EpsGridOrDefault = None  # values of attack.eps; None = report.eps
    cost_batch_size: int = Field(64, ge=1)  # the batch of the latency measurement
    cost_repeats: int = Field(20, ge=1)  # timed repetitions (the report gives the median and the 5-95 % range)
