"""Tests for robustlora.attacks.transfer (PGD crafted on a surrogate, evaluated on a target) on tiny CPU models
(tests/tiny.py)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustlora.attacks.gradient import pgd
from robustlora.attacks.outcomes import EXTRA_COLUMNS, IMAGE_COLUMNS
from robustlora.attacks.transfer import craft_pgd, transfer_rows
from robustlora.config import AttackConfig, ConvergenceConfig, PgdConfig
from robustlora.evaluation.suite import attack_suite
from tiny import TinyNet, make_data, stored, train

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = (2 / 255, 6 / 255, 16 / 255)
PGD = PgdConfig(steps=5, rel_step_size=0.25, restarts=2)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a slightly brighter quadrant that encodes the class."""
    return make_data(n, seed, size=8, base=0.3, spread=0.3, bump=0.06)


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return train(TinyNet(pool=4), *data(300, seed=10 + seed), lr=0.03, steps=45, batch_size=100)


@pytest.fixture(scope="module")
def setup():
    """Two independently trained models (surrogate A, target B) and 40 test images, stored as uint8 NHWC."""
    x, y = data(40, seed=99)
    return tiny_model(0), tiny_model(1), stored(x), y


def crafted(model: nn.Module, images: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict[float, torch.Tensor]:
    return craft_pgd(model, images, y, EPS, PGD, seed=seed, device="cpu", batch_size=16, progress=False)


def test_white_box_equals_the_attack_suites_pgd(setup):
    a, _, images, y = setup
    rows = transfer_rows(a, images, y, crafted(a, images, y), surrogate="a", image_ids=np.arange(5, 45))
    assert list(rows.columns) == IMAGE_COLUMNS + EXTRA_COLUMNS
    assert rows["attack"].eq("transfer_a").all() and rows["queries"].isna().all() and rows["detail"].eq("").all()
    assert rows["eps"].tolist() == [e for e in EPS for _ in range(40)]
    assert rows["image"].tolist() == list(range(5, 45)) * len(EPS)
    cfg = AttackConfig(eps=EPS, pgd=PGD.model_copy(update={"sanity_eps": None}), batch_size=16, seed=0,
                       convergence=ConvergenceConfig(n_images=0))
    suite = attack_suite(a, images, y, cfg, image_ids=np.arange(5, 45), device="cpu", progress=False)
    suite = suite[suite["attack"] == "pgd"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[IMAGE_COLUMNS].drop(columns="attack"),
                                  suite[IMAGE_COLUMNS].drop(columns="attack"))
    fooled = rows.groupby("eps")["adv_correct"].apply(lambda c: (~c).sum())
    assert 0 < fooled[EPS[0]] < fooled[EPS[-1]]


def test_points_within_eps_and_crafted_with_attacks_pgd(setup):
    a, _, images, y = setup
    adversarials = crafted(a, images, y, seed=3)
    x = images.permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(3)
    for start in range(0, 40, 16):  # the same batches and random stream: batch by batch, ε by ε
        for e in EPS:
            expected = pgd(a, x[start:start + 16], y[start:start + 16], e, PGD.step_for(e), PGD.steps,
                           restarts=PGD.restarts, generator=generator)
            assert torch.equal(adversarials[e][start:start + 16], expected)
    for e, x_adv in adversarials.items():
        assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape and x_adv.device.type == "cpu"
        assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
        assert (x_adv - x).abs().max() <= e + 1e-6
    rows = transfer_rows(a, images, y, adversarials, surrogate="a")
    assert (rows["linf"] <= rows["eps"] + 1e-6).all() and (rows["linf"] > 0).any()


def test_identical_target_gets_the_white_box_result_and_others_their_own(setup):
    a, b, images, y = setup
    adversarials = crafted(a, images, y)
    white_box = transfer_rows(a, images, y, adversarials, surrogate="a")
    pd.testing.assert_frame_equal(transfer_rows(copy.deepcopy(a), images, y, adversarials, surrogate="a"), white_box)
    other = transfer_rows(b, images, y, adversarials, surrogate="a")
    with torch.no_grad():
        for e, part in other.groupby("eps", sort=False):
            np.testing.assert_array_equal(part["adv_pred"], b(adversarials[e]).argmax(1).numpy())
    np.testing.assert_array_equal(other["linf"], white_box["linf"])  # the same points, another model
    assert not other["adv_pred"].equals(white_box["adv_pred"])


def test_deterministic(setup):
    a, _, images, y = setup
    first, again, other = crafted(a, images, y), crafted(a, images, y), crafted(a, images, y, seed=1)
    assert all(torch.equal(first[e], again[e]) for e in EPS)
    assert not torch.equal(first[EPS[1]], other[EPS[1]])  # the seed drives the random starts


def test_modes_restored_and_bad_adversarials_refused(setup):
    a, b, images, y = setup
    a, b = copy.deepcopy(a).train(), copy.deepcopy(b).train()
    state = copy.deepcopy(a.state_dict())
    adversarials = crafted(a, images, y)
    rows = transfer_rows(b, images, y, adversarials, surrogate="a")
    assert a.training and b.training and all(torch.equal(v, state[k]) for k, v in a.state_dict().items())
    assert len(rows) == 40 * len(EPS)
    x = images.permute(0, 3, 1, 2).float() / 255
    with pytest.raises(ValueError, match="transfer_a: adversarials at ε = 0.00784314 leave the ε-ball"):
        transfer_rows(b, images, y, {2 / 255: adversarials[EPS[1]]}, surrogate="a")
    with pytest.raises(ValueError, match="must be a float tensor with 40 images"):
        transfer_rows(b, images, y, {EPS[0]: x[:10]}, surrogate="a")
