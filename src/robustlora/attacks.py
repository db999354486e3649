"""Untargeted L∞ attacks on cross-entropy: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Conventions (the same everywhere in robustlora):
- images are float NCHW tensors in [0, 1]; normalisation and resizing live inside the model, which returns logits;
- ε and step sizes are in [0, 1] pixel units (8/255, not 8);
- the model runs in eval mode during the attack (BatchNorm uses running statistics) and every module's previous
  train/eval mode is restored afterwards;
- gradients are taken w.r.t. the input only (torch.autograd.grad), so param.grad and requires_grad are untouched;
- the loss is computed in float32, so a caller may wrap the attack in torch.autocast (e.g. bfloat16 on CUDA).

The update rules match Foolbox 3 (LinfFastGradientAttack, LinfPGD with abs_stepsize), which the study used.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fgsm", "fgsm_sweep", "pgd", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore each submodule's own train/eval flag on exit."""
    # per-module flags, not model.train(prev): a model may mix modes (e.g. frozen BatchNorm kept in eval)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse inputs that would make an attack silently wrong (normalised images, uint8, shape mismatch)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"attack images must be a float tensor in [0, 1], got {got}; "
                        "convert uint8 with x.float() / 255")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
        got = (y.dtype, tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"attack labels must be an int64 tensor of shape ({x.shape[0]},), got {got}")
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()  # one device sync
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"attack images must lie in [0, 1] (pixel scale), got range [{lo:.4g}, {hi:.4g}]; "
                         "pass un-normalised images and put normalisation inside the model")


def _check_eps(eps: float, name: str = "eps") -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0 in [0, 1] pixel units (e.g. 8/255), got {eps}")
    return eps


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input ``x`` only (parameters get no grad)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        # float32 loss even under autocast; sum (not mean) so the gradient scale does not depend on batch size
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM: x_adv = clip(x + ε·sign(∇x CE), 0, 1), ε in [0, 1] pixel units; x float NCHW in [0, 1]."""
    return fgsm_sweep(model, x, y, [eps])[0]


def fgsm_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]) -> list[torch.Tensor]:
    """FGSM at every ε of ``eps_list`` (pixel units) from a single gradient; returns x_adv per ε, in order."""
    _check_images(x, y)
    eps_list = [_check_eps(e) for e in eps_list]
    if not any(eps_list):
        return [x.detach().clone() for _ in eps_list]
    with eval_mode(model):
        grad = _input_grad(model, x, y)
    direction = grad.sign_()
    # ε = 0 returns x exactly (no model-dependent rounding)
    return [(x + e * direction).clamp_(0.0, 1.0) if e > 0 else x.detach().clone() for e in eps_list]


def _pgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
             random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One PGD run from x (or a uniform random point of the ε-ball), projected onto the ε-ball ∩ [0, 1]."""
    x = x.detach()
    # the feasible set ε-ball ∩ [0, 1] is a per-pixel box: projecting onto it is one clamp
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv.add_(noise.mul_(2 * eps).sub_(eps)).clamp_(lo, hi)
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y)
        x_adv.add_(grad.sign_(), alpha=step_size).clamp_(lo, hi)
    return x_adv


@torch.no_grad()
def _loss_and_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and whether the example is misclassified (an attack success)."""
    logits = model(x).float()
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        random_start: bool = True, restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ PGD on cross-entropy; ε and step_size in [0, 1] pixel units; x float NCHW in [0, 1]; returns x_adv.

    With ``restarts`` > 1 each example keeps the first successful restart (misclassified), else the one with the
    highest loss. ``generator`` (on x's device) makes the random starts reproducible.
    """
    _check_images(x, y)
    eps = _check_eps(eps)
    step_size = _check_eps(step_size, "step_size")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"pgd steps must be an integer >= 1, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"pgd restarts must be an integer >= 1, got {restarts}")
    if eps == 0:
        return x.detach().clone()
    # without a random start every restart would be the same deterministic run
    restarts = int(restarts) if random_start else 1
    with eval_mode(model):
        best = _pgd_run(model, x, y, eps, step_size, int(steps), random_start, generator)
        if restarts == 1:
            return best
        best_loss, best_success = _loss_and_success(model, best, y)
        for _ in range(restarts - 1):
            if bool(best_success.all()):
                break  # every example already fooled: more restarts cannot change the result
            cand = _pgd_run(model, x, y, eps, step_size, int(steps), random_start, generator)
            loss, success = _loss_and_success(model, cand, y)
            # replace only examples not yet fooled: by a success, else by a higher loss
            better = ~best_success & (success | (loss > best_loss))
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), cand, best)
            best_loss = torch.where(better, loss, best_loss)
            best_success |= success
    return best
