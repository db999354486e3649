"""The ``report`` section (the main ε, the reference success rate, the statistics' settings, the equivalence margin
and which variant plays each of the paper's roles) and ``mlflow`` (the experiment every run is logged under)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from robustlora.config.schema import Number, Schema, Text

Arm = Literal["baseline", "lora_fc", "lora_fc_conv1"]  # the paper's roles
ARMS: tuple[str, ...] = get_args(Arm)


class ReportConfig(Schema):
    eps: Number = Field(8 / 255, ge=0, le=1)  # the main ε of findings and comparisons; one of attack.eps
    reference_fgsm_asr: Number = Field(0.65, ge=0, le=1)  # the paper's baseline FGSM success rate
    tolerance: Number = Field(0.10, ge=0, le=1)  # "about the reference" = within ± tolerance
    # an effect smaller than this (a share, 0.05 = 5 points) counts as no effect (TOST equivalence test): below the
    # smallest difference the paper reports as an effect (+6 points of clean accuracy, lora_fc vs baseline), so an
    # "equivalent" verdict also rules out the paper's effect size
    equivalence_margin: Number = Field(0.05, gt=0, lt=1)
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
