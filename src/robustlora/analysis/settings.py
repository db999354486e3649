"""What the analysis needs from params, as plain values: the ε grid, the paper's arms, the tests' settings.

`Settings` is built by the report stage from params (attack.eps, report.*); every estimate, comparison and finding
reads its bootstrap and test settings from it, so one object decides every number of a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ROLES", "Settings"]

ROLES = ("baseline", "lora_fc", "lora_fc_conv1")  # the paper's arms, mapped onto variants by report.arms


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

    @property
    def baseline(self) -> str | None:
        return self.arms.get("baseline")

    @property
    def bootstrap(self) -> dict[str, Any]:
        """The keyword arguments of every bootstrap in robustlora.stats: n_boot, seed, confidence."""
        return {"n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence}
