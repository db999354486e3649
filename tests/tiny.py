"""Tiny CPU models and data for the attack and defence tests: a Conv-BN-ReLU-pool-FC net with normalisation inside (like
the study's models: inputs in [0, 1], logits out), noise images whose class is a slightly brighter cell, and the few
Adam steps that make the net classify them mostly right.

Each test module picks its own sizes (and so its own model); the defaults are test_attacks', whose trained model and
images are also the `trained` and `suite_data` fixtures of conftest.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlora.config import AttackConfig, ConvergenceConfig, PgdConfig

N_CLASSES = 4
SIZE = 16


class TinyNet(nn.Module):
    """Conv-BN-ReLU-pool-FC with normalisation inside, like the study's models (inputs in [0, 1]); ``pool``: the side
    of the pooled feature map the linear head reads."""

    def __init__(self, n_classes: int = N_CLASSES, pool: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(8 * pool * pool, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.fc(torch.flatten(self.pool(F.relu(self.bn(self.conv(x)))), 1))


def make_data(n: int, seed: int, *, n_classes: int = N_CLASSES, size: int = SIZE, base: float = 0.35,
              spread: float = 0.2, bump: float = 0.04, grid: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """n noise images (base + spread·U[0, 1)) whose class is the cell, of a grid x grid split of the image, made
    brighter by ``bump``. The defaults are learnable in a few steps, and weak enough that ε = 4/255 fools some images
    and 8/255 most."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = base + spread * torch.rand(n, 3, size, size, generator=g)
    cell = size // grid
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, grid)
        x[i, :, r * cell:(r + 1) * cell, col * cell:(col + 1) * cell] += bump
    return x.clamp(0, 1), y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int,
          batch_size: int | None = None) -> nn.Module:
    """``steps`` Adam steps on the cross-entropy of (x, y): on all of it, or on consecutive batches of
    ``batch_size`` in turn; returns the model in eval mode, without gradients."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = 1 if batch_size is None else len(x) // batch_size
    for step in range(steps):
        xb, yb = x, y
        if batch_size is not None:
            part = slice(step % batches * batch_size, step % batches * batch_size + batch_size)
            xb, yb = x[part], y[part]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def trained_net() -> TinyNet:
    """test_attacks' model: TinyNet (seed 0) after 40 full-batch steps on 256 default images (seed 1)."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = make_data(256, seed=1)
    return train(model, x, y, lr=0.02, steps=40)


def stored(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW images in [0, 1] as the data stages store them: uint8 NHWC."""
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def attack_cfg(eps=(2 / 255, 4 / 255), sanity_eps: float | None = 0.5, seed: int = 0, batch_size: int = 20,
               steps: int = 10, rel_step_size: float = 0.25, convergence: dict | None = None) -> AttackConfig:
    """The attack section for the tiny suite: 48 images on the CPU, convergence check off unless given."""
    pgd_cfg = PgdConfig(steps=steps, rel_step_size=rel_step_size, sanity_eps=sanity_eps)
    return AttackConfig(n_images=48, batch_size=batch_size, seed=seed, device="cpu", eps=list(eps), pgd=pgd_cfg,
                        convergence=ConvergenceConfig(**(convergence or {"n_images": 0})))


class Quantised(nn.Module):
    """A gradient-masked model: inputs rounded to 4 grey levels, so the input gradient is exactly zero."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 3) / 3)
