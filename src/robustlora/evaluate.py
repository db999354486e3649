"""The attack suite the `attack` stage runs: clean, FGSM and PGD outputs per batch, then metrics per (attack, ε).

Per batch: clean logits once, one gradient for every FGSM ε, one PGD run per ε. Only per-image reductions are kept
(robustlora.metrics.image_stats), so memory does not grow with the number of classes × ε.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from robustlora.attacks import eval_mode, fgsm_sweep, pgd
from robustlora.metrics import ImageStats, concat_stats, eps_label, image_stats, metrics_from_stats
from robustlora.models import to_pixels

__all__ = ["attack_suite", "summarize", "flat_metrics", "SUITE_COLUMNS", "SHORT_NAMES"]

SUITE_COLUMNS = ["attack", "eps", "eps_label", "metric", "value", "ci_low", "ci_high", "n"]
# metric -> key in the DVC metrics JSON / MLflow names
SHORT_NAMES = {
    "attack_success_rate": "asr",
    "robust_accuracy": "robust_accuracy",
    "certainty_clean": "certainty_clean",
    "certainty_adv": "certainty_adv",
    "certainty_clean_correct": "certainty_clean_correct",
    "certainty_adv_correct": "certainty_adv_correct",
    "true_class_prob_clean": "true_class_prob_clean",
    "true_class_prob_adv": "true_class_prob_adv",
}


def _to_batch(images: torch.Tensor | np.ndarray, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Slice a batch and convert it on the device: uint8 NHWC -> float NCHW / 255; float NCHW as is."""
    batch = torch.as_tensor(images[start:stop]).to(device, non_blocking=True)
    return to_pixels(batch) if batch.dtype == torch.uint8 else batch.float()


