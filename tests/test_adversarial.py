"""robustlora.training.adversarial: examples crafted in eval mode with modes restored; adversarial training buys robustness."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlora.training.adversarial import AdversarialConfig, adversarial_loss, pgd_examples, trades_examples
from robustlora.attacks.gradient import pgd

EPS = 0.05


def _problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on 1x4x4 images (Ilyas et al.'s robust vs non-robust features, in miniature).

    Pixel 0 is the robust feature: 0.25 or 0.75 by class, noise sd 0.35 (a margin of 0.25 > ε, ~76 % accurate
    alone). Pixels 1..15 are non-robust: 0.5 ± 0.02 by class, noise sd 0.005, jointly near-perfect on clean data, yet
    an L∞ step of ε = 0.05 flips every one of them. Standard training leans on them; adversarial training cannot.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float()
    x = torch.empty(n, 16)
    x[:, 0] = 0.5 + 0.25 * sign + 0.35 * torch.randn(n, generator=g)
    x[:, 1:] = 0.5 + 0.02 * sign[:, None] + 0.005 * torch.randn(n, 15, generator=g)
    return x.clamp(0, 1).view(n, 1, 4, 4), y


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


@functools.lru_cache(maxsize=None)
def _train(cfg: AdversarialConfig | None, steps: int = 400) -> nn.Module:
    model = _linear()
    x, y = _problem(512, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        if cfg is None:
            loss = F.cross_entropy(model(x), y)
        else:
            loss, _ = adversarial_loss(model, x, y, cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _robust_accuracy(model: nn.Module) -> tuple[float, float]:
    x, y = _problem(1000, seed=3)
    x_adv = pgd(model, x, y, EPS, EPS / 4, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) == y
    return clean.float().mean().item(), (clean & adv).float().mean().item()


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_training_raises_robust_accuracy_on_a_learnable_problem(method: str) -> None:
    clean_std, robust_std = _robust_accuracy(_train(None))
    clean_adv, robust_adv = _robust_accuracy(_train(AdversarialConfig(method=method, eps=EPS, steps=3, beta=6.0)))
    assert clean_std > 0.95 and robust_std < 0.2  # the standard model rides the non-robust pixels
    # the adversarially trained one gives up clean accuracy for the robust pixel (~71 % of images robust here)
    assert robust_adv > 0.65 and robust_adv > robust_std + 0.45, (robust_std, robust_adv)
    assert 0.7 < clean_adv < clean_std


class _Probe(nn.Module):
    """A conv net with BatchNorm and dropout that records whether BatchNorm ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64, 2)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.bn.training)
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_examples_are_crafted_in_eval_mode_and_the_modes_are_restored(method: str) -> None:
    model = _Probe().train()
    model.fc.eval()  # a mixed mode (as a LoRA arm's frozen BatchNorm): kept as it was
    x, y = _problem(32, seed=5)
    stats = model.bn.running_mean.clone()
    cfg = AdversarialConfig(method=method, eps=EPS, steps=4)
    crafted = (pgd_examples(model, x, y, cfg, torch.Generator().manual_seed(0)) if method == "pgd"
               else trades_examples(model, x, cfg, torch.Generator().manual_seed(0)))
    assert model.modes and not any(model.modes)  # every crafting forward saw eval-mode BatchNorm
    assert torch.equal(model.bn.running_mean, stats)  # crafting never updated the running statistics
    assert model.training and model.bn.training and model.drop.training and not model.fc.training
    assert (crafted - x).abs().max() <= EPS + 1e-6 and crafted.min() >= 0 and crafted.max() <= 1
    assert (crafted != x).any()
    assert all(p.grad is None for p in model.parameters())  # input gradients only
    # the loss itself runs in the loop's mode: BatchNorm in training mode there
    model.modes.clear()
    loss, logits = adversarial_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert model.modes[-1] is True and loss.requires_grad and logits.shape == (32, 2)


def test_trades_with_beta_zero_is_the_clean_cross_entropy() -> None:
    model = _linear()
    x, y = _problem(16, seed=6)
    loss, _ = adversarial_loss(model, x, y, AdversarialConfig(method="trades", eps=EPS, beta=0.0))
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_same_generator_same_examples() -> None:
    model = _linear()
    x, y = _problem(16, seed=7)
    cfg = AdversarialConfig(eps=EPS, steps=2)
    a = pgd_examples(model, x, y, cfg, torch.Generator().manual_seed(9))
    b = pgd_examples(model, x, y, cfg, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="adversarial method must be 'pgd' or 'trades'"):
        AdversarialConfig(method="fgsm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="adversarial steps"):
        AdversarialConfig(steps=0)
    with pytest.raises(ValueError, match="TRADES beta"):
        AdversarialConfig(beta=-1)
    assert AdversarialConfig(eps=4 / 255, steps=5).step == pytest.approx(2.5 * (4 / 255) / 5)
