"""Which attacks the analysis knows and how the report names them: FGSM and PGD first, then the cross-checks.

The attack stage writes `fgsm` and `pgd` (and `pgd_strong`, the convergence check's PGD with more steps and
restarts); the cross-check stages write `autoattack`, the black-box attacks of robustlora.config.BLACKBOX_ATTACKS and
`transfer_<surrogate>`. Names of the convergence check follow its params (attack.convergence).
"""

from __future__ import annotations

from typing import Any

from robustlora.config import BLACKBOX_ATTACKS, ConvergenceConfig

__all__ = ["ATTACK_ORDER", "ATTACK_NAMES", "WHITE_BOX", "BLACK_BOX", "TRANSFER_PREFIX", "attack_name",
           "transfer_source", "strong_pgd_name", "convergence_title"]

ATTACK_ORDER = ("fgsm", "pgd")
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD"}
WHITE_BOX = ("autoattack", "pgd_strong")
BLACK_BOX = BLACKBOX_ATTACKS
TRANSFER_PREFIX = "transfer_"
_NAMES = {**ATTACK_NAMES, "autoattack": "AutoAttack", "square": "Square", "hopskipjump": "HopSkipJump",
          "boundary": "Boundary", "zoo": "ZOO", "worst_case": "Worst case over attacks"}


def strong_pgd_name(convergence: Any = None) -> str:
    """'PGD ×10 steps, 5 restarts': the convergence check's attack, from an attack.convergence (default: params')."""
    c = convergence if convergence is not None else ConvergenceConfig()
    return f"PGD ×{c.steps_factor} steps, {c.restarts} restarts"


def convergence_title(convergence: Any = None) -> str:
    """What the convergence check asserts, from an attack.convergence (default: params' defaults)."""
    c = convergence if convergence is not None else ConvergenceConfig()
    return (f"PGD with {c.steps_factor}x the steps and {c.restarts} restarts fools no more images than PGD (within "
            "the noise)")


def attack_name(attack: str, convergence: Any = None) -> str:
    """Display name: 'AutoAttack', 'Square', 'PGD transfer from baseline', ... ('transfer_' alone: 'Transfer');
    `pgd_strong` as `strong_pgd_name(convergence)`."""
    source = transfer_source(attack)
    if source == "":
        return "Transfer"
    if source is not None:
        return f"PGD transfer from {source}"
    return strong_pgd_name(convergence) if attack == "pgd_strong" else _NAMES.get(attack, attack)


def transfer_source(attack: str) -> str | None:
    """The surrogate variant of a transfer attack name ('transfer_baseline' -> 'baseline'), else None."""
    return attack[len(TRANSFER_PREFIX):] if attack.startswith(TRANSFER_PREFIX) else None
