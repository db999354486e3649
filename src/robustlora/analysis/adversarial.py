"""Adversarial fine-tuning in the report: each adversarially trained arm's accuracies and cost, and its gain over
its standard twin.

An adversarially trained variant (params `variants.<name>.adversarial`: Madry PGD-AT or TRADES) is compared with its
standard twin (same adaptation, targets and settings, trained clean) on the attack stage's images and on
AutoAttack's first images, paired (robustlora.analysis.compare), one Holm family per table. Shares in [0, 1], ε and
step sizes in [0, 1] pixel units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora.analysis.compare import comparison_table, compare
from robustlora.analysis.estimates import cell_estimate
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import Outcomes, ResultSet, result_set, table_cells, validate_table
from robustlora.errors import DataError, ParamError
from robustlora.formatting import eps_key, format_eps

__all__ = ["AdversarialArm", "adversarial_arms", "AUTOATTACK_COLUMNS", "ADVERSARIAL_COLUMNS", "DIFFERENCE_COLUMNS",
           "SHARE_INTERVAL", "defence_eps", "adversarial_table", "adversarial_differences"]

AUTOATTACK_COLUMNS = ("variant", "seed", "attack", "eps", "image", "clean_correct", "adv_correct")
ADVERSARIAL_COLUMNS = ["arm", "quantity", "attack", "eps", "value", "ci_low", "ci_high", "n_images", "n_seeds",
                       "interval"]
DIFFERENCE_COLUMNS = ["arm", "standard", "quantity", "attack", "eps", "diff", "ci_low", "ci_high", "p", "p_holm",
                      "n_images", "verdict"]
SHARE_INTERVAL = "hierarchical bootstrap (Wilson-widened)"  # how a share's interval was made (the `interval` column)


@dataclass(frozen=True)
class AdversarialArm:
    """An adversarially fine-tuned variant; ε and step size in [0, 1] pixel units, β only for TRADES."""

    name: str
    standard: str | None  # its standard twin (same adaptation, clean training), None if it has none
    method: str  # "pgd" (Madry PGD-AT) or "trades"
    eps: float
    steps: int
    step_size: float
    random_start: bool = True
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("pgd", "trades"):
            raise ParamError(f"variants.{self.name}.adversarial.method must be 'pgd' or 'trades', got {self.method!r}")
        if self.method == "trades" and self.beta is None:
            raise ParamError(f"variants.{self.name}.adversarial.beta is required for TRADES")

    @property
    def label(self) -> str:
        """'PGD-AT ε=4/255, 1 step of 1.25·ε, random start' or 'TRADES β=6, ε=4/255, 2 steps of 1.25·ε' (as
        params' AdversarialSettings.label)."""
        head = "PGD-AT" if self.method == "pgd" else f"TRADES β={self.beta:g},"
        start = ", random start" if self.method == "pgd" and self.random_start else ""
        return (f"{head} ε={format_eps(self.eps)}, {self.steps} step{'s' if self.steps > 1 else ''} of "
                f"{self.step_size / self.eps:.3g}·ε{start}")


def adversarial_arms(variants: Mapping[str, Any]) -> list[AdversarialArm]:
    """The adversarially trained variants of params (``VariantSpec``s by name), each with its standard twin: the
    variant with the same adaptation, targets and settings trained without ``adversarial`` (None if none)."""
    out = []
    for name, spec in variants.items():
        at = getattr(spec, "adversarial", None)
        if at is None:
            continue
        twins = [n for n, s in variants.items() if getattr(s, "adversarial", None) is None
                 and (s.adaptation, tuple(s.targets), s.settings) == (spec.adaptation, tuple(spec.targets),
                                                                       spec.settings)]
        out.append(AdversarialArm(name, twins[0] if twins else None, at.method, at.eps, at.steps, at.step_size,
                                  at.random_start, at.beta if at.method == "trades" else None))
    return out


def defence_eps(settings: Settings, at_arms: Sequence[AdversarialArm]) -> list[float]:
    """The grid's ε and every training ε, ascending (a sanity ε feeds the checks, not the defences)."""
    return sorted({eps_key(e) for e in settings.eps_grid} | {eps_key(a.eps) for a in at_arms})


def _autoattack(autoattack: pd.DataFrame | None, settings: Settings,
                at_arms: Sequence[AdversarialArm]) -> dict[tuple, Outcomes]:
    """AutoAttack's cells at the ε of `defence_eps`, ε ascending (certainties NaN: AutoAttack records none)."""
    if autoattack is None or autoattack.empty:
        return {}
    keep = set(defence_eps(settings, at_arms))
    table = validate_table(autoattack, AUTOATTACK_COLUMNS, what="AutoAttack results", stage="autoattack")
    cells = table_cells(table, "variant", ("clean_correct", "adv_correct"), (), what="AutoAttack results",
                        stage="autoattack")
    return {(arm, attack, eps): Outcomes(arm, attack, eps, c.seeds, c.images, c.x["clean_correct"],
                                         c.x["adv_correct"], *[np.full(c.x["adv_correct"].shape, np.nan)] * 2)
            for (arm, attack, eps), c in sorted(cells.items(), key=lambda kv: kv[0][2]) if eps in keep}


def adversarial_table(attack_results: pd.DataFrame | ResultSet, settings: Settings, *,
                      at_arms: Sequence[AdversarialArm] = (), arms: Sequence[str] | None = None,
                      train_metrics: Mapping[str, Any] | None = None,
                      autoattack: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm: clean accuracy, PGD robust accuracy at every grid and training ε, AutoAttack robust accuracy at
    those ε, training cost.

    Shares in [0, 1] with hierarchical CIs (analysis.cell_estimate); train_seconds: wall-clock seconds per training
    run, mean over seeds with the min–max over seeds (interval 'seed range': no t quantile without scipy);
    trainable_params: exact. eps NaN and attack '' where they do not apply. Columns: ADVERSARIAL_COLUMNS.
    """
    rs, aa = result_set(attack_results), _autoattack(autoattack, settings, at_arms)
    rows = []

    def add(arm: str, quantity: str, attack: str, eps: float, values: Mapping[str, Any], interval: str) -> None:
        rows.append({"arm": arm, "quantity": quantity, "attack": attack, "eps": eps, **values, "interval": interval})

    def share(arm: str, quantity: str, attack: str, eps: float, cell: Outcomes, metric: str) -> None:
        add(arm, quantity, attack, eps, asdict(cell_estimate(cell, metric, settings)), SHARE_INTERVAL)

    for arm in arms if arms is not None else rs.arms:
        if arm in rs.arms:
            share(arm, "clean_accuracy", "", math.nan, rs.clean(arm), "clean_accuracy")
            for eps in defence_eps(settings, at_arms):
                if (cell := rs.get(arm, "pgd", eps)) is not None:
                    share(arm, "pgd_robust_accuracy", "pgd", eps, cell, "robust_accuracy")
        for (a, attack, eps), cell in aa.items():
            if a == arm:
                share(arm, "autoattack_robust_accuracy", attack, eps, cell, "robust_accuracy")
        seeds = ((train_metrics or {}).get(arm) or {}).get("seeds") or {}
        per_seed = [seeds[k] for k in sorted(seeds, key=int)]
        if secs := [float(s["train_seconds"]) for s in per_seed if s.get("train_seconds") is not None]:
            add(arm, "train_seconds", "", math.nan, {"value": float(np.mean(secs)), "ci_low": min(secs),
                                                     "ci_high": max(secs), "n_images": 0, "n_seeds": len(secs)},
                "seed range")
        if params := [s["trainable_params"] for s in per_seed if s.get("trainable_params") is not None]:
            add(arm, "trainable_params", "", math.nan, {"value": float(params[0]), "ci_low": math.nan,
                                                        "ci_high": math.nan, "n_images": 0, "n_seeds": len(params)},
                "exact")
    return pd.DataFrame(rows, columns=ADVERSARIAL_COLUMNS)


def adversarial_differences(attack_results: pd.DataFrame | ResultSet, settings: Settings,
                            at_arms: Sequence[AdversarialArm], autoattack: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per adversarially trained arm with a twin: AT − standard, paired on images, in [0, 1] share units.

    Clean accuracy (all attacked images), PGD and AutoAttack robust accuracy at each grid and training ε.
    p: exact McNemar on per-image majority votes; p_holm: one Holm family over the table; a twin without results
    gives one 'not evaluated' row. Columns: DIFFERENCE_COLUMNS.
    """
    rs, aa = result_set(attack_results), _autoattack(autoattack, settings, at_arms)
    rows = []
    for at in (a for a in at_arms if a.standard is not None):
        std = at.standard
        if at.name not in rs.arms or std not in rs.arms:
            pairs = [("clean_accuracy", "", math.nan, None, None)]
        else:
            pairs = [("clean_accuracy", "", math.nan, rs.clean(at.name).clean_correct, rs.clean(std).clean_correct)]
            for eps in defence_eps(settings, at_arms):
                if (a := rs.get(at.name, "pgd", eps)) is not None and (b := rs.get(std, "pgd", eps)) is not None:
                    pairs.append(("pgd_robust_accuracy", "pgd", eps, a.robust, b.robust))
        for (arm, attack, eps), a in aa.items():
            if arm == at.name and (b := aa.get((std, attack, eps))) is not None:
                if not np.array_equal(a.images, b.images):
                    raise DataError(f"AutoAttack ε = {format_eps(eps)}: {at.name} and {std} cover different images; "
                                    "both must run on the same first images of the attack subset")
                pairs.append(("autoattack_robust_accuracy", attack, eps, a.robust, b.robust))
        rows += [({"arm": at.name, "standard": std, "quantity": q, "attack": attack, "eps": eps},
                  compare(a, b, settings)) for q, attack, eps, a, b in pairs]
    return comparison_table(rows, DIFFERENCE_COLUMNS, settings.alpha)
