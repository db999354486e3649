"""Tests for robustlora.defences.squeeze: feature-squeezing detector (Xu et al. 2018) and the adaptive BPDA attack on it
(the tiny model: the `trained` fixture of conftest.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from robustlora.attacks.gradient import pgd
from robustlora.defences.squeeze import (Squeezer, adaptive_pgd, bit_depth, bpda, detect, detector_scores,
                                         evaluate_detector, fit_threshold, median_smooth)
from robustlora.errors import DataError, ModelError
from tiny import TinyNet, make_data

pytestmark = pytest.mark.usefixtures("single_thread")

SQUEEZERS = (Squeezer("bit_depth", 4), Squeezer("median", 2))
EPS, STEP, STEPS = 8 / 255, 1 / 255, 20


@pytest.fixture(scope="module")
def threshold(trained: TinyNet) -> float:
    return fit_threshold(detector_scores(trained, make_data(200, seed=3)[0], SQUEEZERS), fpr=0.05)


# --- squeezers ------------------------------------------------------------------------------------------------------


def test_bit_depth_exact_values() -> None:
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.8, 1.0]).view(1, 1, 2, 3)
    assert bit_depth(x, 1).flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    # 2 bits: levels 0, 1/3, 2/3, 1
    assert torch.equal(bit_depth(x, 2).flatten(), torch.tensor([0, 1, 1, 2, 2, 3]) / 3.0)
    eight_bit = (torch.arange(256, dtype=torch.float32) / 255).view(1, 1, 16, 16)
    assert torch.equal(bit_depth(eight_bit, 8), eight_bit)
    assert bit_depth(eight_bit, 5).unique().numel() == 32
    for bad in (0, 9, 2.5):
        with pytest.raises(ModelError, match="bits"):
            bit_depth(x, bad)


def brute_median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Loop over pixels: window rows/cols i - size//2 ... i - size//2 + size - 1, edge-repeating reflection,
    upper median (scipy.ndimage.median_filter(mode='reflect'))."""
    def reflect(i: int, n: int) -> int:
        while not 0 <= i < n:
            i = -i - 1 if i < 0 else 2 * n - 1 - i
        return i

    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for b, ch, i, j in itertools.product(range(n), range(c), range(h), range(w)):
        values = sorted(x[b, ch, reflect(i + di - size // 2, h), reflect(j + dj - size // 2, w)].item()
                        for di in range(size) for dj in range(size))
        out[b, ch, i, j] = values[size * size // 2]
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_median_smooth_matches_brute_force(size: int) -> None:
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(size))
    assert torch.equal(median_smooth(x, size), brute_median(x, size))


def test_median_smooth_matches_scipy() -> None:
    from scipy import ndimage  # installed with the attacks extra (ART needs it)

    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    for size in (2, 3):
        expected = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
        assert torch.equal(median_smooth(x, size), torch.from_numpy(expected))


def test_median_smooth_removes_salt_pixel() -> None:
    x = torch.full((1, 3, 6, 6), 0.3)
    x[0, 1, 2, 3] = 1.0
    for size in (2, 3):
        assert torch.equal(median_smooth(x, size), torch.full_like(x, 0.3))


def test_squeezer_names_and_validation() -> None:
    assert [s.name for s in SQUEEZERS] == ["bit_depth_4", "median_2x2"]
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(SQUEEZERS[0](x), bit_depth(x, 4)) and torch.equal(SQUEEZERS[1](x), median_smooth(x, 2))
    with pytest.raises(ModelError, match="kind"):
        Squeezer("blur", 2)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="bits"):
        Squeezer("bit_depth", 0)


def test_bpda_gradient_is_identity() -> None:
    x = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    for squeezer in SQUEEZERS:
        out = bpda(squeezer)(x)
        assert torch.equal(out, squeezer(x.detach()))
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((out * weights).sum(), x)
        assert torch.equal(grad, weights)


# --- detector -------------------------------------------------------------------------------------------------------


def test_fit_threshold_order_statistic() -> None:
    clean = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    fit, held_out = clean[:200], clean[200:]
    t = fit_threshold(fit, fpr=0.05)
    assert int(detect(fit, t).sum()) == 10  # distinct scores: exactly floor(0.05 * 200)
    assert 0.02 < detect(held_out, t).float().mean().item() < 0.09  # and about 5% on other clean scores
    assert int(detect(fit, fit_threshold(fit, fpr=0.29)).sum()) == 58  # 0.29 * 200 is not 57.99...
    ties = torch.tensor([0.1] * 15 + [0.5] * 5)
    assert detect(ties, fit_threshold(ties, fpr=0.5)).sum() <= 10
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ModelError, match="fpr"):
            fit_threshold(fit, fpr=bad)
    with pytest.raises(DataError, match="empty"):
        fit_threshold(torch.empty(0))


