"""Tests for robustlora.metrics on hand-made outputs where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlora.metrics import COLUMNS, METRICS, attack_metrics, eps_label, image_stats, metrics_from_stats

# 5 images, 3 classes; labels 0, 1, 2, 0, 1
LABELS = torch.tensor([0, 1, 2, 0, 1])
CLEAN = torch.tensor([
    [0.7, 0.2, 0.1],  # correct
    [0.1, 0.8, 0.1],  # correct
    [0.5, 0.3, 0.2],  # wrong (predicts 0)
    [0.6, 0.3, 0.1],  # correct
    [0.2, 0.2, 0.6],  # wrong (predicts 2)
], dtype=torch.float64)
ADV = torch.tensor([
    [0.4, 0.5, 0.1],  # fooled
    [0.3, 0.6, 0.1],  # still correct
    [0.9, 0.05, 0.05],  # still wrong: was wrong before, must not count as a success
    [0.2, 0.1, 0.7],  # fooled
    [0.1, 0.8, 0.1],  # wrong before, right after: counts for robust accuracy, never for success
], dtype=torch.float64)


def table(clean=CLEAN, adv=ADV, labels=LABELS, **kw):
    df = attack_metrics(clean, adv, labels, probs=True, **kw)
    return df.set_index("metric")


def test_columns_and_metric_names_exact():
    df = attack_metrics(CLEAN, ADV, LABELS, probs=True, n_boot=50)
    assert list(df.columns) == COLUMNS == ["metric", "value", "ci_low", "ci_high", "n"]
    assert list(df["metric"]) == METRICS == [
        "clean_accuracy", "robust_accuracy", "attack_success_rate", "certainty_clean", "certainty_adv",
        "certainty_clean_correct", "certainty_adv_correct", "true_class_prob_clean", "true_class_prob_adv"]


def test_known_values_and_counts():
    t = table(n_boot=0)
    v, n = t["value"], t["n"]
    assert v["clean_accuracy"] == pytest.approx(3 / 5) and n["clean_accuracy"] == 5
    assert v["robust_accuracy"] == pytest.approx(2 / 5) and n["robust_accuracy"] == 5
    # images 0 and 3 fooled among the 3 originally correct (0, 1, 3); images 2 and 4 never count
    assert v["attack_success_rate"] == pytest.approx(2 / 3) and n["attack_success_rate"] == 3
    assert v["certainty_clean"] == pytest.approx(np.mean([0.7, 0.8, 0.5, 0.6, 0.6]))
    assert v["certainty_adv"] == pytest.approx(np.mean([0.5, 0.6, 0.9, 0.7, 0.8]))
    assert v["certainty_clean_correct"] == pytest.approx(np.mean([0.7, 0.8, 0.6]))
    assert v["certainty_adv_correct"] == pytest.approx(np.mean([0.5, 0.6, 0.7]))
    assert n["certainty_clean_correct"] == n["certainty_adv_correct"] == 3
    assert v["true_class_prob_clean"] == pytest.approx(np.mean([0.7, 0.8, 0.2, 0.6, 0.2]))
    assert v["true_class_prob_adv"] == pytest.approx(np.mean([0.4, 0.6, 0.05, 0.2, 0.8]))
    assert t["ci_low"].isna().all() and t["ci_high"].isna().all()  # n_boot=0: no intervals


def test_logits_give_the_same_answer_as_probabilities():
    shift = torch.tensor([[3.0], [-1.0], [0.5], [2.0], [0.0]], dtype=torch.float64)  # softmax is shift-invariant
    from_logits = attack_metrics(CLEAN.log() + shift, ADV.log(), LABELS, n_boot=100, seed=3)
    from_probs = attack_metrics(CLEAN, ADV, LABELS, probs=True, n_boot=100, seed=3)
    np.testing.assert_allclose(from_logits[["value", "ci_low", "ci_high"]].to_numpy(),
                               from_probs[["value", "ci_low", "ci_high"]].to_numpy(), atol=1e-12)


def test_success_rate_is_nan_when_nothing_correct():
    wrong = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)
    t = table(wrong, wrong, torch.tensor([0, 1]), n_boot=100)
    for name in ("attack_success_rate", "certainty_clean_correct", "certainty_adv_correct"):
        assert math.isnan(t.loc[name, "value"]) and t.loc[name, "n"] == 0
        assert math.isnan(t.loc[name, "ci_low"]) and math.isnan(t.loc[name, "ci_high"])
    assert t.loc["clean_accuracy", "value"] == 0 and t.loc["clean_accuracy", "n"] == 2


def bernoulli_case(n: int = 2000, p_clean: float = 0.7, p_fool: float = 0.4, seed: int = 0):
    """Correctness drawn per image: clean correct w.p. p_clean, fooled w.p. p_fool among the correct ones."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    clean_ok = rng.random(n) < p_clean
    adv_ok = clean_ok & (rng.random(n) >= p_fool)
    clean = np.where(clean_ok[:, None], [[2.0, 0.0]], [[0.0, 2.0]])
    adv = np.where(adv_ok[:, None], [[2.0, 0.0]], [[0.0, 2.0]])
    return clean, adv, labels, clean_ok, adv_ok


