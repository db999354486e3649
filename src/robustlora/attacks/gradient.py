"""Untargeted L∞ attacks on cross-entropy: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Conventions (the same everywhere in robustlora):
- images are float NCHW tensors in [0, 1]; normalisation and resizing live inside the model, which returns logits;
- ε and step sizes are in [0, 1] pixel units (8/255, not 8);
- the model runs in eval mode during the attack (BatchNorm uses running statistics) and every module's previous
  train/eval mode is restored afterwards;
- gradients are taken w.r.t. the input only (torch.autograd.grad), so param.grad and requires_grad are untouched;
- the loss is computed in float32, so a caller may wrap the attack in torch.autocast (e.g. bfloat16 on CUDA).

The update rules match Foolbox 3 (LinfFastGradientAttack, LinfPGD with abs_stepsize), which the study used; PGD
then returns, per image, the strongest iterate of all its steps and restarts (as APGD does), not just the last.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlora.models.resnet import eval_mode

__all__ = ["fgsm", "fgsm_sweep", "input_gradient", "pgd", "check_pixels", "check_eps", "linf_start", "Strongest",
           "RESTART_BATCH"]


def check_pixels(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse inputs that would make an attack silently wrong: x must be a float tensor in [0, 1] (not normalised,
    not uint8) and y int64 labels, one per image."""
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


def check_eps(eps: float, name: str = "eps") -> float:
    """``eps`` as a float, refused unless finite and >= 0 ([0, 1] pixel units); ``name`` names it in the error."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0 in [0, 1] pixel units (e.g. 8/255), got {eps}")
    return eps


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy w.r.t. the input ``x`` only (parameters get no grad), with the
    per-example loss and misclassification at ``x`` that the same forward pass gives."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        # float32 loss even under autocast; summed (not mean) so the gradient scale does not depend on batch size
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad, loss.detach(), logits.detach().argmax(1) != y


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM: x_adv = clip(x + ε·sign(∇x CE), 0, 1), ε in [0, 1] pixel units; x float NCHW in [0, 1]."""
    return fgsm_sweep(model, x, y, [eps])[0]


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇x of the summed cross-entropy at x (float NCHW in [0, 1]), in eval mode: FGSM's direction, and the
    zero-gradient diagnostic of gradient masking."""
    check_pixels(x, y)
    with eval_mode(model):
        return _input_grad(model, x, y)[0]


def fgsm_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
               grad: torch.Tensor | None = None) -> list[torch.Tensor]:
    """FGSM at every ε of ``eps_list`` (pixel units) from a single gradient; returns x_adv per ε, in order.

    ``grad``: :func:`input_gradient` at (x, y), when the caller has it already."""
    check_pixels(x, y)
    eps_list = [check_eps(e) for e in eps_list]
    if not any(eps_list):
        return [x.detach().clone() for _ in eps_list]
    if grad is None:
        with eval_mode(model):
            grad, _, _ = _input_grad(model, x, y)
    elif grad.shape != x.shape:
        raise ValueError(f"fgsm_sweep: grad must have the images' shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    direction = grad.sign()
    # ε = 0 returns x exactly (no model-dependent rounding)
    return [(x + e * direction).clamp_(0.0, 1.0) if e > 0 else x.detach().clone() for e in eps_list]


RESTART_BATCH = 512  # PGD restarts are crafted side by side in batches of at most this many images


class Strongest:
    """Per example, the strongest point offered so far: a misclassified one beats one that is not, then the higher
    cross-entropy wins (``first_success``: a misclassified point is kept even against a later, higher-loss one)."""

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor, first_success: bool = False) -> None:
        self.x, self.loss, self.success, self.first_success = x.clone(), loss, success, first_success

    def offer(self, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        # strict '>' keeps the earlier point on ties, so the choice is deterministic
        higher = (success == self.success) & (loss > self.loss)
        if self.first_success:
            higher &= ~self.success
        better = (success & ~self.success) | higher
        self.x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.x)
        self.loss = torch.where(better, loss, self.loss)
        self.success = self.success | success


def linf_start(x: torch.Tensor, eps: float, random_start: bool,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start, lo, hi) of an L∞ attack on x: x itself or, with ``random_start``, a uniform point of the ε-ball
    (one torch.rand draw from ``generator``), and the per-pixel box ε-ball ∩ [0, 1] that every iterate is clamped to."""
    x = x.detach()
    # the feasible set ε-ball ∩ [0, 1] is a per-pixel box: projecting onto it is one clamp
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv.add_(noise.mul_(2 * eps).sub_(eps)).clamp_(lo, hi)
    return x_adv, lo, hi


