"""Robustness metrics of one attack at one ε, with seeded 95% percentile-bootstrap confidence intervals.

The study's definitions, for N evaluated images:
- clean / robust accuracy: share classified correctly before / after the attack;
- attack success rate: among images classified correctly before the attack, the share misclassified after it
  (an image wrong before the attack never counts; NaN with n = 0 when no image is correct);
- model certainty: mean max-softmax probability, before and after the attack, over all images and over the
  originally-correct ones; plus the mean true-class probability before and after.

Per-image quantities are reduced first (``image_stats``) so a large evaluation never keeps full logits around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

__all__ = ["ImageStats", "image_stats", "concat_stats", "attack_metrics", "metrics_from_stats", "eps_label",
           "METRICS", "COLUMNS"]

COLUMNS = ["metric", "value", "ci_low", "ci_high", "n"]
METRICS = ["clean_accuracy", "robust_accuracy", "attack_success_rate", "certainty_clean", "certainty_adv",
           "certainty_clean_correct", "certainty_adv_correct", "true_class_prob_clean", "true_class_prob_adv"]
_BOOT_CHUNK = 64  # bootstrap resamples per matrix product: bounds memory at 64·N floats


@dataclass(frozen=True)
class ImageStats:
    """Per-image reductions of a classifier's output: correctness, max-softmax prob, true-class prob."""

    correct: np.ndarray  # bool (N,)
    confidence: np.ndarray  # float64 (N,), max class probability
    true_prob: np.ndarray  # float64 (N,), probability of the true class

    def __len__(self) -> int:
        return len(self.correct)


def image_stats(outputs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
                probs: bool = False) -> ImageStats:
    """Reduce (N, C) logits (or probabilities when ``probs``) and (N,) int labels to per-image stats."""
    out = torch.as_tensor(outputs).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu()
    if out.dim() != 2 or y.shape != out.shape[:1]:
        raise ValueError(f"expected outputs (N, C) and labels (N,), got {tuple(out.shape)} and {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise ValueError(f"labels must lie in [0, {out.shape[1] - 1}], got [{int(y.min())}, {int(y.max())}]")
    if probs:
        # probabilities passed as logits (or vice versa) would give silently wrong certainties
        row_sums = out.sum(1)
        if bool((out < 0).any()) or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
            raise ValueError("probs=True but rows are not probability vectors (non-negative, summing to 1); "
                             "pass logits with probs=False")
        p = out
    else:
        p = torch.softmax(out, dim=1)
    conf, pred = p.max(dim=1)
    true_prob = p.gather(1, y[:, None])[:, 0]
    return ImageStats((pred == y).numpy(), conf.numpy(), true_prob.numpy())


def concat_stats(parts: list[ImageStats]) -> ImageStats:
    """Concatenate per-batch stats in order."""
    return ImageStats(*(np.concatenate([getattr(s, f) for s in parts]) for f in ("correct", "confidence", "true_prob")))


def _bootstrap_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Resample images with replacement; return (n_boot, K) ratios Σnum/Σden per resample (NaN where Σden = 0)."""
    n = len(num)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, num.shape[1]))
    for start in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - start)
        # draw N image indices with replacement per resample, then count each image's multiplicity
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = (counts @ num) / (counts @ den)
    return out


def metrics_from_stats(clean: ImageStats, adv: ImageStats, *, n_boot: int = 1000, seed: int = 0,
                       confidence_level: float = 0.95) -> pd.DataFrame:
    """The study's metrics for one attack at one ε; columns metric, value, ci_low, ci_high, n (see module doc).

    CIs are percentile bootstrap over images (``n_boot`` resamples, seeded); ratio metrics such as the success rate
    are recomputed over each resample's originally-correct images. ``n_boot=0`` gives NaN CIs.
    """
    if len(clean) != len(adv):
        raise ValueError(f"clean and adversarial stats cover different images: {len(clean)} vs {len(adv)}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    every = np.ones(len(clean))
    ok = clean.correct.astype(np.float64)
    # each metric is Σ(value·mask) / Σ(mask): mask = all images, or the originally-correct ones
    spec = {
        "clean_accuracy": (clean.correct, every),
        "robust_accuracy": (adv.correct, every),
        "attack_success_rate": (~adv.correct, ok),
        "certainty_clean": (clean.confidence, every),
        "certainty_adv": (adv.confidence, every),
        "certainty_clean_correct": (clean.confidence, ok),
        "certainty_adv_correct": (adv.confidence, ok),
        "true_class_prob_clean": (clean.true_prob, every),
        "true_class_prob_adv": (adv.true_prob, every),
    }
    num = np.stack([np.asarray(v, np.float64) * m for v, m in spec.values()], axis=1)
    den = np.stack([m for _, m in spec.values()], axis=1)
    n = den.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = num.sum(0) / n
    ci = np.full((2, len(spec)), np.nan)
    if n_boot > 0 and len(clean) > 0:
        boot = _bootstrap_ratios(num, den, n_boot, seed)
        tail = 100 * (1 - confidence_level) / 2
        for k in np.flatnonzero(n > 0):
            ci[:, k] = np.nanpercentile(boot[:, k], [tail, 100 - tail])
    return pd.DataFrame({"metric": list(spec), "value": value, "ci_low": ci[0], "ci_high": ci[1],
                         "n": n.astype(np.int64)})[COLUMNS]


def attack_metrics(clean_outputs: torch.Tensor | np.ndarray, adv_outputs: torch.Tensor | np.ndarray,
                   labels: torch.Tensor | np.ndarray, *, probs: bool = False, n_boot: int = 1000, seed: int = 0,
                   confidence_level: float = 0.95) -> pd.DataFrame:
    """Metrics from clean and adversarial (N, C) logits (or probabilities when ``probs``) and (N,) labels."""
    return metrics_from_stats(image_stats(clean_outputs, labels, probs=probs),
                              image_stats(adv_outputs, labels, probs=probs),
                              n_boot=n_boot, seed=seed, confidence_level=confidence_level)


def eps_label(eps: float) -> str:
    """Name ε (in [0, 1] pixel units) for metric keys: whole multiples of 1/255 as 'eps_8', else 'eps_0.5'."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 in [0, 1] pixel units, got {eps}")
    k = round(eps * 255)
    if abs(eps * 255 - k) < 1e-6:
        return f"eps_{k}"
    # six decimals, trailing zeros trimmed (1/510 -> 0.001961); tiny ε falls back to scientific notation
    text = f"{eps:.6f}".rstrip("0").rstrip(".")
    return f"eps_{text if text != '0' else f'{eps:.6g}'}"