def test_detector_scores_zero_when_model_ignores_input() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.3, -1.0, 2.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(len(x), -1)

    scores = detector_scores(Constant(), torch.rand(5, 3, 8, 8), SQUEEZERS)
    assert scores.shape == (5,) and torch.equal(scores, torch.zeros(5))


def test_detector_scores_positive_when_squeezing_flips_prediction() -> None:
    class Threshold(nn.Module):
        """Class 1 iff the mean pixel exceeds 0.5, with confident logits; 1-bit squeezing moves 0.45 to 0."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = 100 * (x.mean((1, 2, 3)) - 0.4)
            return torch.stack([-z, z], 1)

    model = Threshold().train()
    x = torch.stack([torch.full((3, 4, 4), 0.45), torch.full((3, 4, 4), 0.2)])
    scores = detector_scores(model, x, [Squeezer("bit_depth", 1)], batch_size=1)
    assert scores[0].item() == pytest.approx(2.0, abs=1e-3)  # one-hot flipped: L1 distance 2
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)
    assert model.training  # mode restored


def test_detector_scores_mode_restored_and_refuses_bad_input(trained: TinyNet) -> None:
    trained.train()
    trained.bn.eval()
    x = make_data(8, seed=5)[0]
    try:
        scores = detector_scores(trained, x, SQUEEZERS, batch_size=3)
        assert trained.training and not trained.bn.training
    finally:
        trained.eval()
    assert torch.allclose(scores, detector_scores(trained, x, SQUEEZERS), atol=1e-6)  # eval-mode, batch-free
    with pytest.raises(DataError, match="x must"):
        detector_scores(trained, x * 255, SQUEEZERS)
    with pytest.raises(ModelError, match="squeezers"):
        detector_scores(trained, x, [])


# --- adaptive attack ------------------------------------------------------------------------------------------------


def test_adaptive_pgd_evades_detector_better_than_pgd(trained: TinyNet, threshold: float) -> None:
    x, y = make_data(64, seed=2)
    plain = pgd(trained, x, y, EPS, STEP, STEPS, generator=torch.Generator().manual_seed(0))
    trained.train()  # the attack must run in eval mode and restore this
    try:
        adaptive = adaptive_pgd(trained, x, y, EPS, STEP, STEPS, SQUEEZERS, threshold,
                                generator=torch.Generator().manual_seed(0))
        assert trained.training
    finally:
        trained.eval()
    assert adaptive.min() >= 0 and adaptive.max() <= 1
    assert (adaptive - x).abs().max() <= EPS + 1e-6
    again = adaptive_pgd(trained, x, y, EPS, STEP, STEPS, SQUEEZERS, threshold,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(adaptive, again)

    r_plain = evaluate_detector(trained, x, y, plain, SQUEEZERS, threshold)
    r_adapt = evaluate_detector(trained, x, y, adaptive, SQUEEZERS, threshold)
    # measured: plain PGD fools all 64, 86% detected; adaptive fools 44, 23% detected; detector-robust acc 0.86 -> 0.47
    assert r_plain["n_successful"] >= 48 and r_plain["detection_rate"] >= 0.6
    assert r_adapt["n_successful"] >= 24
    assert r_adapt["detection_rate"] <= r_plain["detection_rate"] - 0.3
    assert r_adapt["robust_accuracy_with_detector"] <= r_plain["robust_accuracy_with_detector"] - 0.2


def test_evaluate_detector_definitions() -> None:
    class FirstPixel(nn.Module):
        """Class 1 iff pixel (0, 0, 0) > 0.6, with saturated logits."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = 1000 * (x[:, 0, 0, 0] - 0.6)
            return torch.stack([-z, z], 1)

    def images(first: list[float]) -> torch.Tensor:
        x = torch.zeros(len(first), 1, 2, 2)
        x[:, 0, 0, 0] = torch.tensor(first)
        return x

    def darken(x: torch.Tensor) -> torch.Tensor:  # flips the prediction exactly for first pixels in (0.6, 0.8]
        return (x - 0.2).clamp(min=0)

    y = torch.tensor([0, 0, 0, 0, 1])
    clean = images([0.1, 0.1, 0.1, 0.75, 0.1])  # correct x3, then wrong and flagged, then wrong
    adv = images([0.4, 0.7, 0.9, 0.1, 0.1])  # still correct; fooled & flagged; fooled & unflagged; (not counted) x2
    r = evaluate_detector(FirstPixel(), clean, y, adv, [darken], threshold=1.0)
    assert r == {"n": 5.0, "clean_accuracy": pytest.approx(0.6), "clean_fpr": pytest.approx(0.2),
                 "n_successful": 2.0, "detection_rate": 0.5, "robust_accuracy": pytest.approx(0.2),
                 "robust_accuracy_with_detector": pytest.approx(0.4)}
    with pytest.raises(DataError, match="x_adv"):
        evaluate_detector(FirstPixel(), clean, y, adv[:3], [darken], threshold=1.0)
