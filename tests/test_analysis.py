"""Tests for the per-arm estimates, paired comparisons and findings of robustlora.analysis on synthetic per-image
results whose answers are known by construction (tests/rows.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from robustlora import stats
from robustlora.analysis import (VERDICTS, ResultSet, analyse, arm_estimates, common_correct, findings,
                                 findings_json, format_eps, paired_comparisons, seed_estimates, train_table)
from robustlora.analysis.findings import VERDICT_DEFINITIONS, unconverged_arms
from robustlora.analysis.settings import Scope
from robustlora.errors import DataError
# the synthetic study (tests/rows.py); test_report imports it from here
from rows import (GRID, N, SANITY, SEEDS, arm_frame, broken_everywhere, first_correct,  # noqa: F401
                  robust_on_grid, settings, study)


# the default's scope (synthetic, 10 classes, 24 px input, backbone from the synthetic source) and the paper's
SCOPE = Scope(source="synthetic", classes=10, image_size=64, input_size=24, weights="pretrain", max_epochs=8,
              n_val=500)
PAPER_SCOPE = Scope(source="tiny-imagenet", classes=200, image_size=64, input_size=64, weights="imagenet",
                    max_epochs=50, n_val=10000)


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
                                   "n_images", "verdict", "mde"]
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
    sentence = found["a/lora_fc"].sentence
    assert "+50.0 points" in sentence and "p < 0.001, Holm p < 0.001" in sentence
    # the paper's +6 points lies below the interval [> +6]: excluded, the data show more
    assert found["a/lora_fc"].paper_effect == pytest.approx(0.06) and found["a/lora_fc"].paper_rejected
    assert "Paper's effect (+6.0 points): excluded (the data show more)" in sentence
    assert "on 40 val images" in sentence  # no scope given: the count, no claim about the val split


def test_a_small_study_is_underpowered_and_states_its_mde() -> None:
    # lora_fc right on 2 more of 40 images in every seed: +5 points, neither shown nor ruled out
    small = by_key(findings(ResultSet(study(b=arm_frame("baseline", first_correct(20)),
                                            l=arm_frame("lora_fc", first_correct(22)))), settings()))["a/lora_fc"]
    assert small.effect == pytest.approx(0.05) and small.ci_low <= 0 < small.ci_high
    assert small.verdict == "underpowered" and small.equivalence is False and small.eq_high > 0.05
    assert small.mde > 0.05  # 40 images cannot detect 5 points
    assert small.paper_rejected is False and f"MDE (80 % power): {100 * small.mde:.1f} points" in small.sentence


def _noisy_arm(arm: str, n: int, rate: float, seed: int) -> pd.DataFrame:
    """Every seed's clean outcomes drawn independently at `rate` (no attack flips anything)."""
    clean = np.random.default_rng(seed).random((len(SEEDS), n)) < rate
    return arm_frame(arm, clean, {("fgsm", GRID[1]): clean, ("pgd", GRID[1]): clean})


def test_a_large_equal_study_is_equivalent_and_rejects_the_papers_effect() -> None:
    # 1500 images, seeds disagreeing at random, no true difference: |effect| < 5 points is shown (TOST)
    rs = ResultSet(study(b=_noisy_arm("baseline", 1500, 0.8, 1), l=_noisy_arm("lora_fc", 1500, 0.8, 2)))
    found = by_key(findings(rs, settings()))["a/lora_fc"]
    assert abs(found.effect) < 0.02 and found.ci_low < 0 < found.ci_high
    assert found.verdict == "equivalent" and found.equivalence is True and found.margin == 0.05
    assert -0.05 < found.eq_low < found.eq_high < 0.05 and found.mde < 0.05
    assert found.paper_rejected is True and "excluded (the data show less)" in found.sentence
    assert "Equivalent within ±5.0 points: yes" in found.sentence
    # a margin below the interval: no equivalence, but the interval still excludes the paper's +6 points
    assert by_key(findings(rs, settings(equivalence_margin=0.001)))["a/lora_fc"].verdict == "paper's effect rejected"


