"""Tests for robustlora.attacks.blackbox: ART's Square, HopSkipJump, Boundary and ZOO with exact per-image query counts,
on a tiny hand-set CPU model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustlora.attacks import blackbox as bb
from robustlora.attacks.blackbox import BlackboxRun, blackbox_attack, run_blackbox
from robustlora.attacks.outcomes import EXTRA_COLUMNS, IMAGE_COLUMNS, LINF_TOL
from robustlora.attacks.queries import QueryCounter, art_classifier
from robustlora.config import BLACKBOX_ATTACKS, BlackboxConfig
from robustlora.errors import ParamError

pytestmark = pytest.mark.usefixtures("single_thread")

N_CLASSES, SIZE, N_IMAGES = 3, 8, 10
WRONG = (0, 1)  # images made misclassified before any attack
GRID = (2 / 255, 8 / 255, 32 / 255, 0.25, 1.0)  # the min-norm attacks' grid: attack.eps-like values plus unbounded
MIN_NORM = ("hopskipjump", "boundary", "zoo")
CFG = BlackboxConfig.model_validate({
    "batch_size": 64, "seed": 3, "device": "cpu",
    "square": {"queries": 60, "eps": [8 / 255], "sanity_eps": 1.0},
    "hopskipjump": {"max_iter": 3, "max_eval": 40, "init_eval": 10, "init_size": 20},
    "boundary": {"max_iter": 20, "num_trial": 5, "sample_size": 5, "init_size": 20},
    "zoo": {"max_iter": 20, "nb_parallel": 64, "learning_rate": 0.1},
})


class ChannelNet(nn.Module):
    """The channel brightest on average is the class: identity 1x1 conv, ReLU, global mean, linear (hand-set)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, N_CLASSES)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(20 * (torch.eye(3) - 1 / 3))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose label channel is brighter by 0.02 to 0.3 (an L∞ attack needs ε of about half that, so
    8/255 fools a few); the WRONG images have another channel brighter instead."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, N_CLASSES, (N_IMAGES,), generator=g)
    x = 0.4 + 0.2 * torch.rand(N_IMAGES, 3, SIZE, SIZE, generator=g)
    boosts = (0.1, 0.1, 0.02, 0.035, 0.05, 0.08, 0.12, 0.16, 0.22, 0.3)
    for i, boost in enumerate(boosts):
        x[i, (int(y[i]) + (1 if i in WRONG else 0)) % N_CLASSES] += boost
    return x, y


@pytest.fixture(scope="module")
def model() -> ChannelNet:
    return ChannelNet().eval()


@pytest.fixture(scope="module")
def data(model) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data()
    correct = (model(x).argmax(1) == y).numpy()
    assert correct.tolist() == [i not in WRONG for i in range(N_IMAGES)]
    return x, y


@pytest.fixture(scope="module")
def runs(model, data) -> dict[str, BlackboxRun]:
    """Each attack run once (lazily), shared by the tests."""
    cache: dict[str, BlackboxRun] = {}

    class Runs(dict):
        def __missing__(self, name: str) -> BlackboxRun:
            cache[name] = run_blackbox(name, model, *data, CFG, eps=GRID, progress=False)
            return cache[name]

    return Runs()


def fooled(run: BlackboxRun, eps: float) -> np.ndarray:
    rows = run.rows()
    at = rows[rows["eps"] == eps]
    return (at["clean_correct"] & ~at["adv_correct"]).to_numpy()


# ----------------------------------------------------------------------------- rows


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_rows_follow_the_schema_and_order(runs, name):
    run = runs[name]
    rows = run.rows()
    assert list(rows.columns) == IMAGE_COLUMNS + EXTRA_COLUMNS
    expected_eps = (8 / 255, 1.0) if name == "square" else GRID  # Square: its own grid plus its sanity ε
    assert run.eps == expected_eps
    assert rows["eps"].tolist() == [e for e in expected_eps for _ in range(N_IMAGES)]
    assert rows["image"].tolist() == list(range(N_IMAGES)) * len(expected_eps)
    assert (rows["attack"] == name).all() and (rows["detail"] == "").all()
    assert rows["queries"].dtype == np.float64 and rows["linf"].dtype == np.float32
    assert rows["image"].dtype == np.int32 and rows["label"].dtype == np.int16


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_points_are_images_within_eps(runs, data, name):
    run, (x, _) = runs[name], data
    rows = run.rows()
    for e in run.eps:
        p = run.points[e]
        assert p.min() >= 0 and p.max() <= 1
        linf = (p - x).abs().flatten(1).amax(1)
        assert (linf <= e + LINF_TOL).all()
        np.testing.assert_allclose(rows.loc[rows["eps"] == e, "linf"].to_numpy(), linf.numpy(), atol=1e-7)


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_success_is_the_models_prediction_on_the_point(runs, model, data, name):
    run, (_, y) = runs[name], data
    rows = run.rows()
    for e in run.eps:
        at = rows[rows["eps"] == e]
        with torch.no_grad():
            pred = model(run.points[e]).argmax(1).numpy()
        assert (at["adv_pred"].to_numpy() == pred).all()
        assert (at["adv_correct"].to_numpy() == (pred == y.numpy())).all()


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_queries_are_counted_for_fooled_images_only(runs, name):
    rows = runs[name].rows()
    was_fooled = rows["clean_correct"] & ~rows["adv_correct"]
    assert was_fooled.any(), f"{name} fooled no image: the checks below would be empty"
    q = rows["queries"]
    assert (q[was_fooled] >= 1).all() and (q[was_fooled] == q[was_fooled].round()).all()
    assert q[~was_fooled].isna().all()


