"""Transfer attacks: PGD examples crafted on one model (the surrogate), evaluated on another (the target).

Conventions (the same everywhere in robustlora):
- images are float NCHW in [0, 1] (uint8 NHWC as stored is converted); normalisation is inside the models, which
  return logits; ε and PGD step sizes are in [0, 1] pixel units (8/255, not 8);
- both models run in eval mode with autocast off (float32); their modes are restored afterwards;
- crafting is deterministic for a given seed: one generator, seeded once, draws every random start in order
  (batch by batch, ε by ε within a batch, as the attack suite's PGD does).

The target is never queried while crafting, so the rows' ``queries`` are NaN; every image is crafted and evaluated,
also those the surrogate or the target misclassifies (the metrics count only the target's clean-correct ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustlora.attacks.gradient import pgd
from robustlora.attacks.inputs import check_image_ids, check_images, progress_bar, resolve_device, to_batch
from robustlora.attacks.outcomes import LINF_TOL, attack_rows, concat_outcomes, linf_distances, model_outcomes
from robustlora.models.resnet import autocast_off, eval_mode

if TYPE_CHECKING:
    from robustlora.config import PgdConfig

__all__ = ["craft_pgd", "transfer_rows"]


def craft_pgd(surrogate: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
              eps_list: Sequence[float], pgd_cfg: PgdConfig, *, seed: int, device: str | torch.device | None = None,
              batch_size: int = 128, progress: bool | None = None) -> dict[float, torch.Tensor]:
    """PGD adversarials of ``surrogate`` at every ε of ``eps_list`` ([0, 1] pixels): {ε: float32 NCHW on the CPU}.

    Uses :func:`robustlora.attacks.gradient.pgd` with ``pgd_cfg.steps``, ``pgd_cfg.step_for(ε)``, random_start and
    restarts, its random starts drawn from a generator seeded with ``seed``. images: uint8 NHWC or float NCHW in
    [0, 1]; labels: int64 (N,). ``device``: 'auto', 'cpu', 'cuda', ... (default: where the surrogate is).
    """
    y_all = check_images(images, labels)
    eps_list = [float(e) for e in eps_list]
    device = _device(surrogate, device)
    surrogate.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    crafted: dict[float, list[torch.Tensor]] = {e: [] for e in eps_list}
    n = len(y_all)
    bar = progress_bar(-(-n // batch_size) * len(eps_list), "craft pgd", "run", progress)
    with eval_mode(surrogate), autocast_off(device), bar:
        for start in range(0, n, batch_size):
            x = to_batch(images, start, start + batch_size, device)
            y = y_all[start:start + batch_size].to(device)
            for e in eps_list:
                x_adv = pgd(surrogate, x, y, e, pgd_cfg.step_for(e), pgd_cfg.steps,
                            random_start=pgd_cfg.random_start, restarts=pgd_cfg.restarts, generator=generator)
                crafted[e].append(x_adv.float().cpu())
                bar.update()
    return {e: torch.cat(parts) for e, parts in crafted.items()}


def transfer_rows(target: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                  adversarials: dict[float, torch.Tensor], *, surrogate: str,
                  image_ids: Sequence[int] | np.ndarray | None = None, device: str | torch.device | None = None,
                  batch_size: int = 256) -> pd.DataFrame:
    """Evaluate ``adversarials`` ({ε: float NCHW in [0, 1]}, e.g. from :func:`craft_pgd`) on ``target``.

    images / labels: the clean images the adversarials were crafted from (uint8 NHWC or float NCHW in [0, 1]);
    every adversarial must lie within ε of its image in L∞ and in [0, 1]. Columns IMAGE_COLUMNS + EXTRA_COLUMNS,
    attack f'transfer_{surrogate}', queries NaN, detail ''; rows ordered by ε as given, then image.
    """
    y_all = check_images(images, labels)
    n = len(y_all)
    ids = check_image_ids(image_ids, n)
    device = _device(target, device)
    target.to(device)
    clean: list[dict[str, np.ndarray]] = []
    adv: dict[float, list[dict[str, np.ndarray]]] = {float(e): [] for e in adversarials}
    linf: dict[float, list[np.ndarray]] = {float(e): [] for e in adversarials}
    with torch.no_grad(), eval_mode(target), autocast_off(device):
        for start in range(0, n, batch_size):
            x = to_batch(images, start, start + batch_size, device)
            y = y_all[start:start + batch_size].to(device)
            clean.append(model_outcomes(target, x, y))
            for e, x_all in adversarials.items():
                x_adv = _adversarial_batch(x_all, x, float(e), start, n, surrogate)
                adv[float(e)].append(model_outcomes(target, x_adv, y))
                linf[float(e)].append(linf_distances(x_adv, x))
    before = concat_outcomes(clean)
    return pd.concat([attack_rows(f"transfer_{surrogate}", e, ids, y_all, before, concat_outcomes(adv[e]),
                                  linf=np.concatenate(linf[e])) for e in adv], ignore_index=True)


def _adversarial_batch(x_all: torch.Tensor, x: torch.Tensor, eps: float, start: int, n: int,
                       surrogate: str) -> torch.Tensor:
    """The adversarials of the clean batch ``x`` (images start.. of n), checked: shape, [0, 1], within ε."""
    if not isinstance(x_all, torch.Tensor) or not x_all.is_floating_point() or len(x_all) != n:
        got = (x_all.dtype, tuple(x_all.shape)) if isinstance(x_all, torch.Tensor) else type(x_all).__name__
        raise ValueError(f"transfer_{surrogate}: adversarials at ε = {eps:.6g} must be a float tensor with {n} "
                         f"images, got {got}")
    x_adv = x_all[start:start + len(x)].to(x.device, torch.float32)
    if x_adv.shape != x.shape:
        raise ValueError(f"transfer_{surrogate}: adversarials at ε = {eps:.6g} have shape "
                         f"{tuple(x_all.shape[1:])} per image, the images {tuple(x.shape[1:])}")
    worst = float((x_adv - x).abs().max())
    if worst > eps + LINF_TOL or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise ValueError(f"transfer_{surrogate}: adversarials at ε = {eps:.6g} leave the ε-ball ∩ [0, 1] "
                         f"(max ‖δ‖∞ {worst:.6g}); were they crafted from these images at this ε?")
    return x_adv


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """'auto' / 'cpu' / 'cuda' / a torch.device; None = where the model's parameters are."""
    return next(model.parameters()).device if device is None else resolve_device(device, "attack.device")