def test_claim_b_equivalence_band() -> None:
    n = 300

    def judged(rate: float, n_images: int, **kw):
        k = round(rate * n_images)
        success = {("fgsm", GRID[1]): k}
        rs = ResultSet(arm_frame("baseline", np.ones(n_images, dtype=bool), success))
        return by_key(findings(rs, settings(**kw)))["b"]

    assert judged(0.65, n).verdict == "supported" and judged(0.65, n).equivalence is True
    assert judged(0.95, n).verdict == "contradicted" and judged(0.95, n).paper_rejected is True
    assert judged(0.30, n).verdict == "contradicted"
    assert judged(0.72, 20).verdict == "underpowered"  # 20 images: the interval straddles the band's edge
    # an absolute level on synthetic data or another input size is not testable; its figures stay
    for scope in (SCOPE, replace(PAPER_SCOPE, input_size=24), replace(PAPER_SCOPE, source="synthetic")):
        found = judged(0.95, n, scope=scope)
        assert found.verdict == "not testable in this configuration", scope
        assert found.effect == pytest.approx(0.95) and "FGSM success 95.0 %" in found.sentence
    assert "synthetic data" in judged(0.95, n, scope=SCOPE).note
    assert judged(0.95, n, scope=PAPER_SCOPE).verdict == "contradicted"  # the paper's configuration: judged


def test_scope_differences_name_what_differs_from_the_paper() -> None:
    assert SCOPE.differences() == ["synthetic data", "10 classes (the paper: 200)",
                                   "a 24 px model input (the paper: 64 px)",
                                   "a backbone pretrained on the synthetic source domain (the paper: ImageNet weights)"]
    assert PAPER_SCOPE.differences() == [] and not PAPER_SCOPE.synthetic


def test_claim_c_robust_on_all_vs_robust_on_none() -> None:
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(36), broken_everywhere()),
                         l=arm_frame("lora_fc", first_correct(36), robust_on_grid(first_correct(36))),
                         c=arm_frame("lora_fc_conv1", first_correct(36), robust_on_grid(first_correct(36)))))
    found = by_key(findings(rs, settings()))
    for attack in ("fgsm", "pgd"):
        assert found[f"c1/{attack}"].verdict == "supported"
        assert found[f"c1/{attack}"].effect == pytest.approx(-1.0) and found[f"c1/{attack}"].n_images == 36
        # identical arms on 36 images: no direction; equivalent exactly when the TOST shows it
        c2 = found[f"c2/{attack}"]
        assert c2.effect == 0 and c2.verdict == ("equivalent" if c2.equivalence else "underpowered")
    # no size in the paper: its effect is taken as a reduction of one margin; a −100 point effect does not exclude it
    assert found["c1/pgd"].paper_effect == pytest.approx(-0.05) and found["c1/pgd"].paper_rejected is False
    c2 = found["c2/pgd"]  # identical arms: the paper's reduction is excluded exactly when the interval stops short
    assert c2.paper_rejected is (c2.ci_low > -0.05)
    reverse = ResultSet(study(b=arm_frame("baseline", first_correct(36), robust_on_grid(first_correct(36))),
                              l=arm_frame("lora_fc", first_correct(36), broken_everywhere()),
                              c=arm_frame("lora_fc_conv1", first_correct(36), robust_on_grid(first_correct(36)))))
    found = by_key(findings(reverse, settings()))
    assert found["c1/pgd"].verdict == "contradicted" and found["c2/pgd"].verdict == "supported"
    assert found["c1/pgd"].paper_rejected is True  # lora_fc raises the rate: every reduction of 5 points excluded