@torch.no_grad()
def _loss_and_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and whether the example is misclassified (an attack success)."""
    logits = model(x).float()
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y


def _pgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
             random_start: bool, generator: torch.Generator | None, keep: str,
             score: bool) -> Strongest | torch.Tensor:
    """One PGD run from x (or a uniform random point of the ε-ball), projected onto the ε-ball ∩ [0, 1].

    Returns the strongest iterate (``keep='best'``) or the last one, scored with its per-example loss and
    misclassification; for ``keep='last'`` without ``score``, the bare last iterate (no extra forward pass).
    """
    x_adv, lo, hi = linf_start(x, eps, random_start, generator)
    best: Strongest | None = None
    for _ in range(steps):
        grad, loss, success = _input_grad(model, x_adv, y)
        if keep == "best":  # the gradient's forward pass scores the current iterate for free
            if best is None:
                best = Strongest(x_adv, loss, success)
            else:
                best.offer(x_adv, loss, success)
        x_adv.add_(grad.sign_(), alpha=step_size).clamp_(lo, hi)
    if keep == "last" and not score:
        return x_adv
    loss, success = _loss_and_success(model, x_adv, y)  # the last iterate has had no forward pass yet
    if best is None:
        return Strongest(x_adv, loss, success)
    best.offer(x_adv, loss, success)
    return best


def _targeted_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, eps: float,
                  step_size: float, steps: int, random_start: bool, generator: torch.Generator | None) -> Strongest:
    """A targeted margin run: PGD ascending z_target − z_true (Carlini & Wagner's margin towards one class), each
    iterate scored by its cross-entropy and misclassification (from the gradient's own forward pass)."""
    x_adv, lo, hi = linf_start(x, eps, random_start, generator)
    best: Strongest | None = None
    rows = torch.arange(len(y), device=y.device)
    for _ in range(steps + 1):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv).float()
            margin = logits[rows, target] - logits[rows, y]
            (grad,) = torch.autograd.grad(margin.sum(), x_adv)
        x_adv = x_adv.detach()
        with torch.no_grad():
            loss, success = F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y
        if best is None:
            best = Strongest(x_adv, loss.detach(), success)
        else:
            best.offer(x_adv, loss.detach(), success)
        if _ == steps:
            break
        x_adv.add_(grad.sign_(), alpha=step_size).clamp_(lo, hi)
    return best


def _multi_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, best: Strongest, eps: float,
                    step_size: float, steps: int, targets: int, random_start: bool,
                    generator: torch.Generator | None) -> None:
    """On the examples ``best`` has not fooled: one targeted margin run per class among the ``targets`` most likely
    wrong classes at the clean input (as APGD-T / MultiTargeted: Gowal et al. 2019), each offered to ``best``."""
    todo = (~best.success).nonzero()[:, 0]
    if not len(todo):
        return
    with torch.no_grad():
        logits = model(x[todo]).float()
    logits[torch.arange(len(todo), device=x.device), y[todo]] = -math.inf
    order = logits.argsort(dim=1, descending=True)
    for j in range(min(targets, logits.shape[1] - 1)):
        run = _targeted_run(model, x[todo], y[todo], order[:, j], eps, step_size, steps, random_start, generator)
        sub = Strongest(best.x[todo], best.loss[todo], best.success[todo])
        sub.offer(run.x, run.loss, run.success)
        best.x[todo], best.loss[todo], best.success[todo] = sub.x, sub.loss, sub.success


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        random_start: bool = True, restarts: int = 1, generator: torch.Generator | None = None,
        keep: Literal["best", "last"] = "best", targets: int = 0, target_steps: int | None = None) -> torch.Tensor:
    """L∞ PGD on cross-entropy; ε and step_size in [0, 1] pixel units; x float NCHW in [0, 1]; returns x_adv.

    ``keep='best'`` (default, as APGD): per example, the strongest of all iterates (the start, every step, every
    restart): a misclassified one if any, and among those alike the one with the highest cross-entropy; so the
    result is never weaker than the last iterate or any earlier one. Costs one extra forward pass per restart.
    ``keep='last'``: the last iterate of each restart (Foolbox's LinfPGD); across restarts the first misclassified
    one, else the one with the highest loss.
    Restarts run side by side, as one batch of up to ``RESTART_BATCH`` images (a small batch costs nearly as much as a
    large one on a CPU); the next group starts only if some example is still not misclassified. Their random starts
    are drawn in restart order, so on a CPU they are the numbers that one restart after another would draw.
    ``generator`` (on x's device) makes the random starts reproducible.
    ``targets`` > 0 (``keep='best'`` only): then, on the examples cross-entropy PGD left correctly classified, one
    targeted margin run towards each of the ``targets`` most likely wrong classes (``target_steps`` steps, default
    ``steps``, from a random start, with the same travel: step ``step_size·steps/target_steps``); cross-entropy PGD
    misses images whose loss surface is flat in its direction, which AutoAttack's targeted APGD then finds.
    """
    check_pixels(x, y)
    eps = check_eps(eps)
    step_size = check_eps(step_size, "step_size")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"pgd steps must be an integer >= 1, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"pgd restarts must be an integer >= 1, got {restarts}")
    if keep not in ("best", "last"):
        raise ValueError(f"pgd keep must be 'best' or 'last', got {keep!r}")
    if int(targets) != targets or targets < 0 or (targets and keep != "best"):
        raise ValueError(f"pgd targets must be an integer >= 0 (with keep='best'), got {targets}")
    target_steps = int(steps) if target_steps is None else target_steps
    if int(target_steps) != target_steps or target_steps < 1:
        raise ValueError(f"pgd target_steps must be an integer >= 1, got {target_steps}")
    if eps == 0:
        return x.detach().clone()
    # without a random start every restart would be the same deterministic run
    restarts = int(restarts) if random_start else 1
    n = len(x)
    per_pass = max(1, min(restarts, RESTART_BATCH // max(n, 1)))  # restarts crafted in one batch
    best: Strongest | None = None
    with eval_mode(model):
        done = 0
        while done < restarts:
            k = min(per_pass, restarts - done)
            xs, ys = (x, y) if k == 1 else (x.repeat(k, *[1] * (x.dim() - 1)), y.repeat(k))
            run = _pgd_run(model, xs, ys, eps, step_size, int(steps), random_start, generator, keep, score=restarts > 1)
            if isinstance(run, torch.Tensor):  # one restart, keep='last': the bare last iterate
                return run
            for j in range(k):  # in restart order: keep='last' keeps the first misclassified restart
                part = slice(j * n, (j + 1) * n)
                if best is None:
                    best = Strongest(run.x[part], run.loss[part], run.success[part], first_success=keep == "last")
                else:
                    best.offer(run.x[part], run.loss[part], run.success[part])
            done += k
            if bool(best.success.all()):
                break  # every example already fooled: more restarts cannot change its success
        if targets:
            _multi_targeted(model, x, y, best, eps, step_size * steps / target_steps, int(target_steps),
                            int(targets), random_start, generator)
    return best.x

