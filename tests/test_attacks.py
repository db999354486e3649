"""Tests for robustlora.attacks.gradient (FGSM, PGD) and robustlora.evaluation.suite (the attack suite) on tiny CPU
models (tests/tiny.py; the fixtures `trained` and `suite_data` are in conftest.py)."""

from __future__ import annotations

import foolbox as fb
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlora.attacks import gradient as attacks
from robustlora.config import AttackConfig
from robustlora.attacks.gradient import fgsm, fgsm_sweep, input_gradient, linf_start, pgd
from robustlora.attacks.inputs import check_eps_grid, check_image_ids, to_batch
from robustlora.attacks.outcomes import IMAGE_COLUMNS
from robustlora.evaluation.suite import DIAGNOSTIC_COLUMNS, attack_suite, summarize_images
from robustlora.models.resnet import eval_mode
from tiny import Quantised, TinyNet, attack_cfg, make_data

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(32, seed=2)


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_tiny_model_is_accurate(trained, batch):
    # the suite tests below are only meaningful on a model that classifies most clean images correctly
    x, y = batch
    with torch.no_grad():
        assert (trained(x).argmax(1) == y).float().mean() >= 0.9


def assert_invariants(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.5])
def test_fgsm_invariants_and_loss_increases(trained, batch, eps):
    x, y = batch
    x_adv = fgsm(trained, x, y, eps)
    assert_invariants(x, x_adv, eps)
    # every pixel moves by exactly ε unless clipped by the [0, 1] box
    moved = (x_adv - x).abs()
    unclipped = (x_adv > 0) & (x_adv < 1)
    assert torch.allclose(moved[unclipped], torch.full_like(moved[unclipped], eps), atol=1e-6)
    assert ce(trained, x_adv, y).mean() > ce(trained, x, y).mean()


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_invariants_and_beats_fgsm(trained, batch, random_start, restarts):
    x, y = batch
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(trained, x, y, eps, step_size=2 / 255, steps=10, random_start=random_start, restarts=restarts,
                generator=g)
    assert_invariants(x, x_adv, eps)
    assert ce(trained, x_adv, y).mean() > ce(trained, fgsm(trained, x, y, eps), y).mean()


def test_pgd_is_deterministic_given_generator(trained, batch):
    x, y = batch
    runs = [pgd(trained, x, y, 8 / 255, 2 / 255, 3, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = pgd(trained, x, y, 8 / 255, 2 / 255, 3, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(runs[0], other)


def test_eps_zero_returns_x_exactly(trained, batch):
    x, y = batch
    assert torch.equal(fgsm(trained, x, y, 0.0), x)
    assert torch.equal(pgd(trained, x, y, 0.0, 1 / 255, 5), x)
    assert torch.equal(fgsm_sweep(trained, x, y, [0.0, 4 / 255])[0], x)
    out = fgsm(trained, x, y, 0.0)
    out += 1  # a copy, not an alias of the caller's tensor
    assert not torch.equal(out, x)


def test_model_mode_restored_and_batchnorm_in_eval(batch):
    x, y = batch
    model = TinyNet()
    model.train()
    model.fc.eval()  # a mixed-mode model must come back exactly as it was
    stats = model.bn.running_mean.clone()
    fgsm(model, x, y, 8 / 255)
    pgd(model, x, y, 8 / 255, 2 / 255, 2)
    assert model.training and model.bn.training and model.conv.training and not model.fc.training
    # in train mode BatchNorm would have updated its running statistics
    assert torch.equal(model.bn.running_mean, stats)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.fc.training


def test_no_gradients_left_on_parameters(batch):
    x, y = batch
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    model.fc.bias.grad = torch.full_like(model.fc.bias, 7.0)
    before = {k: (p.requires_grad, None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()}
    fgsm_sweep(model, x, y, [1 / 255, 4 / 255])
    pgd(model, x, y, 8 / 255, 2 / 255, 3, restarts=2)
    for k, p in model.named_parameters():
        requires_grad, grad = before[k]
        assert p.requires_grad == requires_grad, k
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad), k


def test_input_gradient_flag_of_caller_untouched(trained, batch):
    x, y = batch
    x = x.clone()
    fgsm(trained, x, y, 4 / 255)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: fgsm(m, (x - 0.5) / 0.25, y, 8 / 255), r"\[0, 1\]"),
    (lambda m, x, y: pgd(m, x * 2, y, 8 / 255, 2 / 255, 3), r"\[0, 1\]"),
    (lambda m, x, y: fgsm(m, x, y, -0.1), "eps must be"),
    (lambda m, x, y: pgd(m, x, y, 8 / 255, 2 / 255, 0), "steps"),
    (lambda m, x, y: pgd(m, x, y, 8 / 255, 2 / 255, 3, restarts=0), "restarts"),
    (lambda m, x, y: pgd(m, x, y, 8 / 255, -1.0, 3), "step_size"),
    (lambda m, x, y: fgsm(m, x, y.float(), 8 / 255), "int64"),
    (lambda m, x, y: pgd(m, x, y, 8 / 255, 2 / 255, 3, keep="first"), "keep"),
])
def test_refuses_silently_wrong_usage(trained, batch, call, match):
    x, y = batch
    with pytest.raises(ValueError, match=match):
        call(trained, x, y)