def test_claim_c_uses_the_paper_arms_common_correct_set_with_a_sensitivity_line() -> None:
    clean = np.ones((3, N), dtype=bool)
    clean[2, :4] = False  # seed 2 of lora_fc_conv1 misses four images: they leave every paired success comparison
    at = np.ones((3, N), dtype=bool)
    at[:, 30:] = False  # an adversarially trained arm misses ten more: not a paper arm, so no effect on (c)
    data = study(b=arm_frame("baseline", np.ones(N, dtype=bool)), l=arm_frame("lora_fc", np.ones(N, bool)),
                 c=arm_frame("lora_fc_conv1", clean), at=arm_frame("baseline_at", at))
    found = by_key(findings(ResultSet(data), settings()))
    assert found["c1/pgd"].n_images == N - 4 and found["c2/fgsm"].n_images == N - 4
    assert "(baseline, lora_fc, lora_fc_conv1)" in found["c1/pgd"].detail
    sens = found["c1/pgd"].sensitivity
    assert sens.startswith("on each arm's own clean-correct images: ") and "Sensitivity, on each arm" in \
        found["c1/pgd"].sentence
    # the comparisons table keeps its own set: every arm passed as common_arms
    result = analyse(data, settings(), common_arms=["baseline", "lora_fc", "lora_fc_conv1", "baseline_at"])
    assert result.common_sizes["pgd"]["8/255"] == 30 - 4 and by_key(result.findings)["c1/pgd"].n_images == N - 4


def test_claim_d_certainty_drop_over_the_grid() -> None:
    drops = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.9, adv_prob=0.4))
    found = by_key(findings(drops, settings()))
    assert found["d/baseline/pgd"].verdict == "supported" and found["d/baseline/pgd"].effect == pytest.approx(0.5)
    flat = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.6, adv_prob=0.6))
    assert by_key(findings(flat, settings()))["d/baseline/fgsm"].verdict == "equivalent"  # no drop at all
    rises = ResultSet(arm_frame("baseline", first_correct(36), clean_prob=0.5, adv_prob=0.7))
    assert by_key(findings(rises, settings()))["d/baseline/fgsm"].verdict == "contradicted"
    # drops at 2/255, rises at 8/255 (confident wrong classes): the grid's verdict is its worst ε's
    frame = arm_frame("baseline", first_correct(36), clean_prob=0.8, adv_prob=0.5)
    frame.loc[(frame["attack"] == "pgd") & (frame["eps"] == GRID[1]), "adv_max_prob"] = np.float32(0.95)
    result = analyse(frame, settings())
    d = by_key(result.findings)["d/baseline/pgd"]
    assert d.verdict == "contradicted" and d.eps == pytest.approx(GRID[1]) and d.effect == pytest.approx(-0.15)
    assert by_key(result.findings)["d/baseline/fgsm"].verdict == "supported"
    assert "2/255: max-softmax 80.0 → 50.0 %" in d.detail and "8/255: max-softmax 80.0 → 95.0 %" in d.detail
    assert "true class 80.0 → 30.0 %" in d.detail  # the true-class probability beside it (tests/rows.py: 0.8, 0.3)
    assert d.paper_rejected is True  # a drop of 5 points at every ε is excluded at 8/255


def test_not_converged_replaces_the_verdict_of_claims_resting_on_that_arm() -> None:
    metrics = {"pretrained": {"seeds": {"0": {"best_epoch": 0, "epochs_run": 0, "max_epochs": 0}}},
               "baseline": {"seeds": {"0": {"best_epoch": 5, "max_epochs": 8},
                                      "1": {"best_epoch": 7, "max_epochs": 8}}},
               "lora_fc": {"seeds": {"0": {"best_epoch": 8, "max_epochs": 8}, "1": {"best_epoch": 6, "max_epochs": 8}}}}
    stuck = unconverged_arms(metrics)
    assert list(stuck) == ["lora_fc"] and "1 of 2 seeds best at max_epochs 8: seed 0" in stuck["lora_fc"]
    data = study(b=arm_frame("baseline", first_correct(20)), l=arm_frame("lora_fc", first_correct(40)),
                 c=arm_frame("lora_fc_conv1", first_correct(20)))
    found = by_key(analyse(data, settings(), train_metrics=metrics).findings)
    for key in ("a/lora_fc", "c1/pgd", "c2/fgsm", "d/lora_fc/pgd"):
        assert found[key].verdict == "not converged", key
        assert found[key].note.startswith("Not converged: lora_fc was still improving") and math.isfinite(
            found[key].effect)
    assert found["a/lora_fc_conv1"].verdict != "not converged" and found["b"].verdict != "not converged"
    assert by_key(findings(ResultSet(data), settings()))["a/lora_fc"].verdict == "supported"  # the same, converged