def _check_images(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate layout and labels; return labels as an int64 CPU tensor."""
    dtype = images.dtype
    is_uint8 = dtype in (torch.uint8, np.uint8)
    if getattr(images, "ndim", 0) != 4:
        raise ValueError(f"images must be 4-d (uint8 NHWC or float NCHW), got shape {tuple(images.shape)}")
    if is_uint8 and images.shape[-1] not in (1, 3):
        raise ValueError(f"uint8 images must be NHWC with 1 or 3 channels last, got shape {tuple(images.shape)}")
    if not is_uint8 and images.shape[1] not in (1, 3):
        raise ValueError(f"float images must be NCHW in [0, 1] with 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to attack: images is empty")
    y = torch.as_tensor(labels)
    if y.dtype != torch.int64 or y.shape != (images.shape[0],):
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    return y.cpu()


def _is_count(v: float) -> bool:
    return int(v) == v and v >= 1


def _resolve_step(eps: float, step_size: float | None, rel_step_size: float | None) -> float:
    """PGD step in pixel units: absolute, or relative to ε."""
    return float(step_size) if step_size is not None else float(rel_step_size) * eps


def attack_suite(model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
                 fgsm_eps: Sequence[float], pgd_eps: Sequence[float], pgd_steps: int,
                 pgd_rel_step_size: float | None = None, pgd_step_size: float | None = None,
                 pgd_random_start: bool = True, pgd_restarts: int = 1, batch_size: int = 256,
                 device: str | torch.device | None = None, seed: int = 0, n_boot: int = 1000,
                 progress: bool | None = None) -> pd.DataFrame:
    """Attack ``model`` with FGSM and PGD at each ε ([0, 1] pixel units); return the tidy metrics table.

    images: uint8 NHWC (as stored by the data stages) or float NCHW in [0, 1]; labels: int64 (N,).
    PGD step: ``pgd_step_size`` (pixel units) or ``pgd_rel_step_size`` (step = rel · ε), exactly one.
    ``device`` defaults to the model's; the model is moved there. Deterministic given ``seed`` (PGD random starts,
    bootstrap). Columns: attack, eps, eps_label, metric, value, ci_low, ci_high, n.
    """
    fgsm_eps, pgd_eps = [float(e) for e in fgsm_eps], [float(e) for e in pgd_eps]
    if (pgd_step_size is None) == (pgd_rel_step_size is None) and (pgd_eps or pgd_step_size is not None):
        raise ValueError("give exactly one of pgd_step_size (pixel units) or pgd_rel_step_size (step = rel * eps), "
                         f"got pgd_step_size={pgd_step_size}, pgd_rel_step_size={pgd_rel_step_size}")
    if not fgsm_eps and not pgd_eps:
        raise ValueError("nothing to evaluate: fgsm_eps and pgd_eps are both empty")
    for name, eps_list in (("fgsm_eps", fgsm_eps), ("pgd_eps", pgd_eps)):
        labels_seen = [eps_label(e) for e in eps_list]  # also rejects negative ε
        if len(set(labels_seen)) != len(labels_seen):
            raise ValueError(f"{name} has duplicate values: {eps_list}")
    if pgd_eps and not (_is_count(pgd_steps) and _is_count(pgd_restarts)):
        raise ValueError(f"pgd_steps and pgd_restarts must be integers >= 1, got {pgd_steps} and {pgd_restarts}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    y_all = _check_images(images, labels)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    n = len(y_all)
    n_batches = math.ceil(n / batch_size)
    clean: list[ImageStats] = []
    adv: dict[tuple[str, float], list[ImageStats]] = {("fgsm", e): [] for e in fgsm_eps}
    adv.update({("pgd", e): [] for e in pgd_eps})
    runs_per_batch = (1 if fgsm_eps else 0) + len(pgd_eps)
    bar = tqdm(total=n_batches * runs_per_batch, desc="attack", unit="run",
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    with eval_mode(model), bar:
        for start in range(0, n, batch_size):
            x = _to_batch(images, start, start + batch_size, device)
            y = y_all[start:start + batch_size].to(device)
            clean.append(_stats(model, x, y))
            if fgsm_eps:
                bar.set_postfix_str(f"fgsm x{len(fgsm_eps)}")
                for e, x_adv in zip(fgsm_eps, fgsm_sweep(model, x, y, fgsm_eps)):
                    adv["fgsm", e].append(_stats(model, x_adv, y))
                bar.update()
            for e in pgd_eps:
                bar.set_postfix_str(f"pgd {eps_label(e)}")
                step = _resolve_step(e, pgd_step_size, pgd_rel_step_size)
                x_adv = pgd(model, x, y, e, step, pgd_steps, random_start=pgd_random_start,
                            restarts=pgd_restarts, generator=generator)
                adv["pgd", e].append(_stats(model, x_adv, y))
                bar.update()

    clean_all = concat_stats(clean)
    tables = []
    for (attack, e), parts in adv.items():
        table = metrics_from_stats(clean_all, concat_stats(parts), n_boot=n_boot, seed=seed)
        table.insert(0, "eps_label", eps_label(e))
        table.insert(0, "eps", e)
        table.insert(0, "attack", attack)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[SUITE_COLUMNS]


@torch.no_grad()
def _stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ImageStats:
    return image_stats(model(x).float(), y)


def _value(v: float) -> float | None:
    """NaN (e.g. success rate with no correct image) -> None, which JSON can store."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def summarize(df: pd.DataFrame) -> dict:
    """Nested dict for the DVC metrics JSON: {"clean_accuracy": v, "fgsm": {"eps_8": {"asr": v, ...}}, "pgd": ...}.

    NaN values become None (valid JSON).
    """
    clean = df.loc[df["metric"] == "clean_accuracy", "value"]
    out: dict = {"clean_accuracy": _value(float(clean.iloc[0])) if len(clean) else None}
    for row in df[df["metric"].isin(SHORT_NAMES)].itertuples(index=False):
        out.setdefault(row.attack, {}).setdefault(row.eps_label, {})[SHORT_NAMES[row.metric]] = _value(float(row.value))
    return out


def flat_metrics(df: pd.DataFrame) -> dict[str, float]:
    """Flat names for MLflow: 'clean_accuracy', 'pgd/eps_8/asr', 'fgsm/eps_2/robust_accuracy', ... (NaN kept)."""
    clean = df.loc[df["metric"] == "clean_accuracy", "value"]
    out = {"clean_accuracy": float(clean.iloc[0])} if len(clean) else {}
    for row in df[df["metric"].isin(SHORT_NAMES)].itertuples(index=False):
        out[f"{row.attack}/{row.eps_label}/{SHORT_NAMES[row.metric]}"] = float(row.value)
    return out
