"""Tests for the per-arm estimates, paired comparisons and findings of robustlora.analysis on synthetic per-image
results whose answers are known by construction (tests/rows.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from robustlora import stats
from robustlora.analysis import (ResultSet, analyse, arm_estimates, common_correct, findings, findings_json,
                                 format_eps, paired_comparisons, seed_estimates, train_table)
from robustlora.errors import DataError
# the synthetic study (tests/rows.py); test_report imports it from here
from rows import (GRID, N, SANITY, SEEDS, arm_frame, broken_everywhere, first_correct,  # noqa: F401
                  robust_on_grid, settings, study)


def by_key(found: list) -> dict:
    return {f.key: f for f in found}


# ----------------------------------------------------------------------------- the per-image table

def test_result_set_pivots_cells_in_order() -> None:
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(36)), l=arm_frame("lora_fc", first_correct(38))))
    assert rs.arms == ["baseline", "lora_fc"] and rs.attacks() == ["fgsm", "pgd"]
    assert rs.eps("pgd") == [round(GRID[0], 9), round(GRID[1], 9), SANITY]
    cell = rs.get("baseline", "pgd", 8 / 255)
    assert cell.seeds == SEEDS and cell.clean_correct.shape == (3, N)
    assert int(cell.success[0].sum()) == 28 and int(cell.robust[0].sum()) == 36 - 28


def test_result_set_refuses_bad_tables() -> None:
    good = arm_frame("baseline", first_correct(36))
    with pytest.raises(DataError, match="lack column.*adv_correct"):
        ResultSet(good.drop(columns="adv_correct"))
    with pytest.raises(DataError, match="hold image 0 twice"):
        ResultSet(pd.concat([good, good.iloc[:1]]))
    other = arm_frame("lora_fc", first_correct(36)).assign(image=lambda d: d["image"] + 1)
    with pytest.raises(DataError, match="covers other images"):
        ResultSet(study(a=good, b=other))
    partial = good[~((good["seed"] == 2) & (good["image"] == 5))]
    with pytest.raises(DataError, match="seed 2 lacks 1 of the 40 images"):
        ResultSet(partial)
    with pytest.raises(DataError, match="eps must be in"):
        ResultSet(good.assign(eps=8.0))


# ----------------------------------------------------------------------------- per-arm estimates

def test_arm_estimates_known_values_and_grid_only() -> None:
    table = arm_estimates(ResultSet(arm_frame("baseline", first_correct(36))), settings())
    assert SANITY not in set(table["eps"])  # the sanity ε feeds the checks only
    row = table[(table["attack"] == "pgd") & (table["eps"] == round(8 / 255, 9))].set_index("metric")
    assert row.loc["clean_accuracy", "value"] == pytest.approx(0.9)
    assert row.loc["robust_accuracy", "value"] == pytest.approx(8 / 40)
    assert row.loc["attack_success_rate", "value"] == pytest.approx(28 / 36)
    assert row.loc["certainty_clean", "value"] == pytest.approx(0.9) and row.loc["certainty_adv", "value"] == \
        pytest.approx(0.4)
    for metric in ("clean_accuracy", "robust_accuracy", "attack_success_rate"):
        r = row.loc[metric]
        assert 0 <= r["ci_low"] < r["value"] < r["ci_high"] <= 1, metric  # images vary: a real interval
        assert r["seed_std"] == pytest.approx(0) and r["n_seeds"] == 3 and r["n_images"] == N


def test_success_rate_is_the_mean_of_per_seed_rates_over_each_seeds_correct_images() -> None:
    clean = np.stack([first_correct(36), first_correct(30), first_correct(20)])
    rs = ResultSet(arm_frame("baseline", clean))
    table = arm_estimates(rs, settings())
    value = table[(table["attack"] == "pgd") & (table["eps"] == round(8 / 255, 9))
                  & (table["metric"] == "attack_success_rate")].iloc[0]
    per_seed = [28 / 36, 28 / 30, 20 / 20]  # seed 2 has only 20 correct images: all flip
    assert value["value"] == pytest.approx(np.mean(per_seed))
    assert value["seed_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert value["ci_low"] <= value["value"] <= value["ci_high"] <= 1
    seeds = seed_estimates(rs, settings())
    s1 = seeds[(seeds["seed"] == 1) & (seeds["attack"] == "pgd") & (seeds["eps"] == round(8 / 255, 9))
               & (seeds["metric"] == "attack_success_rate")].iloc[0]
    assert (s1["successes"], s1["n"]) == (28, 30)
    assert (s1["ci_low"], s1["ci_high"]) == pytest.approx(stats.wilson_interval(28, 30))


def test_share_intervals_never_have_zero_width() -> None:
    # no image flips in any seed: the bootstrap has nothing to resample, the Wilson bound still says "≤ 9.7 %"
    rs = ResultSet(arm_frame("lora_fc", first_correct(36), robust_on_grid(first_correct(36))))
    table = arm_estimates(rs, settings()).set_index(["attack", "eps", "metric"])
    row = table.loc[("fgsm", round(8 / 255, 9), "attack_success_rate")]
    assert row["value"] == 0 and row["ci_low"] == 0
    assert row["ci_high"] == pytest.approx(stats.wilson_interval(0, 36)[1])
    certainty = table.loc[("fgsm", round(8 / 255, 9), "certainty_adv")]
    assert certainty["ci_low"] == certainty["ci_high"] == pytest.approx(0.4)  # not a share: no widening


# ----------------------------------------------------------------------------- paired comparisons

def test_common_correct_is_across_arms_and_seeds() -> None:
    clean_a = np.ones((3, N), dtype=bool)
    clean_a[1, 3] = False  # one seed of one arm misses image 3
    clean_b = np.ones((3, N), dtype=bool)
    clean_b[0, 5] = False
    clean_b[:, 7] = False
    rs = ResultSet(study(b=arm_frame("baseline", clean_a), l=arm_frame("lora_fc", clean_b)))
    mask = common_correct(rs, "pgd", 8 / 255)
    assert np.flatnonzero(~mask).tolist() == [3, 5, 7]
    assert common_correct(rs, "pgd", 8 / 255, arms=["baseline"]).sum() == N - 1
    table = paired_comparisons(rs, settings())
    success = table[table["metric"] == "attack_success_rate"]
    robust = table[table["metric"] == "robust_accuracy"]
    assert set(success["n_images"]) == {N - 3} and set(robust["n_images"]) == {N}


def test_comparisons_table_holm_over_the_whole_grid_and_verdicts() -> None:
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(36)),
                         l=arm_frame("lora_fc", first_correct(36), robust_on_grid(first_correct(36))),
                         c=arm_frame("lora_fc_conv1", first_correct(36))))
    table = paired_comparisons(rs, settings())
    assert list(table.columns) == ["arm", "attack", "eps", "metric", "diff", "ci_low", "ci_high", "p", "p_holm",
                                   "n_images", "verdict"]
    assert len(table) == 2 * 2 * 2 * 2  # arms x attacks x grid ε x metrics; no row at the sanity ε
    np.testing.assert_allclose(table["p_holm"], stats.holm_adjust(table["p"].to_numpy()))
    assert (table["p_holm"] >= table["p"]).all()
    lora = table[table["arm"] == "lora_fc"].set_index(["attack", "eps", "metric"])
    row = lora.loc[("pgd", round(8 / 255, 9), "attack_success_rate")]
    assert row["diff"] == pytest.approx(-28 / 36) and row["verdict"] == "lower" and row["ci_high"] < 0
    assert lora.loc[("pgd", round(8 / 255, 9), "robust_accuracy"), "verdict"] == "higher"
    same = table[table["arm"] == "lora_fc_conv1"]
    assert (same["diff"] == 0).all() and (same["p"] == 1).all() and set(same["verdict"]) == {"inconclusive"}


# ----------------------------------------------------------------------------- findings

def test_claim_a_follows_the_data() -> None:
    base = arm_frame("baseline", first_correct(20))
    better = arm_frame("lora_fc", first_correct(40))
    worse = arm_frame("lora_fc_conv1", first_correct(4))
    found = by_key(findings(ResultSet(study(b=base, l=better, c=worse)), settings()))
    assert found["a/lora_fc"].verdict == "supported"
    assert found["a/lora_fc"].effect == pytest.approx(0.5) and found["a/lora_fc"].ci_low > 0
    assert found["a/lora_fc_conv1"].verdict == "contradicted"
    same = by_key(findings(ResultSet(study(b=base, l=arm_frame("lora_fc", first_correct(20)))), settings()))
    assert same["a/lora_fc"].verdict == "inconclusive" and same["a/lora_fc"].p == 1.0
    sentence = found["a/lora_fc"].sentence
    assert "+50.0 points" in sentence and "McNemar p < 0.001, Holm p < 0.001" in sentence


def test_claim_b_equivalence_band() -> None:
    n = 300

    def verdict(rate: float, n_images: int) -> str:
        k = round(rate * n_images)
        success = {("fgsm", GRID[1]): k}
        rs = ResultSet(arm_frame("baseline", np.ones(n_images, dtype=bool), success))
        return by_key(findings(rs, settings()))["b"].verdict

    assert verdict(0.65, n) == "supported"
    assert verdict(0.95, n) == "contradicted"
    assert verdict(0.30, n) == "contradicted"
    assert verdict(0.72, 20) == "inconclusive"  # 20 images: the CI straddles the band's edge


def test_claim_c_robust_on_all_vs_robust_on_none() -> None:
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(36), broken_everywhere()),
                         l=arm_frame("lora_fc", first_correct(36), robust_on_grid(first_correct(36))),
                         c=arm_frame("lora_fc_conv1", first_correct(36), robust_on_grid(first_correct(36)))))
    found = by_key(findings(rs, settings()))
    for attack in ("fgsm", "pgd"):
        assert found[f"c1/{attack}"].verdict == "supported"
        assert found[f"c1/{attack}"].effect == pytest.approx(-1.0) and found[f"c1/{attack}"].n_images == 36
        assert found[f"c2/{attack}"].verdict == "inconclusive"  # identical arms
    reverse = ResultSet(study(b=arm_frame("baseline", first_correct(36), robust_on_grid(first_correct(36))),
                              l=arm_frame("lora_fc", first_correct(36), broken_everywhere()),
                              c=arm_frame("lora_fc_conv1", first_correct(36), robust_on_grid(first_correct(36)))))
    found = by_key(findings(reverse, settings()))
    assert found["c1/pgd"].verdict == "contradicted" and found["c2/pgd"].verdict == "supported"


def test_claim_c_uses_the_common_correct_set() -> None:
    clean = np.ones((3, N), dtype=bool)
    clean[2, :4] = False  # seed 2 of lora_fc_conv1 misses four images: they leave every paired success comparison
    rs = ResultSet(study(b=arm_frame("baseline", np.ones(N, dtype=bool)), l=arm_frame("lora_fc", np.ones(N, bool)),
                         c=arm_frame("lora_fc_conv1", clean)))
    found = by_key(findings(rs, settings()))
    assert found["c1/pgd"].n_images == N - 4 and found["c2/fgsm"].n_images == N - 4


def test_claim_d_certainty_drop() -> None:
    drops = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.9, adv_prob=0.4))
    found = by_key(findings(drops, settings()))
    assert found["d/baseline/pgd"].verdict == "supported" and found["d/baseline/pgd"].effect == pytest.approx(0.5)
    flat = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.6, adv_prob=0.6))
    assert by_key(findings(flat, settings()))["d/baseline/fgsm"].verdict == "inconclusive"
    rises = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.5, adv_prob=0.7))
    assert by_key(findings(rises, settings()))["d/baseline/fgsm"].verdict == "contradicted"


def test_holm_over_the_findings_family_can_overturn_a_nominal_result() -> None:
    # lora_fc right on 6 more images in every seed: McNemar p = 2/2^6 ≈ 0.031 < 0.05 alone, but 6 p-values share it
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(30)), l=arm_frame("lora_fc", first_correct(36)),
                         c=arm_frame("lora_fc_conv1", first_correct(30))))
    found = findings(rs, settings())
    tested = [f for f in found if f.p is not None]
    assert len(tested) == 6  # (a) x 2 + (c) x 2 x 2
    np.testing.assert_allclose([f.p_holm for f in tested], stats.holm_adjust([f.p for f in tested]))
    a = by_key(found)["a/lora_fc"]
    assert a.p == pytest.approx(2 / 2 ** 6) and a.ci_low > 0
    assert a.p_holm > 0.05 and a.verdict == "inconclusive"
    assert by_key(found)["b"].p is None and by_key(found)["b"].p_holm is None  # no test, no Holm


def test_absent_arms_are_not_evaluated_not_failed() -> None:
    rs = ResultSet(arm_frame("baseline", first_correct(36)))
    found = by_key(findings(rs, settings(arms={"baseline": "baseline", "lora_fc": None, "lora_fc_conv1": "gone"})))
    assert found["a/lora_fc"].verdict == "not evaluated"
    assert "report.arms.lora_fc is null" in found["a/lora_fc"].sentence
    assert found["c2/pgd"].verdict == "not evaluated" and "'gone'" in found["c2/pgd"].sentence
    assert found["b"].verdict in ("supported", "contradicted", "inconclusive")
    assert math.isnan(found["a/lora_fc"].effect) and found["a/lora_fc"].p is None


def test_findings_json_is_strict_json_and_analyse_is_deterministic() -> None:
    data = study(b=arm_frame("baseline", first_correct(36)), l=arm_frame("lora_fc", first_correct(38)))
    result = analyse(data, settings())
    doc = findings_json(result.findings, settings(), result.common_sizes, {"failed": 0})
    text = json.dumps(doc, allow_nan=False)  # NaN of not-evaluated findings became null
    assert doc["verdicts"]["a/lora_fc_conv1"] == "not evaluated"
    assert doc["common_correct_images"] == {"fgsm": {"2/255": 36, "8/255": 36}, "pgd": {"2/255": 36, "8/255": 36}}
    again = analyse(data, settings())
    assert json.dumps(findings_json(again.findings, settings(), again.common_sizes, {"failed": 0}),
                      allow_nan=False) == text
    pd.testing.assert_frame_equal(result.comparisons, again.comparisons)
    assert result.seeds == {"baseline": SEEDS, "lora_fc": SEEDS} and format_eps(8 / 255) == "8/255"


def test_train_table_summarises_seeds() -> None:
    metrics = {"baseline": {"seeds": {"1": {"val_accuracy": 0.8, "best_epoch": 5, "epochs_run": 9, "max_epochs": 15,
                                            "trainable_params": 100, "total_params": 100},
                                      "0": {"val_accuracy": 0.9, "best_epoch": 7, "epochs_run": 12, "max_epochs": 15,
                                            "trainable_params": 100, "total_params": 100}}}}
    row = train_table(metrics).iloc[0]
    assert row["val_mean"] == pytest.approx(0.85) and row["val_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert row["best_epochs"] == (7, 5) and row["epochs_run"] == (12, 9)  # seed order, not file order
    with pytest.raises(DataError, match="no 'seeds'"):
        train_table({"baseline": {"val_accuracy": 0.9}})