def test_holm_over_the_findings_family_can_overturn_a_nominal_result() -> None:
    # lora_fc right on 6 more images in every seed: significant alone, but 6 p-values share the family
    rs = ResultSet(study(b=arm_frame("baseline", first_correct(30)), l=arm_frame("lora_fc", first_correct(36)),
                         c=arm_frame("lora_fc_conv1", first_correct(30))))
    found = findings(rs, settings())
    tested = [f for f in found if f.p is not None]
    assert len(tested) == 6  # (a) x 2 + (c) x 2 x 2
    np.testing.assert_allclose([f.p_holm for f in tested], stats.holm_adjust([f.p for f in tested]))
    a = by_key(found)["a/lora_fc"]
    assert a.p < 0.05 and a.ci_low > 0
    assert a.p_holm > 0.05 and a.verdict == "underpowered"
    assert by_key(found)["b"].p is None and by_key(found)["b"].p_holm is None  # no test, no Holm


def test_every_verdict_is_defined() -> None:
    assert set(VERDICT_DEFINITIONS) == set(VERDICTS)
    assert {"supported", "contradicted", "equivalent", "paper's effect rejected", "underpowered",
            "not testable in this configuration", "not converged", "not evaluated"} == set(VERDICTS)


def test_absent_arms_are_not_evaluated_not_failed() -> None:
    rs = ResultSet(arm_frame("baseline", first_correct(36)))
    found = by_key(findings(rs, settings(arms={"baseline": "baseline", "lora_fc": None, "lora_fc_conv1": "gone"})))
    assert found["a/lora_fc"].verdict == "not evaluated"
    assert "report.arms.lora_fc is null" in found["a/lora_fc"].sentence
    assert found["c2/pgd"].verdict == "not evaluated" and "'gone'" in found["c2/pgd"].sentence
    assert found["b"].verdict in ("supported", "contradicted", "underpowered")
    assert math.isnan(found["a/lora_fc"].effect) and found["a/lora_fc"].p is None
    assert found["a/lora_fc"].paper_rejected is None and found["a/lora_fc"].equivalence is None


def test_findings_json_is_strict_json_and_analyse_is_deterministic() -> None:
    data = study(b=arm_frame("baseline", first_correct(36)), l=arm_frame("lora_fc", first_correct(38)))
    result = analyse(data, settings(scope=SCOPE))
    doc = findings_json(result.findings, settings(scope=SCOPE), result.common_sizes, {"failed": 0})
    text = json.dumps(doc, allow_nan=False)  # NaN of not-evaluated findings became null
    assert doc["verdicts"]["a/lora_fc_conv1"] == "not evaluated"
    assert doc["verdicts"]["b"] == "not testable in this configuration"
    assert doc["common_correct_images"] == {"fgsm": {"2/255": 36, "8/255": 36}, "pgd": {"2/255": 36, "8/255": 36}}
    a = {f["key"]: f for f in doc["findings"]}["a/lora_fc"]
    assert {"paper_effect", "paper_rejected", "equivalence", "margin", "mde", "eq_low", "eq_high"} <= set(a)
    assert a["margin"] == 0.05 and a["paper_effect"] == pytest.approx(0.06) and isinstance(a["paper_rejected"], bool)
    assert doc["settings"]["equivalence_margin"] == 0.05 and doc["scope"]["input_size"] == 24
    assert "synthetic data" in doc["scope"]["differences"]
    again = analyse(data, settings(scope=SCOPE))
    assert json.dumps(findings_json(again.findings, settings(scope=SCOPE), again.common_sizes, {"failed": 0}),
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
