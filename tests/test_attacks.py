"""Tests for robustlora.attacks (FGSM, PGD) and robustlora.evaluate (the attack suite) on tiny CPU models."""

from __future__ import annotations

import json

import foolbox as fb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlora.attacks import eval_mode, fgsm, fgsm_sweep, pgd
from robustlora.evaluate import SUITE_COLUMNS, attack_suite, flat_metrics, summarize
from robustlora.metrics import METRICS

N_CLASSES = 4
SIZE = 16


class TinyNet(nn.Module):
    """Conv-BN-ReLU-pool-FC with normalisation inside, like the study's models (inputs in [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.fc(torch.flatten(self.pool(F.relu(self.bn(self.conv(x)))), 1))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a slightly brighter quadrant that encodes the class: learnable in a few steps, and weak
    enough that ε = 4/255 fools some images and 8/255 most."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = 0.35 + 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    h = SIZE // 2
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * h:(r + 1) * h, col * h:(col + 1) * h] += 0.04
    return x.clamp(0, 1), y


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine every op would wait for them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    x, y = make_data(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


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
    ours = pgd(trained, x, y, eps, step, steps, random_start=False)
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


def test_restarts_keep_successful_restart_per_example():
    model = Threshold()
    n, eps = 64, 0.1
    x = torch.full((n, 1, 2, 2), 0.45)
    y = torch.zeros(n, dtype=torch.long)
    # step size 0: each run ends at its random start, so success depends only on the draw
    runs = [pgd(model, x, y, eps, 0.0, 1, restarts=1, generator=g)
            for g in [torch.Generator().manual_seed(11)] for _ in range(3)]
    success = torch.stack([r[:, 0, 0, 0] > 0.5 for r in runs])  # (restart, example)
    # the constructed case exercises every branch: first-run success, later-run success, and no success at all
    assert success[0].any() and (~success[0] & success[1:].any(0)).any() and (~success.any(0)).any()
    expected = torch.empty_like(x)
    for i in range(n):
        hits = torch.nonzero(success[:, i]).flatten()
        best = int(hits[0]) if len(hits) else int(torch.stack([r[i, 0, 0, 0] for r in runs]).argmax())
        expected[i] = runs[best][i]
    got = pgd(model, x, y, eps, 0.0, 1, restarts=3, generator=torch.Generator().manual_seed(11))
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


# --- the attack suite -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_data(48, seed=3)
    # stored like the data stages do: uint8 NHWC
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), y.numpy()


SUITE = dict(fgsm_eps=[2 / 255, 4 / 255, 0.5], pgd_eps=[2 / 255, 4 / 255, 0.5], pgd_steps=10, pgd_rel_step_size=0.25,
             batch_size=20, n_boot=200, seed=0)


@pytest.fixture(scope="module")
def suite_df(trained, suite_data):
    return attack_suite(trained, *suite_data, **SUITE)


def test_attack_suite_tidy_table(suite_df):
    assert list(suite_df.columns) == SUITE_COLUMNS
    assert set(suite_df["attack"]) == {"fgsm", "pgd"}
    assert len(suite_df) == 2 * 3 * len(METRICS)
    for attack in ("fgsm", "pgd"):
        part = suite_df[suite_df["attack"] == attack]
        assert sorted(set(part["eps"])) == sorted(SUITE["fgsm_eps"])
        assert set(part["eps_label"]) == {"eps_2", "eps_4", "eps_0.5"}
        for _, group in part.groupby("eps"):
            assert list(group["metric"]) == METRICS
    assert (suite_df.loc[suite_df["metric"] == "clean_accuracy", "n"] == 48).all()
    assert suite_df.loc[suite_df["metric"] == "clean_accuracy", "value"].nunique() == 1


def test_attack_suite_pgd_stronger_than_fgsm_and_total_at_half(suite_df):
    asr = suite_df[suite_df["metric"] == "attack_success_rate"].set_index(["attack", "eps"])["value"]
    for eps in SUITE["pgd_eps"]:
        assert asr["pgd", eps] >= asr["fgsm", eps]
    assert asr["pgd", 4 / 255] > asr["pgd", 2 / 255]
    assert asr["pgd", 4 / 255] > asr["fgsm", 4 / 255]  # iterating finds adversarials one step misses
    assert asr["pgd", 0.5] >= 0.99
    robust = suite_df[suite_df["metric"] == "robust_accuracy"].set_index(["attack", "eps"])["value"]
    assert robust["pgd", 0.5] <= 0.01


def test_attack_suite_deterministic_and_layout_agnostic(trained, suite_data, suite_df):
    images, labels = suite_data
    again = attack_suite(trained, images, labels, **SUITE)
    assert again.equals(suite_df)
    # float NCHW in [0, 1] gives the same table as uint8 NHWC
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert attack_suite(trained, as_float, torch.from_numpy(labels), **SUITE).equals(suite_df)
    other_seed = attack_suite(trained, images, labels, **{**SUITE, "seed": 1})
    assert not other_seed.equals(suite_df)


def test_attack_suite_restores_mode(suite_data):
    model = TinyNet().train()
    attack_suite(model, *suite_data, fgsm_eps=[8 / 255], pgd_eps=[], pgd_steps=1, n_boot=0)
    assert model.training


@pytest.mark.parametrize("kwargs, match", [
    (dict(pgd_step_size=0.01, pgd_rel_step_size=0.25), "exactly one"),
    (dict(), "exactly one"),
    (dict(pgd_rel_step_size=0.25, pgd_eps=[8 / 255, 8 / 255]), "duplicate"),
    (dict(pgd_rel_step_size=0.25, pgd_steps=0), "pgd_steps"),
])
def test_attack_suite_refuses_bad_arguments(trained, suite_data, kwargs, match):
    args = dict(fgsm_eps=[8 / 255], pgd_eps=[8 / 255], pgd_steps=2, n_boot=0) | kwargs
    with pytest.raises(ValueError, match=match):
        attack_suite(trained, *suite_data, **args)


def test_attack_suite_refuses_nchw_uint8(trained, suite_data):
    images, labels = suite_data
    with pytest.raises(ValueError, match="NHWC"):
        attack_suite(trained, images.transpose(0, 3, 1, 2).copy(), labels, fgsm_eps=[0.1], pgd_eps=[], pgd_steps=1)


def test_summarize_and_flat_metrics(suite_df):
    summary = summarize(suite_df)
    clean = float(suite_df.loc[suite_df["metric"] == "clean_accuracy", "value"].iloc[0])
    assert summary["clean_accuracy"] == clean
    assert set(summary) == {"clean_accuracy", "fgsm", "pgd"}
    assert set(summary["pgd"]) == {"eps_2", "eps_4", "eps_0.5"}
    assert set(summary["fgsm"]["eps_4"]) == {"asr", "robust_accuracy", "certainty_clean", "certainty_adv",
                                             "certainty_clean_correct", "certainty_adv_correct",
                                             "true_class_prob_clean", "true_class_prob_adv"}
    row = suite_df[(suite_df["attack"] == "pgd") & (suite_df["eps_label"] == "eps_4")].set_index("metric")["value"]
    assert summary["pgd"]["eps_4"]["asr"] == row["attack_success_rate"]
    json.dumps(summary, allow_nan=False)

    flat = flat_metrics(suite_df)
    assert flat["clean_accuracy"] == clean
    assert flat["pgd/eps_4/asr"] == row["attack_success_rate"]
    assert flat["fgsm/eps_2/robust_accuracy"] == float(
        suite_df[(suite_df["attack"] == "fgsm") & (suite_df["eps_label"] == "eps_2")
                 & (suite_df["metric"] == "robust_accuracy")]["value"].iloc[0])
    assert len(flat) == 1 + 2 * 3 * 8
