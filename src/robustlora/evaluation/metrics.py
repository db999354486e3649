"""The study's robustness metrics over per-image rows (robustlora.attacks.outcomes), with 95 % intervals.

The study's definitions, for the N images of one (model, attack, ε):
- clean accuracy: share classified correctly before the attack;
- robust accuracy: share classified correctly before AND after the attack (RobustBench: an image wrong before the
  attack and right after it is not robust);
- attack success rate: among images classified correctly before the attack, the share misclassified after it
  (an image wrong before never counts; NaN with n = 0 when no image is correct);
- certainty: mean max-softmax probability, before and after the attack, over all images and over the
  originally-correct ones; plus the mean true-class probability before and after.
Proportions get Wilson score intervals (never zero width, also at 0 % and 100 %); means of probabilities get the
normal-approximation interval value ± z·sd/√n, clipped to [0, 1].
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd

from robustlora.stats import wilson_interval

__all__ = ["METRICS", "PROPORTIONS", "outcome_metrics"]

# metric -> (per-image value column, images it averages over: every image or the clean-correct ones)
_DEFINITIONS = {
    "clean_accuracy": ("clean_correct", "all"),
    "robust_accuracy": ("robust", "all"),
    "attack_success_rate": ("fooled", "clean_correct"),
    "certainty_clean": ("clean_max_prob", "all"),
    "certainty_adv": ("adv_max_prob", "all"),
    "certainty_clean_correct": ("clean_max_prob", "clean_correct"),
    "certainty_adv_correct": ("adv_max_prob", "clean_correct"),
    "true_class_prob_clean": ("clean_true_prob", "all"),
    "true_class_prob_adv": ("adv_true_prob", "all"),
}
METRICS = list(_DEFINITIONS)
PROPORTIONS = ("clean_accuracy", "robust_accuracy", "attack_success_rate")  # Wilson intervals; the rest are means
_OUTCOME_COLUMNS = ("clean_correct", "adv_correct", "clean_max_prob", "adv_max_prob", "clean_true_prob",
                    "adv_true_prob")


def outcome_metrics(df: pd.DataFrame, by: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """The study's metrics (see module doc) of per-image rows, per group of ``by`` columns.

    ``df`` needs the columns clean_correct, adv_correct, clean/adv_max_prob, clean/adv_true_prob. Returns the
    ``by`` columns then metric, value, ci_low, ci_high, n: one row per group (in order of first appearance) and
    metric (in METRICS order); n is the number of images the metric averages over. NaN value and interval where
    n = 0; NaN interval for a mean over one image.
    """
    by = list(by)
    missing = [c for c in (*by, *_OUTCOME_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"per-image rows lack column(s) {', '.join(missing)}")
    clean_ok = df["clean_correct"].to_numpy(bool)
    adv_ok = df["adv_correct"].to_numpy(bool)
    columns = {"clean_correct": clean_ok, "robust": clean_ok & adv_ok, "fooled": ~adv_ok}
    columns.update({c: df[c].to_numpy(np.float64) for c in _OUTCOME_COLUMNS[2:]})
    masks = {"all": np.ones(len(df)), "clean_correct": clean_ok.astype(np.float64)}
    # Σ mask, Σ value·mask and Σ value²·mask per group give n, mean and sd of every metric in one groupby
    sums = {}
    for k, (column, over) in enumerate(_DEFINITIONS.values()):
        v, m = np.asarray(columns[column], np.float64), masks[over]
        sums[f"n{k}"], sums[f"s{k}"], sums[f"q{k}"] = m, v * m, v * v * m
    table = pd.DataFrame(sums)
    if by:
        grouped = table.groupby([df[c].to_numpy() for c in by], sort=False, dropna=False).sum()
    else:
        grouped = table.sum().to_frame().T
    k_range = range(len(_DEFINITIONS))
    n = np.stack([grouped[f"n{k}"].to_numpy() for k in k_range], axis=1)
    s = np.stack([grouped[f"s{k}"].to_numpy() for k in k_range], axis=1)
    q = np.stack([grouped[f"q{k}"].to_numpy() for k in k_range], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = s / n
        sd = np.sqrt(np.maximum(q - n * value * value, 0.0) / (n - 1))
        half = NormalDist().inv_cdf(0.5 + confidence / 2) * sd / np.sqrt(n)
    low, high = np.clip(value - half, 0.0, 1.0), np.clip(value + half, 0.0, 1.0)
    low[n < 2], high[n < 2] = np.nan, np.nan
    is_prop = np.array([m in PROPORTIONS for m in METRICS])
    counts = np.rint(s[:, is_prop])  # proportions: Σ value·mask is the number of successes
    low[:, is_prop], high[:, is_prop] = wilson_interval(counts, n[:, is_prop], confidence)

    n_groups, n_metrics = value.shape
    out = pd.DataFrame(index=range(n_groups * n_metrics))
    keys = grouped.index.to_frame(index=False).to_numpy() if by else np.empty((1, 0))
    for j, c in enumerate(by):
        out[c] = pd.Series(np.repeat(keys[:, j], n_metrics)).astype(df[c].dtype)
    out["metric"] = np.tile(METRICS, n_groups)
    out["value"], out["ci_low"], out["ci_high"] = value.ravel(), low.ravel(), high.ravel()
    out["n"] = n.ravel().astype(np.int64)
    return out
