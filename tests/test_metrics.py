"""Tests for robustlora.evaluation.metrics, the summaries of robustlora.evaluation.suite and robustlora.attacks.outcomes
on hand-made per-image rows; and for the row cache (robustlora.evaluation.rowcache)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from robustlora.attacks.outcomes import EXTRA_COLUMNS, IMAGE_COLUMNS, attack_rows, concat_outcomes, image_outcomes
from robustlora.evaluation.metrics import METRICS, outcome_metrics
from robustlora.evaluation import rowcache
from robustlora.evaluation.rowcache import RowCache, rows_fingerprint
from robustlora.evaluation.suite import SHORT_NAMES, SUMMARY_COLUMNS, flat_metrics, metrics_json, success_curves, \
    summarize_images
from robustlora.formatting import eps_label
from robustlora.stats import wilson_interval

# 5 images, 3 classes; labels 0, 1, 2, 0, 1 (as probabilities; image_outcomes takes their logs)
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
    [0.1, 0.8, 0.1],  # wrong before, right after: neither robust nor a success
], dtype=torch.float64)


def rows(clean: torch.Tensor = CLEAN, adv: torch.Tensor = ADV, labels: torch.Tensor = LABELS, **extra) -> pd.DataFrame:
    """Per-image rows as attack_suite writes them, from (N, C) probabilities."""
    before, after = image_outcomes(clean.log(), labels), image_outcomes(adv.log(), labels)
    df = pd.DataFrame({"attack": "pgd", "eps": 8 / 255, "eps_label": "eps_8", "image": np.arange(len(labels)),
                       "label": labels.numpy(), "clean_pred": before["pred"], "adv_pred": after["pred"],
                       **{f"{w}_{k}": o[k] for k in ("correct", "true_prob", "max_prob", "margin")
                          for w, o in (("clean", before), ("adv", after))}})
    for k, v in extra.items():
        df.insert(0, k, v)
    return df


def table(df: pd.DataFrame) -> pd.DataFrame:
    return summarize_images(df).set_index("metric")


def test_image_outcomes_per_image():
    logits = CLEAN.log() + torch.tensor([[3.0], [-1.0], [0.5], [2.0], [0.0]], dtype=torch.float64)  # shift-invariant
    out = image_outcomes(logits.float(), LABELS)
    assert out["pred"].tolist() == [0, 1, 0, 0, 2] and out["pred"].dtype == np.int16
    assert out["correct"].tolist() == [True, True, False, True, False]
    np.testing.assert_allclose(out["max_prob"], [0.7, 0.8, 0.5, 0.6, 0.6], atol=1e-6)
    np.testing.assert_allclose(out["true_prob"], [0.7, 0.8, 0.2, 0.6, 0.2], atol=1e-6)
    # margin: true-class logit minus the largest other one; > 0 exactly for the correct images
    np.testing.assert_allclose(out["margin"], np.log([0.7 / 0.2, 0.8 / 0.1, 0.2 / 0.5, 0.6 / 0.3, 0.2 / 0.6]),
                               atol=1e-5)
    assert out["margin"].dtype == out["max_prob"].dtype == np.float32


def test_image_outcomes_refuses_bad_inputs():
    with pytest.raises(ValueError, match="labels must lie"):
        image_outcomes(CLEAN, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="labels must be integers"):
        image_outcomes(CLEAN, LABELS.float())
    with pytest.raises(ValueError, match="expected logits"):
        image_outcomes(CLEAN[:4], LABELS)


def test_summary_columns_and_metric_names_exact():
    df = summarize_images(rows())
    assert list(df.columns) == SUMMARY_COLUMNS
    assert list(df["metric"]) == METRICS == [
        "clean_accuracy", "robust_accuracy", "attack_success_rate", "certainty_clean", "certainty_adv",
        "certainty_clean_correct", "certainty_adv_correct", "true_class_prob_clean", "true_class_prob_adv"]


def test_known_values_and_conventions():
    t = table(rows())
    v, n = t["value"], t["n"]
    assert v["clean_accuracy"] == pytest.approx(3 / 5) and n["clean_accuracy"] == 5
    # robust = correct before AND after: image 4 (wrong before, right after) is not robust
    assert v["robust_accuracy"] == pytest.approx(1 / 5) and n["robust_accuracy"] == 5
    # images 0 and 3 fooled among the 3 originally correct (0, 1, 3); images 2 and 4 never count
    assert v["attack_success_rate"] == pytest.approx(2 / 3) and n["attack_success_rate"] == 3
    assert v["certainty_clean"] == pytest.approx(np.mean([0.7, 0.8, 0.5, 0.6, 0.6]))
    assert v["certainty_adv"] == pytest.approx(np.mean([0.5, 0.6, 0.9, 0.7, 0.8]))
    assert v["certainty_clean_correct"] == pytest.approx(np.mean([0.7, 0.8, 0.6]))
    assert v["certainty_adv_correct"] == pytest.approx(np.mean([0.5, 0.6, 0.7]))
    assert n["certainty_clean_correct"] == n["certainty_adv_correct"] == 3
    assert v["true_class_prob_clean"] == pytest.approx(np.mean([0.7, 0.8, 0.2, 0.6, 0.2]))
    assert v["true_class_prob_adv"] == pytest.approx(np.mean([0.4, 0.6, 0.05, 0.2, 0.8]))


def test_wrong_before_is_never_a_success():
    # every image wrong before the attack, right after: no success, no robust image, success rate undefined
    wrong = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)
    t = table(rows(wrong, wrong.flip(1), torch.tensor([0, 1])))
    assert t.loc["clean_accuracy", "value"] == 0 and t.loc["robust_accuracy", "value"] == 0
    for name in ("attack_success_rate", "certainty_clean_correct", "certainty_adv_correct"):
        assert math.isnan(t.loc[name, "value"]) and t.loc[name, "n"] == 0
        assert math.isnan(t.loc[name, "ci_low"]) and math.isnan(t.loc[name, "ci_high"])


@pytest.mark.parametrize("fooled", [0, 40])
def test_wilson_intervals_never_zero_width_at_0_and_n(fooled):
    # 40 correct images, `fooled` of them fooled: success rate 0 % or 100 %
    n = 40
    clean = torch.tensor([[0.9, 0.1]] * n, dtype=torch.float64)
    adv = torch.tensor([[0.2, 0.8]] * fooled + [[0.9, 0.1]] * (n - fooled), dtype=torch.float64)
    t = table(rows(clean, adv, torch.zeros(n, dtype=torch.long)))
    low, value, high = t.loc["attack_success_rate", ["ci_low", "value", "ci_high"]]
    assert value == fooled / n and (low, high) == pytest.approx(wilson_interval(fooled, n))
    # the exact bounds are 0 at 0 successes and 1 at n (up to the float rounding of the Wilson formula)
    assert low - 1e-12 <= value <= high + 1e-12 and high - low > 0.05
    assert low == pytest.approx(0, abs=1e-12) if fooled == 0 else high == pytest.approx(1, abs=1e-12)
    assert t.loc["robust_accuracy", "ci_high"] - t.loc["robust_accuracy", "ci_low"] > 0.05


def test_mean_intervals_are_normal_approximations():
    t = table(rows())
    probs = np.array([0.5, 0.6, 0.9, 0.7, 0.8])  # adversarial max probabilities
    half = 1.96 * probs.std(ddof=1) / math.sqrt(5)
    assert t.loc["certainty_adv", "ci_low"] == pytest.approx(probs.mean() - half, abs=1e-3)
    assert t.loc["certainty_adv", "ci_high"] == pytest.approx(probs.mean() + half, abs=1e-3)
    # clipped to [0, 1]: a mean of ones cannot get a bound above 1
    ones = pd.concat([rows()] * 4, ignore_index=True).assign(clean_max_prob=np.float32(1.0))
    assert table(ones).loc["certainty_clean", ["ci_low", "ci_high"]].tolist() == [1.0, 1.0]
    # one image: no spread to estimate, no interval
    one = table(rows().iloc[:1])
    assert math.isnan(one.loc["certainty_adv", "ci_low"]) and one.loc["certainty_adv", "n"] == 1


def two_seeds() -> pd.DataFrame:
    """Two seeds x two attacks of one variant; seed 1 fools one more image under PGD."""
    adv1 = ADV.clone()
    adv1[1] = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    parts = []
    for seed, adv in ((0, ADV), (1, adv1)):
        for attack, eps in (("fgsm", 2 / 255), ("pgd", 2 / 255), ("pgd", 0.5)):
            adv_used = CLEAN if attack == "fgsm" else adv  # FGSM fools nothing here
            part = rows(CLEAN, adv_used, variant="lora_fc", seed=np.int16(seed))
            parts.append(part.assign(attack=attack, eps=eps, eps_label=eps_label(eps)))
    return pd.concat(parts, ignore_index=True)


def test_summary_groups_by_variant_and_seed():
    df = summarize_images(two_seeds())
    assert list(df.columns) == ["variant", "seed"] + SUMMARY_COLUMNS
    assert len(df) == 2 * 3 * len(METRICS)
    asr = df[df["metric"] == "attack_success_rate"].set_index(["seed", "attack", "eps_label"])["value"]
    assert asr[0, "pgd", "eps_2"] == pytest.approx(2 / 3) and asr[1, "pgd", "eps_2"] == 1.0
    assert asr[0, "fgsm", "eps_2"] == 0.0
    assert (df.loc[df["metric"] == "clean_accuracy", "value"] == 0.6).all()


def test_metrics_json_means_stds_and_seeds():
    out = metrics_json(two_seeds())
    assert set(out) == {"clean_accuracy", "fgsm", "pgd", "seeds"}
    assert out["clean_accuracy"] == {"mean": pytest.approx(0.6), "std": 0.0}
    assert set(out["pgd"]) == {"eps_2", "eps_0.5"} and set(out["pgd"]["eps_2"]) == set(SHORT_NAMES.values())
    assert out["pgd"]["eps_2"]["asr"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["pgd"]["eps_2"]["asr"]["std"] == pytest.approx(np.std([2 / 3, 1], ddof=1))
    assert set(out["seeds"]) == {"0", "1"}
    assert out["seeds"]["1"]["pgd"]["eps_2"]["asr"] == 1.0 and out["seeds"]["0"]["clean_accuracy"] == pytest.approx(0.6)
    json.dumps(out, allow_nan=False)
    # NaN (no image correct before the attack) becomes None
    wrong = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)
    none = metrics_json(rows(wrong, wrong, torch.tensor([0, 1]), seed=0))
    assert none["pgd"]["eps_8"]["asr"] == {"mean": None, "std": None}
    assert none["seeds"]["0"]["pgd"]["eps_8"]["asr"] is None
    json.dumps(none, allow_nan=False)
    with pytest.raises(ValueError, match="seed"):
        metrics_json(rows())


def test_mean_metrics_flattens_the_across_seed_means():
    from robustlora.evaluation.suite import mean_metrics

    means = mean_metrics(metrics_json(two_seeds()))
    assert means["clean_accuracy"] == pytest.approx(0.6)
    assert means["pgd/eps_2/asr"] == pytest.approx((2 / 3 + 1) / 2)
    assert not any(k.startswith("seeds") for k in means)  # per-seed figures go to the seeds' own runs
    wrong = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)
    assert "pgd/eps_8/asr" not in mean_metrics(metrics_json(rows(wrong, wrong, torch.tensor([0, 1]), seed=0)))


def test_flat_metrics_of_one_seed():
    df = two_seeds()
    flat = flat_metrics(df[df["seed"] == 1])
    assert flat["clean_accuracy"] == pytest.approx(0.6)
    assert flat["pgd/eps_2/asr"] == 1.0 and flat["fgsm/eps_2/robust_accuracy"] == pytest.approx(0.6)
    assert len(flat) == 1 + 3 * len(SHORT_NAMES)
    with pytest.raises(ValueError, match="one seed"):
        flat_metrics(df)


def test_success_curves_average_over_seeds():
    curves = success_curves(two_seeds())
    assert list(curves.columns) == ["eps", "eps_255", "fgsm_asr", "fgsm_robust_accuracy", "pgd_asr",
                                    "pgd_robust_accuracy"]
    assert curves["eps_255"].tolist() == [2.0, 127.5]
    assert curves.loc[0, "pgd_asr"] == pytest.approx((2 / 3 + 1) / 2) and curves.loc[0, "fgsm_asr"] == 0.0
    assert math.isnan(curves.loc[1, "fgsm_asr"])  # the sanity ε is PGD's only


def test_outcome_metrics_without_groups_and_missing_columns():
    df = outcome_metrics(rows(), by=[])
    assert list(df.columns) == ["metric", "value", "ci_low", "ci_high", "n"] and len(df) == len(METRICS)
    with pytest.raises(ValueError, match="adv_correct"):
        outcome_metrics(rows().drop(columns="adv_correct"), by=["attack"])


@pytest.mark.parametrize("eps, label", [
    (8 / 255, "eps_8"), (0.0, "eps_0"), (1 / 255, "eps_1"), (2 / 255, "eps_2"), (1.0, "eps_255"),
    (0.5, "eps_0.5"), (1 / 510, "eps_0.001961"), (0.25, "eps_0.25"), (1e-7, "eps_1e-07"),
])
def test_eps_label(eps, label):
    assert eps_label(eps) == label


def test_eps_label_refuses_negative():
    with pytest.raises(ValueError, match="eps"):
        eps_label(-1 / 255)


# --- rows of the other attacks (robustlora.attacks.outcomes) -----------------------------------------------------


def test_attack_rows_pair_the_outcomes_of_batches():
    parts = [image_outcomes(CLEAN[:2].log(), LABELS[:2]), image_outcomes(CLEAN[2:].log(), LABELS[2:])]
    clean, adv = concat_outcomes(parts), image_outcomes(ADV.log(), LABELS)
    assert {k: v.tolist() for k, v in clean.items()} == {k: v.tolist() for k, v in image_outcomes(CLEAN.log(),
                                                                                                  LABELS).items()}
    out = attack_rows("square", 8 / 255, np.arange(10, 15), LABELS, clean, adv, linf=np.full(5, 0.03),
                      queries=[1, np.nan, 3, 4, np.nan])
    assert list(out.columns) == IMAGE_COLUMNS + EXTRA_COLUMNS and out["eps_label"].eq("eps_8").all()
    assert out["image"].tolist() == list(range(10, 15)) and out["detail"].eq("").all()
    dtypes = out.dtypes.astype(str).to_dict()
    assert [dtypes[c] for c in ("eps", "image", "label", "clean_pred", "queries", "linf")] == [
        "float64", "int32", "int16", "int16", "float64", "float32"]
    for when, out_ in (("clean", clean), ("adv", adv)):
        for key in ("correct", "true_prob", "max_prob", "margin"):
            np.testing.assert_array_equal(out[f"{when}_{key}"], out_[key])
    assert out["queries"].isna().tolist() == [False, True, False, False, True]


# --- the row cache (robustlora.evaluation.rowcache) ---------------------------------------------------------------


def test_row_cache_makes_rows_once_and_hands_them_back_by_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(rowcache, "code_digest", lambda: "code")  # the library's code, held fixed for the test
    model = tmp_path / "seed_0.pt"
    model.write_bytes(b"weights")
    ids, settings = np.arange(5), {"queries": 10}
    made = []

    def make():
        made.append(1)
        return rows()

    first = RowCache(tmp_path / "rows.parquet")  # no earlier file: every model's rows are made
    table = first.rows("a seed 0", [model], settings, ids, make)
    assert len(made) == 1 and table["fingerprint"].eq(rows_fingerprint([model], settings, ids)).all()
    assert first.is_new(table) and first.reused == []
    table.to_parquet(tmp_path / "rows.parquet", index=False)

    again = RowCache(tmp_path / "rows.parquet")
    reused = again.rows("a seed 0", [model], settings, ids, make)
    assert len(made) == 1 and again.reused == ["a seed 0"] and not again.is_new(reused)
    pd.testing.assert_frame_equal(reused, table)
    changed = again.rows("a seed 0", [model], {"queries": 11}, ids, make)  # other settings: made anew
    assert len(made) == 2 and again.is_new(changed)
    monkeypatch.setattr(rowcache, "code_digest", lambda: "other code")
    assert again.is_new(again.rows("a seed 0", [model], settings, ids, make))  # rows of other code are not reused


def test_row_cache_hands_back_the_rows_a_killed_run_spilled_and_forgets_them_once_done(tmp_path):
    model = tmp_path / "seed_0.pt"
    model.write_bytes(b"weights")
    settings, ids, made = {"queries": 10}, np.arange(5), []

    def make():
        made.append(1)
        return rows()

    spill = tmp_path / "checkpoints" / "rows" / "blackbox"
    killed = RowCache(tmp_path / "none.parquet", spill=spill)  # the run that is killed after its first model
    first = killed.rows("a seed 0", [model], settings, ids, make)
    assert len(made) == 1 and [p.name for p in spill.iterdir()] == [f"{first['fingerprint'][0]}.parquet"]

    rerun = RowCache(tmp_path / "none.parquet", spill=spill)
    resumed = rerun.rows("a seed 0", [model], settings, ids, make)
    assert len(made) == 1 and rerun.resumed == ["a seed 0"] and rerun.reused == []
    pd.testing.assert_frame_equal(resumed, first)
    assert rerun.is_new(resumed)  # its figures were never recorded: the rerun records them
    rerun.rows("a seed 0", [model], {"queries": 11}, ids, make)  # other settings: made anew, never the spilled rows
    assert len(made) == 2
    rerun.done()
    assert not spill.exists()

    (spill / "x").parent.mkdir(parents=True)  # a damaged spilled file is made again, not trusted
    (spill / f"{first['fingerprint'][0]}.parquet").write_bytes(b"PAR1 torn")
    assert RowCache(None, spill=spill).rows("a seed 0", [model], settings, ids, make) is not None and len(made) == 3