@pytest.mark.parametrize("name", MIN_NORM)
def test_min_norm_success_grows_with_eps_and_never_needs_more_queries(runs, name):
    run = runs[name]
    order = sorted(run.eps)
    for small, large in zip(order, order[1:]):
        qs, ql = run.queries[small], run.queries[large]
        assert not (~np.isnan(qs) & np.isnan(ql)).any()
        both = ~np.isnan(qs) & ~np.isnan(ql)
        assert (ql[both] <= qs[both]).all()
    assert fooled(run, 1.0).sum() > fooled(run, 2 / 255).sum()


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_misclassified_images_are_not_attacked(runs, data, name):
    run, (x, _) = runs[name], data
    rows = run.rows()
    wrong = rows["image"].isin(WRONG)
    assert not rows.loc[wrong, "clean_correct"].any()
    assert (rows.loc[wrong, "adv_pred"] == rows.loc[wrong, "clean_pred"]).all()
    assert rows.loc[wrong, "queries"].isna().all() and (rows.loc[wrong, "linf"] == 0).all()
    for e in run.eps:
        assert torch.equal(run.points[e][list(WRONG)], x[list(WRONG)])


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_same_seed_same_rows_and_the_callers_rng_untouched(runs, model, data, name):
    np.random.seed(123)
    state = np.random.get_state()
    again = blackbox_attack(name, model, *data, CFG, eps=GRID, progress=False)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    pd.testing.assert_frame_equal(again, runs[name].rows())


def test_another_seed_changes_the_search(model, data):
    other = run_blackbox("hopskipjump", model, *data, CFG.model_copy(update={"seed": 4}), eps=GRID, progress=False)
    first = run_blackbox("hopskipjump", model, *data, CFG, eps=GRID, progress=False)
    assert not torch.equal(other.points[1.0], first.points[1.0])


def test_square_fools_every_image_at_large_eps_within_its_budget(runs):
    run = runs["square"]
    assert fooled(run, 1.0).sum() == N_IMAGES - len(WRONG)
    # ART's Square evaluates the clean image twice, then 3 rows per iteration: the still-robust check, the
    # current point's loss and the candidate's loss
    for e in run.eps:
        assert np.nanmax(run.queries[e]) <= 2 + 3 * CFG.square.queries
    assert fooled(run, 8 / 255).any()


def test_min_norm_attack_reads_every_eps_from_one_run(runs):
    run = runs["hopskipjump"]
    # the unbounded ε sees the random start: the first draw that is misclassified, or an early later one
    assert np.nanmax(run.queries[1.0]) <= CFG.hopskipjump.init_size
    assert fooled(run, 0.25).any()


def test_a_success_inside_a_smaller_ball_carries_to_the_larger_ones():
    # images: fooled only at the small ε; fooled at both, later at the large one; fooled only at the large ε
    small = bb._AtEps(torch.zeros(3, 1, 1, 1), torch.tensor([[0.0, 1.0]] * 3), np.array([5.0, 5.0, np.nan]))
    large = bb._AtEps(torch.ones(3, 1, 1, 1), torch.tensor([[1.0, 0.0]] * 3), np.array([np.nan, 9.0, 7.0]))
    bb._monotone([small, large])
    np.testing.assert_array_equal(large.queries, [5, 5, 7])
    assert large.points.flatten().tolist() == [0, 0, 1]
    assert large.logits.argmax(1).tolist() == [1, 1, 0]


# ----------------------------------------------------------------------------- the query counter


