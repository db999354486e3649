"""Adversarial fine-tuning losses: PGD adversarial training (Madry et al., ICLR 2018) and TRADES (Zhang et al.,
ICML 2019), for any arm, full or LoRA.

A training loop calls ``adversarial_loss`` per batch instead of the cross-entropy on the clean batch. The adversarial
examples are crafted as our attacks run: the model in eval mode (BatchNorm uses its running statistics, which the
crafting never updates; dropout off), inputs in [0, 1] pixel space with normalisation inside the model, gradients
w.r.t. the input only (the parameters get none). Every module's train/eval flag is restored before the loss is
computed, so the loss forward runs in the loop's own mode (a LoRA arm keeps its frozen BatchNorm in eval mode).

ε, step size in [0, 1] pixel units (L∞). Cost: ``steps`` extra forward/backward passes per batch (PGD-AT), or
``steps`` + 1 (TRADES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlora.attacks.gradient import check_eps, check_pixels, pgd
from robustlora.models.resnet import eval_mode

__all__ = ["AdversarialConfig", "pgd_examples", "trades_examples", "adversarial_loss"]

TRADES_INIT_STD = 0.001  # TRADES' own start: x + 0.001·N(0, 1)


@dataclass(frozen=True)
class AdversarialConfig:
    """One adversarial-training setting.

    ``method``: ``pgd`` (Madry: cross-entropy on the PGD example) or ``trades`` (cross-entropy on the clean input
    plus β·KL(p(x) ‖ p(x')), x' maximising that KL). ``step_size`` defaults to 2.5·ε/steps (Madry's travel).
    """

    method: Literal["pgd", "trades"] = "pgd"
    eps: float = 4 / 255
    steps: int = 3
    step_size: float | None = None
    random_start: bool = True
    beta: float = 6.0  # TRADES' β (its paper's CIFAR-10 setting)

    def __post_init__(self) -> None:
        if self.method not in ("pgd", "trades"):
            raise ValueError(f"adversarial method must be 'pgd' or 'trades', got {self.method!r}")
        check_eps(self.eps, "adversarial eps")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"adversarial steps must be an integer >= 1, got {self.steps}")
        if self.step_size is not None:
            check_eps(self.step_size, "adversarial step_size")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"TRADES beta must be a finite number >= 0, got {self.beta}")

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Madry's training examples: our PGD (eval mode, input gradients only), the last iterate as in the paper."""
    return pgd(model, x, y, cfg.eps, cfg.step, cfg.steps, random_start=cfg.random_start, generator=generator,
               keep="last").detach()


def trades_examples(model: nn.Module, x: torch.Tensor, cfg: AdversarialConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES' inner maximisation: signed-gradient ascent on KL(p(x) ‖ p(x')) within the ε-ball, in eval mode."""
    check_pixels(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device))
    x = x.detach()
    if cfg.eps == 0:
        return x.clone()
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + TRADES_INIT_STD * noise).clamp(0, 1)
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + cfg.step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - cfg.eps), x + cfg.eps).clamp(0, 1)
    return x_adv.detach()


def adversarial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the training loss to backpropagate, the logits of the inputs it was computed on), in the model's own mode.

    ``pgd``: cross-entropy on the PGD examples (their logits returned). ``trades``: cross-entropy on the clean
    batch + β · KL(p(x) ‖ p(x')) (batch mean; the clean logits returned).
    """
    if cfg.method == "pgd":
        logits = model(pgd_examples(model, x, y, cfg, generator))
        return F.cross_entropy(logits.float(), y), logits
    x_adv = trades_examples(model, x, cfg, generator)
    logits, logits_adv = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1),
                  reduction="batchmean")
    return F.cross_entropy(logits.float(), y) + cfg.beta * kl, logits