def test_refuses_non_float_images(trained, batch):
    x, y = batch
    with pytest.raises(TypeError, match="float"):
        fgsm(trained, (x * 255).to(torch.uint8), y, 8 / 255)


def foolbox_attack(model: nn.Module, attack: fb.Attack, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1))
    _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
    return clipped


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255])
def test_fgsm_equals_foolbox(trained, batch, eps):
    x, y = batch
    ours = fgsm(trained, x, y, eps)
    theirs = foolbox_attack(trained, fb.attacks.LinfFastGradientAttack(random_start=False), x, y, eps)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("eps, step, steps", [(8 / 255, 2 / 255, 10), (4 / 255, 1 / 255, 5)])
def test_pgd_equals_foolbox(trained, batch, eps, step, steps):
    x, y = batch
    ours = pgd(trained, x, y, eps, step, steps, random_start=False, keep="last")
    attack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=False)
    theirs = foolbox_attack(trained, attack, x, y, eps)
    assert (ours - theirs).abs().max() <= 1e-6
    # the comparison is not vacuous: PGD moved well beyond one FGSM step
    assert (ours - fgsm(trained, x, y, eps)).abs().max() > 1e-3


class CountingNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0
        self.backwards = 0
        self.register_full_backward_hook(lambda *_: setattr(self, "backwards", self.backwards + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return super().forward(x)


def test_fgsm_sweep_equals_fgsm_with_one_gradient(batch):
    x, y = batch
    torch.manual_seed(3)
    model = CountingNet()
    eps_list = [0.0, 1 / 255, 4 / 255, 8 / 255, 0.5]
    swept = fgsm_sweep(model, x, y, eps_list)
    assert (model.forwards, model.backwards) == (1, 1)
    for e, x_adv in zip(eps_list, swept):
        assert torch.equal(x_adv, fgsm(model, x, y, e))
    assert model.backwards == 1 + 4  # one more per non-zero single-ε call: the counter does see backward passes


class Threshold(nn.Module):
    """Class 1 wins iff pixel (0, 0) of the image exceeds 0.5; the loss of label 0 grows with that pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 50 * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([-s, s], dim=1)


# 3 restarts of 64 images per pass, then 2 + 1, then 1 + 1 + 1
@pytest.mark.parametrize("restart_batch", [512, 128, 64])
def test_restarts_keep_successful_restart_per_example(monkeypatch, restart_batch):
    monkeypatch.setattr(attacks, "RESTART_BATCH", restart_batch)
    model = Threshold()
    n, eps = 64, 0.1
    x = torch.full((n, 1, 2, 2), 0.45)
    y = torch.zeros(n, dtype=torch.long)
    # step size 0: each run ends at its random start, so success depends only on the draw
    runs = [pgd(model, x, y, eps, 0.0, 1, restarts=1, generator=g, keep="last")
            for g in [torch.Generator().manual_seed(11)] for _ in range(3)]
    success = torch.stack([r[:, 0, 0, 0] > 0.5 for r in runs])  # (restart, example)
    # the constructed case exercises every branch: first-run success, later-run success, and no success at all
    assert success[0].any() and (~success[0] & success[1:].any(0)).any() and (~success.any(0)).any()
    expected = torch.empty_like(x)
    for i in range(n):
        hits = torch.nonzero(success[:, i]).flatten()
        best = int(hits[0]) if len(hits) else int(torch.stack([r[i, 0, 0, 0] for r in runs]).argmax())
        expected[i] = runs[best][i]
    got = pgd(model, x, y, eps, 0.0, 1, restarts=3, generator=torch.Generator().manual_seed(11), keep="last")
    assert torch.equal(got, expected)
    assert (got[:, 0, 0, 0] > 0.5).sum() == success.any(0).sum()


def test_pgd_under_bf16_autocast(trained, batch):
    x, y = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(trained, x, y, 8 / 255, 2 / 255, 5, random_start=False)
        x_fgsm = fgsm(trained, x, y, 8 / 255)
    assert x_adv.dtype == torch.float32
    assert_invariants(x, x_adv, 8 / 255)
    assert_invariants(x, x_fgsm, 8 / 255)
    assert ce(trained, x_adv, y).mean() > ce(trained, x, y).mean() + 0.1


# --- PGD's strongest iterate ------------------------------------------------------------------------------------


def outcome(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(misclassified, cross-entropy) per example."""
    with torch.no_grad():
        logits = model(x_adv)
    return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("eps, rel_step, restarts", [(4 / 255, 0.5, 1), (4 / 255, 1.0, 3), (3 / 255, 0.25, 2)])
def test_best_iterate_never_weaker_than_last(trained, batch, eps, rel_step, restarts):
    x, y = batch
    kw = dict(step_size=rel_step * eps, steps=10, random_start=True, restarts=restarts)
    best = pgd(trained, x, y, eps, generator=torch.Generator().manual_seed(0), **kw)
    last = pgd(trained, x, y, eps, generator=torch.Generator().manual_seed(0), keep="last", **kw)
    assert_invariants(x, best, eps)
    fooled_best, loss_best = outcome(trained, best, y)
    fooled_last, loss_last = outcome(trained, last, y)
    assert fooled_last.any() and not fooled_best.all()  # the comparison is not decided by the setting alone
    # per image: if the last iterate fools the model, so does the best; alike outcomes -> best has no lower loss
    assert not (fooled_last & ~fooled_best).any()
    alike = fooled_best == fooled_last
    assert (loss_best[alike] >= loss_last[alike] - 1e-6).all()
    assert fooled_best.sum() >= fooled_last.sum()


def test_best_iterate_is_the_strongest_of_all_iterates(trained, batch):
    x, y = batch
    eps, step, steps = 8 / 255, 3 / 255, 6
    # without a random start the k-step last iterate is the k-th iterate of the longer run
    iterates = [x] + [pgd(trained, x, y, eps, step, k, random_start=False, keep="last") for k in range(1, steps + 1)]
    scores = [outcome(trained, it, y) for it in iterates]
    expected = torch.empty_like(x)
    for i in range(len(y)):
        # lexicographic (misclassified, loss); max() keeps the first of equals, as pgd does
        k = max(range(len(iterates)), key=lambda k: (bool(scores[k][0][i]), float(scores[k][1][i])))
        expected[i] = iterates[k][i]
    got = pgd(trained, x, y, eps, step, steps, random_start=False)
    assert torch.equal(got, expected)
    # not vacuous: for some images an earlier iterate beats the last one
    assert not torch.equal(got, iterates[-1])


class Bump(nn.Module):
    """Class 1 wins iff pixel (0, 0) lies in (0.515, 0.535); its logit peaks at 0.525, so sign-gradient steps of 0.04
    from 0.45 oscillate 0.49 <-> 0.53 and an odd number of steps ends outside the fooling window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 1 - 10_000 * (x[:, 0, 0, 0] - 0.525) ** 2
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_best_iterate_keeps_a_success_that_the_last_step_loses():
    model, x, y = Bump(), torch.full((3, 1, 2, 2), 0.45), torch.zeros(3, dtype=torch.long)
    last = pgd(model, x, y, 0.1, 0.04, 9, random_start=False, keep="last")
    best = pgd(model, x, y, 0.1, 0.04, 9, random_start=False)
    assert torch.allclose(last[:, 0, 0, 0], torch.tensor(0.49)) and torch.allclose(best[:, 0, 0, 0], torch.tensor(0.53))
    assert (outcome(model, best, y)[0]).all() and not (outcome(model, last, y)[0]).any()


def test_best_iterate_across_restarts_takes_the_highest_loss():
    # Threshold's loss grows with pixel (0, 0): the best of every restart's iterates is the largest pixel drawn
    model, n, eps = Threshold(), 64, 0.1
    x, y = torch.full((n, 1, 2, 2), 0.45), torch.zeros(n, dtype=torch.long)
    runs = [pgd(model, x, y, eps, 0.0, 1, generator=g) for g in [torch.Generator().manual_seed(4)] for _ in range(3)]
    got = pgd(model, x, y, eps, 0.0, 1, restarts=3, generator=torch.Generator().manual_seed(4))
    expected = torch.stack([r[:, 0, 0, 0] for r in runs]).max(0).values
    assert torch.equal(got[:, 0, 0, 0], expected)
    # differs from keep='last', which keeps the first successful restart
    first = pgd(model, x, y, eps, 0.0, 1, restarts=3, generator=torch.Generator().manual_seed(4), keep="last")
    assert not torch.equal(got, first) and ((got[:, 0, 0, 0] > 0.5) == (first[:, 0, 0, 0] > 0.5)).all()


@pytest.mark.parametrize("keep, forwards", [("best", 5 + 1), ("last", 5)])
def test_best_iterate_costs_one_forward_per_run(batch, keep, forwards):
    x, y = batch
    torch.manual_seed(3)
    model = CountingNet()
    pgd(model, x, y, 8 / 255, 2 / 255, 5, keep=keep)
    # the loss of each iterate comes from its gradient's forward pass; only the last iterate is evaluated anew
    assert (model.forwards, model.backwards) == (forwards, 5)


def test_linf_start_is_pgds_start(trained, batch):
    x, y = batch
    eps = 8 / 255
    start, lo, hi = linf_start(x, eps, True, torch.Generator().manual_seed(0))
    assert_invariants(x, start, eps)
    assert torch.equal(lo, (x - eps).clamp(min=0)) and torch.equal(hi, (x + eps).clamp(max=1))
    # a PGD step of size 0 stays where it started
    assert torch.equal(start, pgd(trained, x, y, eps, 0.0, 1, generator=torch.Generator().manual_seed(0), keep="last"))
    assert torch.equal(linf_start(x, eps, False, None)[0], x)


# --- the attack suite -------------------------------------------------------------------------------------------


IDS = np.arange(100, 148)  # the images' indices in their split


@pytest.fixture(scope="module")
def suite_df(trained, suite_data):
    return attack_suite(trained, *suite_data, attack_cfg(), image_ids=IDS)


def test_attack_suite_per_image_rows(suite_df, suite_data):
    images, labels = suite_data
    assert list(suite_df.columns) == IMAGE_COLUMNS + DIAGNOSTIC_COLUMNS
    # n_images x (FGSM and PGD at every ε, plus PGD at the sanity ε)
    assert len(suite_df) == 48 * (2 * 2 + 1)
    runs = suite_df.groupby(["attack", "eps_label"], sort=False)
    assert list(runs.groups) == [("fgsm", "eps_2"), ("fgsm", "eps_4"), ("pgd", "eps_2"), ("pgd", "eps_4"),
                                 ("pgd", "eps_0.5")]
    clean = ["image", "label", "clean_pred", "clean_correct", "clean_true_prob", "clean_max_prob", "clean_margin"]
    first = suite_df.iloc[:48][clean].reset_index(drop=True)
    for _, part in runs:
        assert part[clean].reset_index(drop=True).equals(first)  # the same clean outcome under every attack
    assert first["image"].tolist() == IDS.tolist() and first["label"].tolist() == labels.tolist()
    dtypes = suite_df.dtypes.astype(str).to_dict()
    assert {k: dtypes[k] for k in ("eps", "image", "label", "clean_pred", "adv_pred", "clean_correct", "adv_margin",
                                   "adv_max_prob")} == {
        "eps": "float64", "image": "int32", "label": "int16", "clean_pred": "int16", "adv_pred": "int16",
        "clean_correct": "bool", "adv_margin": "float32", "adv_max_prob": "float32"}


def test_attack_suite_outcomes_are_consistent(trained, suite_df, suite_data):
    images, labels = suite_data
    with torch.no_grad():
        logits = trained(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    probs = logits.softmax(1)
    first = suite_df.iloc[:48]
    assert first["clean_pred"].tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(first["clean_max_prob"], probs.max(1).values, atol=1e-6)
    np.testing.assert_allclose(first["clean_true_prob"], probs[torch.arange(48), labels], atol=1e-6)
    for when in ("clean", "adv"):
        correct = suite_df[f"{when}_correct"]
        assert (correct == (suite_df[f"{when}_pred"] == suite_df["label"])).all()
        assert (correct == (suite_df[f"{when}_margin"] > 0)).all()
        assert (suite_df[f"{when}_max_prob"] >= suite_df[f"{when}_true_prob"] - 1e-7).all()


def test_attack_suite_pgd_stronger_than_fgsm_and_total_at_sanity_eps(suite_df):
    table = summarize_images(suite_df)
    asr = table[table["metric"] == "attack_success_rate"].set_index(["attack", "eps_label"])["value"]
    for label in ("eps_2", "eps_4"):
        assert asr["pgd", label] >= asr["fgsm", label]
    assert asr["pgd", "eps_4"] > asr["pgd", "eps_2"]
    assert asr["pgd", "eps_4"] > asr["fgsm", "eps_4"]  # iterating finds adversarials one step misses
    assert asr["pgd", "eps_0.5"] == 1.0
    assert ("fgsm", "eps_0.5") not in asr.index  # the sanity ε is a PGD check only


def test_attack_suite_deterministic_and_layout_agnostic(trained, suite_data, suite_df):
    images, labels = suite_data
    assert attack_suite(trained, images, labels, attack_cfg(), image_ids=IDS).equals(suite_df)
    # float NCHW in [0, 1] gives the same rows as uint8 NHWC
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert attack_suite(trained, as_float, torch.from_numpy(labels), attack_cfg(), image_ids=IDS).equals(suite_df)
    other_seed = attack_suite(trained, images, labels, attack_cfg(seed=1), image_ids=IDS)
    assert not other_seed.equals(suite_df)
    pgd_rows = suite_df["attack"] == "pgd"
    assert other_seed[~pgd_rows].equals(suite_df[~pgd_rows])  # the seed moves only PGD's random starts


def test_attack_suite_evaluates_in_float32_under_autocast(trained, suite_data):
    images, labels = suite_data
    cfg = attack_cfg(eps=[4 / 255], sanity_eps=None, steps=2)
    plain = attack_suite(trained, images[:8], labels[:8], cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attack_suite(trained, images[:8], labels[:8], cfg)
    assert inside.equals(plain)


def test_attack_suite_restores_mode_and_skips_sanity_when_unset(suite_data):
    model = TinyNet().train()
    df = attack_suite(model, *suite_data, attack_cfg(eps=[8 / 255], sanity_eps=None, steps=1))
    assert model.training
    assert len(df) == 48 * 2 and set(df["eps_label"]) == {"eps_8"}


def test_attack_suite_refuses_mismatched_image_ids(trained, suite_data):
    with pytest.raises(ValueError, match="image_ids"):
        attack_suite(trained, *suite_data, attack_cfg(), image_ids=np.arange(3))


def test_attack_suite_refuses_nchw_uint8(trained, suite_data):
    images, labels = suite_data
    with pytest.raises(ValueError, match="NHWC"):
        attack_suite(trained, images.transpose(0, 3, 1, 2).copy(), labels, attack_cfg())


# --- gradient-masking diagnostics and the convergence check -------------------------------------------------------


def test_fgsm_sweep_from_a_given_gradient_equals_its_own(trained, batch):
    x, y = batch
    grad = input_gradient(trained, x, y)
    before = grad.clone()
    for ours, given in zip(fgsm_sweep(trained, x, y, [2 / 255, 8 / 255]),
                           fgsm_sweep(trained, x, y, [2 / 255, 8 / 255], grad=grad)):
        assert torch.equal(ours, given)
    assert torch.equal(grad, before)  # the caller's gradient is not overwritten by its sign


def test_diagnostics_columns(trained, suite_df, suite_data):
    images, labels = suite_data
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    grad = input_gradient(trained, x, torch.from_numpy(labels))
    first = suite_df.iloc[:48]
    np.testing.assert_allclose(first["clean_grad_norm"], grad.abs().flatten(1).sum(1), rtol=1e-5)
    assert (first["clean_grad_norm"] > 0).all()
    assert set(suite_df["clean_output"]) == {"logits"}


def test_diagnostics_see_masked_gradients_and_softmax_outputs(trained, suite_data):
    images, labels = suite_data
    cfg = attack_cfg(eps=(4 / 255,), sanity_eps=None, steps=2)
    masked = attack_suite(Quantised(trained), images[:8], labels[:8], cfg)
    assert (masked["clean_grad_norm"] == 0).all()
    softmax = attack_suite(nn.Sequential(trained, nn.Softmax(dim=1)), images[:8], labels[:8], cfg)
    assert set(softmax["clean_output"]) == {"probabilities"}
    log_softmax = attack_suite(nn.Sequential(trained, nn.LogSoftmax(dim=1)), images[:8], labels[:8], cfg)
    assert set(log_softmax["clean_output"]) == {"log-probabilities"}


def test_convergence_rows_never_weaker_than_pgd_and_leave_other_rows_alone(trained, suite_df, suite_data):
    cfg = attack_cfg(steps=2, convergence={"n_images": 30, "steps_factor": 3, "restarts": 2, "eps": [4 / 255]})
    with_check = attack_suite(trained, *suite_data, cfg, image_ids=IDS)
    without = attack_suite(trained, *suite_data, attack_cfg(steps=2), image_ids=IDS)
    strong = with_check[with_check["attack"] == "pgd_strong"].reset_index(drop=True)
    # the other rows do not depend on the check (its random starts come from a stream of their own)
    pd.testing.assert_frame_equal(with_check[with_check["attack"] != "pgd_strong"].reset_index(drop=True),
                                  without.reset_index(drop=True))
    assert strong["image"].tolist() == IDS[:30].tolist() and set(strong["eps_label"]) == {"eps_4"}
    pgd_rows = without[(without["attack"] == "pgd") & (without["eps_label"] == "eps_4")].iloc[:30]
    pgd_fooled = (pgd_rows["clean_correct"] & ~pgd_rows["adv_correct"]).to_numpy()
    strong_fooled = (strong["clean_correct"] & ~strong["adv_correct"]).to_numpy()
    assert (strong_fooled >= pgd_fooled).all()  # an image PGD fooled stays fooled
    assert strong_fooled.sum() > pgd_fooled.sum()  # 2-step PGD is weak here: 6 steps x 2 restarts find more


# --- the inputs every attack runner takes (robustlora.attacks.inputs) ----------------------------------------------


def test_inputs_checked_and_converted_once(suite_data):
    images, labels = suite_data
    x = to_batch(images, 4, 8, torch.device("cpu"))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images[4:8]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(to_batch(x, 1, 3, torch.device("cpu")), x[1:3])  # float NCHW as is
    assert check_image_ids(None, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"image_ids must have shape \(3,\)"):
        check_image_ids([1, 2], 3)
    assert check_eps_grid([8 / 255, 1], "square") == [8 / 255, 1.0]
    for bad in ([], [8], [float("nan")]):
        with pytest.raises(ValueError, match=r"square eps must be a non-empty list of numbers in \[0, 1\]"):
            check_eps_grid(bad, "square")


def test_attack_suite_pgd_covers_the_first_grid_images_off_full_eps(trained, suite_data, suite_df):
    images, labels = suite_data
    cfg = attack_cfg().model_copy(update={"full_eps": (4 / 255,), "grid_images": 30})
    df = attack_suite(trained, images, labels, cfg, image_ids=IDS)
    counts = df.groupby(["attack", "eps_label"], sort=False).size().to_dict()
    # FGSM and PGD at full_eps on all 48 images; PGD at 2/255 and at the sanity ε on the first 30 (spanning batches)
    assert counts == {("fgsm", "eps_2"): 48, ("fgsm", "eps_4"): 48, ("pgd", "eps_2"): 30, ("pgd", "eps_4"): 48,
                      ("pgd", "eps_0.5"): 30}
    part = df[(df["attack"] == "pgd") & (df["eps_label"] == "eps_2")]
    assert part["image"].tolist() == IDS[:30].tolist()
    fgsm = suite_df["attack"] == "fgsm"
    assert df[df["attack"] == "fgsm"].reset_index(drop=True).equals(suite_df[fgsm].reset_index(drop=True))
    with pytest.raises(ValueError, match=r"must be values of attack.eps \(2/255, 4/255\), got 8/255"):
        AttackConfig.model_validate({**attack_cfg().model_dump(), "full_eps": [8 / 255]})


def test_pgd_targeted_runs_only_add_successes_and_refuse_keep_last(trained):
    x, y = make_data(48, seed=5)
    eps = 4 / 255
    plain = pgd(trained, x, y, eps, eps / 4, 3, generator=torch.Generator().manual_seed(0))
    more = pgd(trained, x, y, eps, eps / 4, 3, generator=torch.Generator().manual_seed(0), targets=2, target_steps=6)
    assert_invariants(x, more, eps)
    with torch.no_grad():
        fooled_plain, fooled_more = trained(plain).argmax(1) != y, trained(more).argmax(1) != y
    # the cross-entropy runs are the same draws; the targeted runs only touch what they left correct
    assert bool((fooled_more | ~fooled_plain).all()) and torch.equal(more[fooled_plain], plain[fooled_plain])
    again = pgd(trained, x, y, eps, eps / 4, 3, generator=torch.Generator().manual_seed(0), targets=2, target_steps=6)
    assert torch.equal(more, again)
    with pytest.raises(ValueError, match="targets"):
        pgd(trained, x, y, eps, eps / 4, 3, keep="last", targets=1)