def test_counter_charges_every_forward_row(model, data):
    x, y = data
    rows: list[int] = []
    hook = model.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    try:
        attacked = np.arange(len(WRONG), N_IMAGES)
        square = QueryCounter(model, x, y, [8 / 255], N_CLASSES, bound=8 / 255)
        with bb._numpy_seed(0):
            bb._square(art_classifier(square), square, attacked, 8 / 255, CFG)
        assert sum(rows) == square.queries.sum() > 0
        assert (square.queries[list(WRONG)] == 0).all() and (square.queries[attacked] >= 2).all()

        rows.clear()
        hsj = QueryCounter(model, x, y, GRID, N_CLASSES)
        with hsj.charge([5], repeat=True), bb._numpy_seed(0):
            bb._hopskipjump(art_classifier(hsj), x[5:6].numpy(), int(y[5]), CFG)
        assert sum(rows) == hsj.queries[5] == hsj.queries.sum() > 0
    finally:
        hook.remove()


def test_counter_keeps_the_first_success_within_each_eps(model):
    x = torch.full((2, 3, SIZE, SIZE), 0.5)
    x[:, 0] += 0.1  # class 0
    y = torch.zeros(2, dtype=torch.int64)
    counter = QueryCounter(model, x, y, [0.05, 0.15, 0.25, 0.5], N_CLASSES)
    # image 0 is queried with channel 1 raised by 0.3, 0.2 and 0.12 (all misclassified, that far away) and as it is;
    # image 1, queried in between, as it is
    q = x[[0, 0, 1, 0, 0]].clone()
    for row, boost in zip(q, (0.3, 0.2, 0.0, 0.12, 0.0)):
        row[1] += boost
    classifier = art_classifier(counter)
    with counter.charge([0, 0, 1, 0, 0]):
        pred = classifier.predict(q.numpy(), batch_size=3).argmax(1)  # forwards of rows [0, 0, 1], [0, 0]
    assert pred.tolist() == [1, 1, 0, 1, 0]
    assert counter.queries.tolist() == [4, 1]
    np.testing.assert_array_equal(counter.first[0], [np.nan, 3, 2, 1])  # query 3 is image 0's third
    assert np.isnan(counter.first[1]).all()
    assert torch.equal(counter.points[0, 1], q[3]) and torch.equal(counter.points[0, 3], q[0])
    assert torch.equal(counter.points[1, 3], x[1])  # no success: the clean image


def test_counter_refuses_rows_it_cannot_charge(model, data):
    x, y = data
    counter = QueryCounter(model, x, y, [0.1], N_CLASSES, bound=0.1)
    with pytest.raises(RuntimeError, match="outside QueryCounter.charge"):
        counter(x[:1])
    with pytest.raises(RuntimeError, match="beyond the attack's ε"):
        with counter.charge([2]):
            counter(x[3:4])  # another image, far more than 0.1 away
    with pytest.raises(RuntimeError, match="announced 2"):
        with counter.charge([2, 3]):
            counter(x[2:5])
    with pytest.raises(RuntimeError, match="announced 2"):
        with counter.charge([2, 3]):
            counter(x[2:3])


# ----------------------------------------------------------------------------- arguments


def test_refuses_bad_arguments(model, data):
    with pytest.raises(ParamError, match="unknown black-box attack 'simba'"):
        blackbox_attack("simba", model, *data, CFG, eps=GRID)
    with pytest.raises(ValueError, match="needs eps"):
        blackbox_attack("hopskipjump", model, *data, CFG)
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel units"):
        blackbox_attack("boundary", model, *data, CFG, eps=[8])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        blackbox_attack("boundary", model, data[0] * 255, data[1], CFG, eps=GRID)
    big_square = CFG.model_copy(update={"square": CFG.square.model_copy(update={"p_init": 1.0})})
    with pytest.raises(ParamError, match="blackbox.square.p_init"):
        blackbox_attack("square", model, *data, big_square)
    many = CFG.model_copy(update={"zoo": CFG.zoo.model_copy(update={"nb_parallel": 3 * SIZE * SIZE + 1})})
    with pytest.raises(ParamError, match="blackbox.zoo.nb_parallel"):
        blackbox_attack("zoo", model, *data, many, eps=GRID)


def test_min_norm_rows_follow_the_eps_as_given(model, data):
    rows = blackbox_attack("boundary", model, *data, CFG, eps=[1.0, 8 / 255, 1.0], progress=False)
    assert rows["eps"].tolist() == [1.0] * N_IMAGES + [8 / 255] * N_IMAGES  # in order, a repeated ε once