def test_bootstrap_ci_covers_truth_and_has_binomial_width():
    clean, adv, labels, clean_ok, _ = bernoulli_case()
    t = attack_metrics(clean, adv, labels, n_boot=1000, seed=0).set_index("metric")
    for name, truth, n in (("clean_accuracy", 0.7, 2000), ("attack_success_rate", 0.4, int(clean_ok.sum()))):
        low, value, high = t.loc[name, ["ci_low", "value", "ci_high"]]
        assert low < truth < high and low <= value <= high
        assert t.loc[name, "n"] == n
        # percentile bootstrap of a proportion ≈ normal interval: width 2·1.96·sqrt(v(1-v)/n)
        assert high - low == pytest.approx(2 * 1.96 * math.sqrt(value * (1 - value) / n), rel=0.15)


def test_bootstrap_is_seeded():
    clean, adv, labels, *_ = bernoulli_case(n=300)
    a = attack_metrics(clean, adv, labels, n_boot=200, seed=7)
    b = attack_metrics(clean, adv, labels, n_boot=200, seed=7)
    c = attack_metrics(clean, adv, labels, n_boot=200, seed=8)
    assert a.equals(b)
    assert not a["ci_low"].equals(c["ci_low"])
    assert a["value"].equals(c["value"])


def test_refuses_bad_inputs():
    with pytest.raises(ValueError, match="probability vectors"):
        attack_metrics(CLEAN.log(), ADV.log(), LABELS, probs=True)
    with pytest.raises(ValueError, match="labels must lie"):
        attack_metrics(CLEAN, ADV, torch.tensor([0, 1, 2, 3, 0]), probs=True)
    with pytest.raises(ValueError, match="different images"):
        metrics_from_stats(image_stats(CLEAN, LABELS, probs=True), image_stats(ADV[:4], LABELS[:4], probs=True))
    with pytest.raises(ValueError, match="labels"):
        attack_metrics(CLEAN[:4], ADV[:4], LABELS, probs=True)
    with pytest.raises(ValueError, match="labels must be integers"):
        image_stats(CLEAN, LABELS.float())


def test_image_stats_per_image():
    s = image_stats(CLEAN, LABELS, probs=True)
    assert s.correct.tolist() == [True, True, False, True, False]
    np.testing.assert_allclose(s.confidence, [0.7, 0.8, 0.5, 0.6, 0.6])
    np.testing.assert_allclose(s.true_prob, [0.7, 0.8, 0.2, 0.6, 0.2])


@pytest.mark.parametrize("eps, label", [
    (8 / 255, "eps_8"), (0.0, "eps_0"), (1 / 255, "eps_1"), (2 / 255, "eps_2"), (1.0, "eps_255"),
    (0.5, "eps_0.5"), (1 / 510, "eps_0.001961"), (0.25, "eps_0.25"), (1e-7, "eps_1e-07"),
])
def test_eps_label(eps, label):
    assert eps_label(eps) == label


def test_eps_label_refuses_negative():
    with pytest.raises(ValueError, match="eps"):
        eps_label(-1 / 255)
