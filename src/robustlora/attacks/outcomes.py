"""Per-image rows of an attack: each image's outcome on its clean and its adversarial input, as the columns every
attack's results table shares.

An outcome (:func:`image_outcomes`) is, per image, the model's prediction, whether it is correct, the true class's
and the largest softmax probability, and the margin of the true logit over the largest other one. A row pairs the
clean and the adversarial outcome of one image under one attack at one ε ([0, 1] pixels). The attack suite
(robustlora.evaluation.suite) adds gradient-masking diagnostics (DIAGNOSTIC_COLUMNS there); AutoAttack, the black-box
and the transfer attacks add EXTRA_COLUMNS (:func:`attack_rows`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustlora.formatting import eps_label
from robustlora.models.resnet import autocast_off, eval_mode

__all__ = ["IMAGE_COLUMNS", "EXTRA_COLUMNS", "LINF_TOL", "image_outcomes", "output_kind", "model_outcomes",
           "batched_logits", "concat_outcomes", "linf_distances", "outcome_columns", "attack_rows"]

# every attack's per-image columns; the stages prepend variant and seed
IMAGE_COLUMNS = ["attack", "eps", "eps_label", "image", "label", "clean_pred", "adv_pred", "clean_correct",
                 "adv_correct", "clean_true_prob", "adv_true_prob", "clean_max_prob", "adv_max_prob", "clean_margin",
                 "adv_margin"]
# the attacks beyond FGSM / PGD (robustlora.attacks.autoattack, .blackbox, .transfer) add: queries spent until the image
# was first fooled within ε (NaN: not fooled, not attacked or not counted), ‖x_adv − x‖∞, and a free-text detail
# (AutoAttack: the component that fooled the image)
EXTRA_COLUMNS = ["queries", "linf", "detail"]
LINF_TOL = 1e-6  # float32 rounding of x ± ε: a point this far past the ε-ball still counts as inside it
_PAIRED = ("correct", "true_prob", "max_prob", "margin")  # outcome keys written once for clean, once for adv


def image_outcomes(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image outcome of (N, C) logits and (N,) int labels.

    Returns pred (int16 argmax), correct (bool), true_prob and max_prob (float32 softmax probabilities) and margin
    (float32: the true class's logit minus the largest other logit, > 0 iff the image is classified correctly).
    """
    z = logits.detach().float().cpu().double()  # float64 on the CPU: MPS has no float64
    y = torch.as_tensor(labels).detach().cpu()
    if z.dim() != 2 or z.shape[1] < 2 or y.shape != z.shape[:1]:
        raise ValueError(f"expected logits (N, C >= 2) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}], got [{int(y.min())}, {int(y.max())}]")
    p = torch.softmax(z, dim=1)
    max_prob, pred = p.max(dim=1)
    true_logit = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], -math.inf).max(dim=1).values
    return {
        "pred": pred.numpy().astype(np.int16),
        "correct": (pred == y).numpy(),
        "true_prob": p.gather(1, y[:, None])[:, 0].numpy().astype(np.float32),
        "max_prob": max_prob.numpy().astype(np.float32),
        "margin": (true_logit - other).numpy().astype(np.float32),
    }


def output_kind(outputs: torch.Tensor, atol: float = 1e-4) -> np.ndarray:
    """Per row of a model's (N, C) outputs: 'probabilities' (non-negative, summing to 1), 'log-probabilities'
    (non-positive, logsumexp 0) or 'logits'. Attacks on cross-entropy need logits: a softmax inside the model
    flattens the loss and masks its gradients (Carlini et al. 2019)."""
    z = outputs.detach().float().cpu().double()
    probs = (z.min(dim=1).values >= 0) & ((z.sum(dim=1) - 1).abs() <= atol)
    log_probs = (z.max(dim=1).values <= 0) & (torch.logsumexp(z, dim=1).abs() <= atol)
    kind = np.full(len(z), "logits", dtype=object)
    kind[log_probs.numpy()] = "log-probabilities"
    kind[probs.numpy()] = "probabilities"
    return kind


@torch.no_grad()
def model_outcomes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """:func:`image_outcomes` of ``model`` on x (float NCHW in [0, 1]), in one forward pass, in the caller's mode."""
    return image_outcomes(model(x), y)


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Float32 logits of x (float NCHW in [0, 1]) in batches of ``batch_size``, in eval mode with autocast off."""
    with eval_mode(model), autocast_off(x.device):
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def concat_outcomes(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch outcomes concatenated in order."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def linf_distances(x_adv: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """‖x_adv − x‖∞ per image, as a numpy array on the CPU (float32 for float32 images)."""
    return (x_adv - x).abs().flatten(1).amax(1).cpu().numpy()


def outcome_columns(attack: str, eps: float, image_ids: np.ndarray, labels: torch.Tensor,
                    clean: dict[str, np.ndarray], adv: dict[str, np.ndarray]) -> dict[str, Any]:
    """The IMAGE_COLUMNS of one attack at one ε ([0, 1] pixels), as a dict of columns (scalars broadcast), from the
    :func:`image_outcomes` of the clean and the adversarial inputs of the images ``image_ids`` (labels int64 (N,))."""
    return {
        "attack": attack, "eps": np.float64(eps), "eps_label": eps_label(eps),
        "image": np.asarray(image_ids).astype(np.int32), "label": labels.cpu().numpy().astype(np.int16),
        "clean_pred": clean["pred"], "adv_pred": adv["pred"],
        **{f"{when}_{key}": out[key] for key in _PAIRED for when, out in (("clean", clean), ("adv", adv))},
    }


def attack_rows(attack: str, eps: float, image_ids: np.ndarray, labels: torch.Tensor,
                clean: dict[str, np.ndarray], adv: dict[str, np.ndarray], *, linf: np.ndarray,
                queries: np.ndarray | None = None, detail: np.ndarray | None = None) -> pd.DataFrame:
    """Per-image rows (IMAGE_COLUMNS + EXTRA_COLUMNS) of one attack at one ε from :func:`image_outcomes` of the
    clean and adversarial inputs; linf: ‖x_adv − x‖∞ per image; queries default to NaN, detail to ''."""
    n = len(image_ids)
    return pd.DataFrame({
        **outcome_columns(attack, eps, image_ids, labels, clean, adv),
        "queries": np.full(n, np.nan) if queries is None else np.asarray(queries, np.float64),
        "linf": np.asarray(linf, np.float32),
        "detail": np.full(n, "", dtype=object) if detail is None else np.asarray(detail, dtype=object),
    })[IMAGE_COLUMNS + EXTRA_COLUMNS]
