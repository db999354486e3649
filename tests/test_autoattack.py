"""Tests for robustlora.attacks.autoattack (the official AutoAttack as per-image rows) on tiny CPU models
(tests/tiny.py)."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustlora.attacks.autoattack import autoattack_suite, build_autoattack, run_components
from robustlora.attacks.gradient import pgd
from robustlora.attacks.outcomes import EXTRA_COLUMNS, IMAGE_COLUMNS
from robustlora.config import AutoAttackConfig
from tiny import TinyNet, make_data, stored, train

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 8
CPU = torch.device("cpu")
EPS = 6 / 255  # fools some of the tiny models' images, not all


def data(n: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a slightly brighter 2x2 cell (of a 4x4 grid) that encodes the class."""
    return make_data(n, seed, n_classes=n_classes, size=SIZE, base=0.3, spread=0.3, bump=0.1, grid=4)


def tiny_model(n_classes: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A TinyNet trained for a few steps (in eval mode) and 48 test images it mostly classifies correctly."""
    torch.manual_seed(0)
    model = TinyNet(n_classes, pool=4)
    train(model, *data(400, n_classes, seed=1), lr=0.03, steps=60, batch_size=100)
    x_test, y_test = data(48, n_classes, seed=2)
    return model, x_test, y_test


@pytest.fixture(scope="module")
def ten():
    return tiny_model(10)


def custom(**kw) -> AutoAttackConfig:
    settings = dict(version="custom", attacks=("apgd-ce", "apgd-t"), n_iter=10, n_target_classes=3,
                    square_queries=50, eps=(EPS,), batch_size=20, seed=0, device="cpu")
    return AutoAttackConfig(**{**settings, **kw})


def test_model_fixture_is_useful(ten):
    model, x, y = ten
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.7  # mostly correct, but not all: both kinds of row


def test_rows_schema_and_agree_with_the_model_on_the_points(ten):
    model, x, y = ten
    cfg = custom(sanity_eps=1.0)
    rows = autoattack_suite(model, x, y, cfg, image_ids=np.arange(100, 148), progress=False)
    assert list(rows.columns) == IMAGE_COLUMNS + EXTRA_COLUMNS
    assert rows["eps"].tolist() == [EPS] * 48 + [1.0] * 48  # cfg.eps, then the sanity ε
    assert rows["image"].tolist() == list(range(100, 148)) * 2
    assert rows["attack"].eq("autoattack").all() and rows["queries"].isna().all()
    for e, part in rows.groupby("eps", sort=False):
        aa = build_autoattack(model, e, cfg, n_classes=10, device=CPU)
        x_adv, component = run_components(aa, x, y, batch_size=cfg.batch_size)
        linf = (x_adv - x).abs().flatten(1).amax(1)
        assert float(linf.max()) <= e + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
        np.testing.assert_allclose(part["linf"], linf.numpy(), atol=1e-7)
        with torch.no_grad():
            pred = model(x_adv).argmax(1).numpy()
        np.testing.assert_array_equal(part["adv_pred"], pred)
        np.testing.assert_array_equal(part["adv_correct"], pred == y.numpy())
        fooled = (part["clean_correct"] & ~part["adv_correct"]).to_numpy()
        assert set(part["detail"][fooled]) <= {"apgd-ce", "apgd-t"} and part["detail"][~fooled].eq("").all()
        np.testing.assert_array_equal(part["detail"][fooled], component[fooled])
    bounded, sanity = rows[rows["eps"] == EPS], rows[rows["eps"] == 1.0]
    assert 0 < (bounded["clean_correct"] & ~bounded["adv_correct"]).sum() < bounded["clean_correct"].sum()
    assert not (sanity["clean_correct"] & sanity["adv_correct"]).any()  # unbounded: every image fooled
    wrong = rows[~rows["clean_correct"]]
    assert len(wrong) and (wrong["linf"] == 0).all() and (wrong["adv_pred"] == wrong["clean_pred"]).all()


def test_components_one_at_a_time_equal_run_standard_evaluation(ten):
    model, x, y = ten
    cfg = custom(attacks=("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"), n_iter=3, square_queries=20)
    for e in (2 / 255, EPS):
        aa = build_autoattack(model, e, cfg, n_classes=10, device=CPU)
        reference = copy.deepcopy(aa)
        x_adv, component = run_components(aa, x, y, batch_size=cfg.batch_size)
        logging.getLogger("auto-attack").disabled = True
        try:
            x_ref, _ = reference.run_standard_evaluation(x, y, batch_size=cfg.batch_size)
        finally:
            logging.getLogger("auto-attack").disabled = False
        assert torch.equal(x_adv, x_ref)
        assert (component != "").sum() == (x_ref != x).flatten(1).any(1).sum()
    assert len(set(component) - {""}) >= 2  # more than one component fooled images: the credit is per image


def test_at_least_as_strong_as_pgd(ten):
    model, x, y = ten
    rows = autoattack_suite(model, x, y, custom(n_iter=20), progress=False)
    robust_aa = (rows["clean_correct"] & rows["adv_correct"]).mean()
    x_pgd = pgd(model, x, y, EPS, EPS / 4, steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust_pgd = ((model(x).argmax(1) == y) & (model(x_pgd).argmax(1) == y)).float().mean().item()
    assert robust_aa <= robust_pgd < 1


def test_deterministic_and_leaves_the_model_and_rng_alone(ten):
    model, x, y = ten
    model = copy.deepcopy(model).train()  # BatchNorm would use batch statistics and update its running ones
    model.bn.eval()  # a mixed mode, restored module by module
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    cfg = custom(attacks=("apgd-ce", "fab-t"), n_iter=5)
    first = autoattack_suite(model, x, y, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)  # pyautoattack reseeds the global RNG; ours is restored
    assert model.training and not model.bn.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # FAB calls backward()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    pd.testing.assert_frame_equal(first, autoattack_suite(model, x, y, cfg, progress=False))
    other = autoattack_suite(model, x, y, cfg.model_copy(update={"seed": 1}), progress=False)
    assert not other["adv_margin"].equals(first["adv_margin"])  # the seed matters (random starts)


def test_custom_and_standard_configure_the_components():
    model = TinyNet(10, pool=4).eval()
    aa = build_autoattack(model, 4 / 255, custom(attacks=("apgd-ce", "apgd-t", "fab-t", "square"), n_iter=10,
                                                 n_target_classes=3, square_queries=77), n_classes=10, device=CPU)
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa.apgd.n_iter == aa.apgd_targeted.n_iter == aa.fab.n_iter == 10
    assert (aa.apgd.n_iter_2, aa.apgd.n_iter_min, aa.apgd.size_decr) == (2, 1, 1)  # APGD's schedule for 10 steps
    assert aa.apgd.n_restarts == 1 and aa.apgd_targeted.n_target_classes == aa.fab.n_target_classes == 3
    assert aa.square.n_queries == 77 and aa.epsilon == aa.apgd.eps == aa.fab.eps == aa.square.eps == 4 / 255
    assert aa.seed == aa.apgd.seed == 0 and aa.norm == "Linf" and not aa.verbose

    std = build_autoattack(model, 8 / 255, custom(version="standard", n_iter=10, n_target_classes=3, seed=5),
                           n_classes=200, device=CPU)
    assert std.version == "standard" and std.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert std.apgd.n_iter == std.apgd_targeted.n_iter == std.fab.n_iter == 100  # custom fields ignored
    assert (std.apgd.n_iter_2, std.apgd.n_iter_min, std.apgd.size_decr) == (22, 6, 3)
    assert std.apgd_targeted.n_target_classes == std.fab.n_target_classes == 9 and std.square.n_queries == 5000
    assert std.apgd.n_restarts == std.apgd_targeted.n_restarts == std.fab.n_restarts == 1 and std.seed == 5
    assert build_autoattack(model, 8 / 255, custom(version="standard"), n_classes=10,
                            device=CPU).apgd_targeted.n_target_classes == 9  # 10 classes: all 9 others


def test_targets_capped_without_warnings_from_the_checks():
    model, x, y = tiny_model(5)
    cfg = custom(attacks=("apgd-ce", "apgd-t", "fab-t"), n_target_classes=9, n_iter=3, eps=(16 / 255,))
    aa = build_autoattack(model, EPS, cfg, n_classes=5, device=CPU)
    assert aa.apgd_targeted.n_target_classes == aa.fab.n_target_classes == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyautoattack's checks come back as warnings: none may appear
        rows = autoattack_suite(model, x, y, cfg, progress=False)
    assert (rows["clean_correct"] & ~rows["adv_correct"]).any()


def test_three_classes_leaves_out_apgd_t_and_caps_fab_t():
    model, x, y = tiny_model(3)
    cfg = custom(attacks=("apgd-ce", "apgd-t", "fab-t"), n_target_classes=9, n_iter=3, eps=(16 / 255,))
    aa = build_autoattack(model, EPS, cfg, n_classes=3, device=CPU)
    assert aa.attacks_to_run == ["apgd-ce", "fab-t"] and aa.fab.n_target_classes == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = autoattack_suite(model, x, y, cfg, progress=False)
    assert [str(w.message) for w in caught if "autoattack" in str(w.message)] == [
        "autoattack: left out apgd-t (apgd-t needs >= 4 classes; the model has 3)"]  # none from pyautoattack
    assert set(rows["detail"]) <= {"", "apgd-ce", "fab-t"} and (rows["detail"] != "").any()


def test_log_silenced_and_check_warnings_surface(ten, caplog):
    model, x, y = ten
    cfg = custom(attacks=("apgd-ce",), n_iter=2)
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        autoattack_suite(model, x, y, cfg, progress=False)
        assert not [r for r in caplog.records if r.name == "auto-attack"]
        autoattack_suite(model, x, y, cfg, progress=False, verbose=True)
        assert any("robust accuracy" in r.getMessage() for r in caplog.records if r.name == "auto-attack")

    softmax = nn.Sequential(model, nn.Softmax(dim=1))  # the checks flag probabilities instead of logits
    with pytest.warns(UserWarning, match="pyautoattack: it seems that the output is a probability distribution"):
        autoattack_suite(softmax, x, y, cfg, progress=False)


def test_nothing_to_attack_and_uint8_images(ten):
    model, x, y = ten
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    rows = autoattack_suite(model, x, wrong, custom(), progress=False)  # no image is correct: none is attacked
    assert not rows["clean_correct"].any() and (rows["linf"] == 0).all() and rows["detail"].eq("").all()

    images = stored(x)  # as stored: uint8 NHWC
    from_uint8 = autoattack_suite(model, images, y, custom(), progress=False)
    pd.testing.assert_frame_equal(from_uint8, autoattack_suite(model, images.permute(0, 3, 1, 2).float() / 255, y,
                                                               custom(), progress=False))


def test_bad_input_refused(ten):
    model, x, y = ten
    with pytest.raises(ValueError, match="eps must be a non-empty list of numbers in \\[0, 1\\]"):
        autoattack_suite(model, x, y, custom(), eps=[8], progress=False)
    with pytest.raises(ValueError, match="labels must be int64"):
        autoattack_suite(model, x, y.int(), custom(), progress=False)


class Quantize(nn.Module):
    """Rounds pixels to 1/4 steps: the gradient is zero everywhere (gradient masking, as in a broken defence)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def test_square_beating_apgd_is_flagged(ten):
    model, x, y = ten
    masked = nn.Sequential(Quantize(), model)
    cfg = custom(attacks=("apgd-ce", "square"), n_iter=5, square_queries=100, eps=(32 / 255,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = autoattack_suite(masked, x, y, cfg, progress=False)
    assert (rows["detail"] == "square").any()
    assert any("Square Attack has decreased the robust accuracy" in str(w.message) for w in caught)
