"""What the analysis needs from params, as plain values: the ε grid, the paper's arms, the tests' settings, the scope.

`Settings` is built by the report stage from params (attack.eps, report.*); every estimate, comparison and finding
reads its bootstrap and test settings from it, so one object decides every number of a report. `Scope` says what the
data and the models are (synthetic or real data, classes, the model's input size, the backbone, the epoch cap, the
val split) against the paper's configuration (`PAPER`): claims about absolute levels are testable only on the
paper's configuration, and the report opens with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ROLES", "PAPER", "Scope", "Settings"]

ROLES = ("baseline", "lora_fc", "lora_fc_conv1")  # the paper's arms, mapped onto variants by report.arms

# the paper's configuration: Tiny ImageNet (200 classes, 64 px, fed to the model at 64 px), ImageNet-pretrained
# ResNet18, up to 50 epochs with early stopping
PAPER: Mapping[str, Any] = {"source": "tiny-imagenet", "dataset": "Tiny ImageNet", "classes": 200, "input_size": 64,
                            "weights": "imagenet", "max_epochs": 50}


@dataclass(frozen=True)
class Scope:
    """The data and models a report's figures hold for, from params and the prepared data's info."""

    source: str  # data.source: 'synthetic' (the offline miniature) | 'tiny-imagenet' (or a user's zip in its layout)
    classes: int | None  # classes of the target domain
    image_size: int | None  # H of the H x H images
    input_size: int  # model.input_size: what the model resizes its input to
    weights: str  # model.weights: 'pretrain' (trained on the synthetic source) | 'imagenet' | a checkpoint path
    max_epochs: int | None  # the trained arms' epoch cap (train metrics); None = unknown
    n_val: int | None  # images in the val split; None = unknown
    backbones: int = 1  # pretrained backbones the arms were adapted from

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def differences(self) -> list[str]:
        """How the configuration differs from the paper's in what sets absolute levels, one phrase each; [] = same."""
        out = []
        if self.synthetic:
            out.append("synthetic data")
        if self.classes is not None and self.classes != PAPER["classes"]:
            out.append(f"{self.classes} classes (the paper: {PAPER['classes']})")
        if self.input_size != PAPER["input_size"]:
            out.append(f"a {self.input_size} px model input (the paper: {PAPER['input_size']} px)")
        if self.weights != PAPER["weights"]:
            out.append("a backbone " + ("pretrained on the synthetic source domain" if self.weights == "pretrain"
                                        else f"from {self.weights}") + " (the paper: ImageNet weights)")
        return out


@dataclass(frozen=True)
class Settings:
    """The ε grid (attack.eps, [0,1] pixel units), the report ε and the report section, as plain values."""

    eps_grid: tuple[float, ...]
    report_eps: float
    arms: Mapping[str, str | None]  # role (ROLES) -> variant name, None = absent
    reference_fgsm_asr: float = 0.65
    tolerance: float = 0.10
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    confidence: float = 0.95
    equivalence_margin: float = 0.05  # |effect| below this is "no effect" (TOST), shares in [0,1]
    power: float = 0.8  # the power of the minimal detectable effect
    scope: Scope | None = None  # None: the caller states no scope; every claim is judged as if testable

    @property
    def baseline(self) -> str | None:
        return self.arms.get("baseline")

    @property
    def paper_arms(self) -> list[str]:
        """The variants that play the paper's roles, in ROLES order, without repeats."""
        return list(dict.fromkeys(a for role in ROLES if (a := self.arms.get(role)) is not None))

    @property
    def bootstrap(self) -> dict[str, Any]:
        """The keyword arguments of every bootstrap in robustlora.stats: n_boot, seed, confidence."""
        return {"n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence}
