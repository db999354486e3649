"""Tests for the defence analysis (robustlora.analysis: adversarial, squeezing, switching, defences) and its report
section (robustlora.reporting.defences) on synthetic per-image tables whose answers are known by construction."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from robustlora import stats
from robustlora.analysis import (AdversarialArm, Settings, adversarial_differences, adversarial_table,
                                 analyse_defences, eps_key, squeeze_table, squeeze_verdicts, switching_comparisons,
                                 switching_table, tradeoff_points)
from robustlora.errors import DataError
from robustlora.reporting.defences import defences_section, tradeoff_figure, write_defence_figures
from rows import N, SEEDS, arm_frame, first_correct as first, seed_rows

K = 20  # images the switching system runs on
GRID = (2 / 255, 4 / 255)
E = eps_key(4 / 255)
AT = AdversarialArm("at", "std", "pgd", 4 / 255, 2, 2 / 255, True)


def settings() -> Settings:
    return Settings(eps_grid=GRID, report_eps=GRID[1], arms={"baseline": "std"}, n_boot=200, seed=0)


def attack_frame(arm: str, clean: np.ndarray, robust_by_eps: dict[float, np.ndarray]) -> pd.DataFrame:
    """FGSM and PGD rows of one arm: `clean` correct, `clean & robust` still correct after the attack at each ε."""
    return arm_frame(arm, clean, {(attack, eps): clean & adv for eps, adv in robust_by_eps.items()
                                  for attack in ("fgsm", "pgd")})


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return results_frame()


def results_frame() -> pd.DataFrame:
    """std: 36 clean-correct, 8 robust; at: 34 clean-correct, 30 robust; twin: a copy of std under another name."""
    std = attack_frame("std", first(36), {e: first(8) for e in GRID})
    at = attack_frame("at", first(34), {e: first(30) for e in GRID})
    twin = std.assign(variant="twin")
    return pd.concat([std, at, twin], ignore_index=True)


def autoattack_frame() -> pd.DataFrame:
    n = 15
    return pd.concat([seed_rows({"clean_correct": first(14, n), "adv_correct": first(a, n)}, n=n, variant=v,
                                attack="autoattack", eps=4 / 255) for v, a in (("std", 2), ("at", 12), ("twin", 2))],
                     ignore_index=True)


TRAIN = {arm: {"seeds": {str(s): {"train_seconds": 100.0 + 10 * s, "trainable_params": p} for s in SEEDS}}
         for arm, p in (("std", 5130), ("at", 5130), ("twin", 5130))}


def squeeze_frame(adaptive_flagged: bool = False) -> pd.DataFrame:
    """Classifier: 36 clean-correct; PGD and adaptive fool images 10..35. Detector: flags every PGD success, no
    adaptive one (or all, with adaptive_flagged), and clean images 0..3 (correct) and 38, 39 (wrong)."""
    clean, adv = first(36), first(10)
    success = clean & ~adv
    clean_flag = np.isin(np.arange(N), [0, 1, 2, 3, 38, 39])
    common = dict(variant="std", threshold=0.3, holdout_fpr=0.05, fingerprint="x", label=0, clean_score=0.1,
                  adv_score=0.9, eps=4 / 255, eps_label="eps_4")
    flags = {"clean_correct": clean, "adv_correct": adv, "clean_flagged": clean_flag}
    pgd = seed_rows({**flags, "adv_flagged": success}, attack="pgd", **common)
    adaptive = seed_rows({**flags, "adv_flagged": success if adaptive_flagged else np.zeros(N, bool)},
                         attack="adaptive", **common)
    return pd.concat([pgd, adaptive], ignore_index=True)


def switching_frame() -> pd.DataFrame:
    """First K images of the attack subset; clean: 18 correct; worst case: 12 robust; pgd_standard: 16 robust."""
    common = dict(system="sys", standard="std", robust="at", eps=4 / 255, eps_label="eps_4", label=0, fingerprint="x")
    clean = first(18, K)
    out = [seed_rows({"clean_correct": clean, "adv_correct": first(a, K), "clean_switched": first(2, K),
                      "adv_switched": first(sw, K)}, n=K, attack=attack, **common)
           for attack, a, sw in (("pgd_standard", 16, 20), ("pgd_system", 14, 18), ("adaptive_evade", 12, 4),
                                 ("worst", 12, 4))]
    return pd.concat(out, ignore_index=True)


# ----------------------------------------------------------------------------- adversarial fine-tuning

def test_adversarial_table_values_and_training_cost(results: pd.DataFrame) -> None:
    table = adversarial_table(results, settings(), at_arms=[AT], train_metrics=TRAIN, autoattack=autoattack_frame())
    assert list(table.columns) == ["arm", "quantity", "attack", "eps", "value", "ci_low", "ci_high", "n_images",
                                   "n_seeds", "interval"]
    at = table[table["arm"] == "at"].set_index(["quantity", "eps"])
    robust = at.loc[("pgd_robust_accuracy", E)]
    assert robust["value"] == pytest.approx(30 / 40) and robust["ci_low"] < 0.75 < robust["ci_high"]
    assert robust["n_images"] == N and robust["n_seeds"] == 3
    clean = table[(table["arm"] == "at") & (table["quantity"] == "clean_accuracy")].iloc[0]
    assert clean["value"] == pytest.approx(34 / 40) and np.isnan(clean["eps"])
    aa = at.loc[("autoattack_robust_accuracy", E)]
    assert aa["value"] == pytest.approx(12 / 15) and aa["n_images"] == 15
    secs = table[(table["arm"] == "at") & (table["quantity"] == "train_seconds")].iloc[0]
    assert (secs["value"], secs["ci_low"], secs["ci_high"]) == (110.0, 100.0, 120.0)
    assert secs["interval"] == "seed range"
    params = table[(table["arm"] == "at") & (table["quantity"] == "trainable_params")].iloc[0]
    assert params["value"] == 5130


def test_adversarial_differences_higher_and_identical_inconclusive(results: pd.DataFrame) -> None:
    arms = [AT, AdversarialArm("twin", "std", "trades", 4 / 255, 2, 1 / 255, False, beta=6.0)]
    diffs = adversarial_differences(results, settings(), arms, autoattack_frame())
    assert list(diffs.columns) == ["arm", "standard", "quantity", "attack", "eps", "diff", "ci_low", "ci_high", "p",
                                   "p_holm", "n_images", "verdict"]
    np.testing.assert_allclose(diffs["p_holm"], stats.holm_adjust(diffs["p"].to_numpy()))
    at = diffs[diffs["arm"] == "at"].set_index(["quantity", "eps"])
    row = at.loc[("pgd_robust_accuracy", E)]
    assert row["diff"] == pytest.approx(22 / 40) and row["ci_low"] > 0 and row["verdict"] == "higher"
    assert at.loc[("autoattack_robust_accuracy", E), "diff"] == pytest.approx(10 / 15)
    clean = diffs[(diffs["arm"] == "at") & (diffs["quantity"] == "clean_accuracy")].iloc[0]
    assert clean["diff"] == pytest.approx(-2 / 40) and clean["verdict"] == "inconclusive"  # 2 images: no call
    same = diffs[diffs["arm"] == "twin"]
    assert (same["diff"] == 0).all() and set(same["verdict"]) == {"inconclusive"}


def test_adversarial_arm_label() -> None:
    assert AT.label == "PGD-AT ε=4/255, 2 steps of 0.5·ε, random start"
    trades = AdversarialArm("t", None, "trades", 8 / 255, 3, 2.5 / 255, False, beta=6)
    assert trades.label == "TRADES β=6, ε=8/255, 3 steps of 0.312·ε"


def test_adversarial_arms_of_params_find_their_standard_twins() -> None:
    import yaml

    from robustlora.config import parse_params
    from robustlora.analysis import adversarial_arms

    from conftest import defence_params

    raw = defence_params()
    raw["variants"]["lora_fc_at"] = {"adaptation": "lora", "targets": ["fc"], "rank": 8, "adversarial": True}
    arms = {a.name: a for a in adversarial_arms(parse_params(raw).variants)}
    assert arms["baseline_at"].standard == "baseline" and arms["lora_fc_conv1_at"].standard == "lora_fc_conv1"
    assert arms["lora_fc_at"].standard is None  # rank 8: no standard arm with the same settings
    spec = parse_params(raw).variants["baseline_at"].adversarial
    assert arms["baseline_at"].label == spec.label


# ----------------------------------------------------------------------------- feature squeezing

def test_detection_rate_is_over_successful_examples_and_clean_accuracy_subtracts_flags() -> None:
    table = squeeze_table(squeeze_frame(), settings()).set_index(["attack", "quantity"])
    assert table.loc[("pgd", "detection_rate"), "value"] == 1.0  # 26 successes, all flagged; 4 clean flags ignored
    assert table.loc[("pgd", "detection_rate"), "n_cases"] == 3 * 26
    assert table.loc[("adaptive", "detection_rate"), "value"] == 0.0
    assert table.loc[("pgd", "clean_fpr"), "value"] == pytest.approx(6 / 40)
    assert table.loc[("pgd", "detector_clean_accuracy"), "value"] == pytest.approx((36 - 4) / 40)
    assert table.loc[("pgd", "robust_accuracy"), "value"] == pytest.approx(10 / 40)
    assert table.loc[("pgd", "detector_robust_accuracy"), "value"] == pytest.approx(36 / 40)
    assert table.loc[("adaptive", "detector_robust_accuracy"), "value"] == pytest.approx(10 / 40)
    lo, hi = table.loc[("adaptive", "detection_rate"), ["ci_low", "ci_high"]]
    assert lo == 0 < hi  # Wilson-widened: never a zero-width interval


def test_detection_rate_uses_each_seeds_own_successes() -> None:
    frame = squeeze_frame()
    pgd = frame["attack"] == "pgd"
    # seed 1: only images 10..19 are fooled, and only 10..14 are flagged -> that seed's rate is 1/2
    seed1 = pgd & (frame["seed"] == 1)
    frame.loc[seed1 & (frame["image"] >= 20), "adv_correct"] = True
    frame.loc[seed1, "adv_flagged"] = frame.loc[seed1, "image"].between(10, 14) | (frame.loc[seed1, "image"] >= 30)
    table = squeeze_table(frame, settings()).set_index(["attack", "quantity"])
    assert table.loc[("pgd", "detection_rate"), "value"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_squeeze_verdicts_follow_the_adaptive_attack() -> None:
    only = squeeze_verdicts(squeeze_frame(), settings()).iloc[0]
    assert only["verdict"] == "only against non-adaptive attacks"
    assert only["gain_nonadaptive"] == pytest.approx(26 / 40) and only["gain_nonadaptive_lo"] > 0
    assert only["gain_adaptive"] == 0 and only["p_holm_adaptive"] == 1
    survives = squeeze_verdicts(squeeze_frame(adaptive_flagged=True), settings()).iloc[0]
    assert survives["verdict"] == "survives the adaptive attack"
    frame = squeeze_frame()
    frame["adv_flagged"] = False
    none = squeeze_verdicts(frame, settings()).iloc[0]
    assert none["verdict"] == "no gain" and none["gain_nonadaptive"] == 0
    # no image gained, yet the interval is not zero width: 40 images cannot rule out a gain of up to 8.8 points
    bound = 1.96 ** 2 / (40 + 1.96 ** 2)
    assert none["gain_nonadaptive_lo"] < 0 < none["gain_nonadaptive_hi"] == pytest.approx(bound, rel=1e-3)


def test_missing_column_raises_one_line_data_error() -> None:
    with pytest.raises(DataError, match="adv_flagged") as info:
        squeeze_table(squeeze_frame().drop(columns="adv_flagged"), settings())
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="adv_switched"):
        switching_table(switching_frame().drop(columns="adv_switched"), settings())


# ----------------------------------------------------------------------------- switching

def test_switching_worst_case_metrics_and_comparisons(results: pd.DataFrame) -> None:
    table = switching_table(switching_frame(), settings()).set_index(["attack", "quantity"])
    assert table.loc[("worst", "robust_accuracy"), "value"] == pytest.approx(12 / K)
    assert table.loc[("worst", "clean_accuracy"), "value"] == pytest.approx(18 / K)
    assert table.loc[("worst", "switch_rate_attacked"), "value"] == pytest.approx(4 / K)
    assert table.loc[("pgd_standard", "switch_rate_clean"), "value"] == pytest.approx(2 / K)
    comp = switching_comparisons(switching_frame(), results, settings()).set_index(["role", "quantity"])
    assert set(comp["n_images"]) == {K}  # the attack rows are restricted to the switching images
    assert comp.loc[("standard", "robust_accuracy"), "diff"] == pytest.approx((12 - 8) / K)
    assert comp.loc[("robust", "robust_accuracy"), "diff"] == pytest.approx((12 - 20) / K)
    assert comp.loc[("robust", "robust_accuracy"), "verdict"] == "lower"
    assert comp.loc[("standard", "clean_accuracy"), "diff"] == pytest.approx((18 - 20) / K)


def test_the_adapters_worst_case_over_attacks_is_the_reference_when_present(results: pd.DataFrame) -> None:
    """With worst-case rows in the attack results, the robust adapter is judged on them, not on PGD alone."""
    from robustlora.analysis.tables import WORST_CASE

    pgd_at = results[(results["variant"] == "at") & (results["attack"] == "pgd")]
    worst = pgd_at.assign(attack=WORST_CASE, adv_correct=pgd_at["adv_correct"] & (pgd_at["image"] < 10))
    comp = switching_comparisons(switching_frame(), pd.concat([results, worst]), settings())
    robust = comp.set_index(["role", "quantity"]).loc[("robust", "robust_accuracy")]
    assert robust["diff"] == pytest.approx((12 - 10) / K)  # vs (12 - 20) / K against PGD alone


def test_an_adapter_that_dominates_the_switching_system_is_said_with_numbers(defences) -> None:
    from robustlora.analysis.switching import DOMINANCE_COLUMNS, switching_dominance

    dom = switching_dominance(defences.switching_comparisons, 0.05)
    assert list(dom.columns) == DOMINANCE_COLUMNS
    dom = dom.set_index("role")
    # the robust adapter: 20/20 robust vs the system's worst case 12/20, clean 20/20 vs the system's 18/20
    assert bool(dom.loc["robust", "dominates"]) and not bool(dom.loc["standard", "dominates"])
    assert dom.loc["robust", "robust_gain"] == pytest.approx(8 / K)
    assert dom.loc["robust", "robust_ci_low"] > 0 and dom.loc["robust", "clean_diff"] == pytest.approx(-2 / K)
    shows = defences_section(defences, settings(), {}).split("### What this shows")[1]
    assert ("the robust adapter at alone dominates the switching system — its robust accuracy is +40.0 [" in shows
            and "switching buys nothing here" in shows)
    # a system whose worst case matches the robust adapter's: nothing dominates it
    even = switching_frame()
    even.loc[even["attack"] == "worst", "adv_correct"] = True
    d = analyse_defences(results_frame(), settings(), switching=even)
    assert not switching_dominance(d.switching_comparisons, 0.05)["dominates"].any()
    assert "no adapter alone is shown to dominate it" in defences_section(d, settings(), {})
    assert switching_dominance(d.switching_comparisons.iloc[:0], 0.05).empty


# ----------------------------------------------------------------------------- markdown and figure

COST = {"device": "cpu", "batch_size": 64, "n_adapters": 2, "repeats": 20,
        "switch_s": {"median": 0.010, "q05": 0.009, "q95": 0.012}, "merged_s": {"median": 0.008, "q05": 0.007,
                                                                               "q95": 0.009},
        "reload_s": {"median": 0.03, "q05": 0.02, "q95": 0.04}, "bank_bytes": 46 * 2 ** 20,
        "full_models_bytes": 90 * 2 ** 20, "adapter_bytes": 2 ** 19}


@pytest.fixture(scope="module")
def defences(results: pd.DataFrame):
    return analyse_defences(results, settings(), at_arms=[AT], arms=["std", "at"], train_metrics=TRAIN,
                            autoattack=autoattack_frame(), squeeze=squeeze_frame(), switching=switching_frame(),
                            cost=COST)


def test_markdown_has_every_table_and_every_number_an_interval(defences) -> None:
    md = defences_section(defences, settings(), {"defences_tradeoff": "figures/defences_tradeoff.png"},
                          squeeze_settings="Squeezers: 5-bit depth, 2×2 median; target holdout FPR 5 %.")
    for heading in ("## Defences", "### Adversarial fine-tuning", "### Feature squeezing",
                    "### Dynamic adapter switching", "#### Serving cost", "### What this shows"):
        assert heading in md
    assert "PGD-AT ε=4/255, 2 steps of 0.5·ε, random start" in md and "75.0 [" in md and "† |" in md
    assert "only against non-adaptive attacks" in md and "![" in md and "figures/defences_tradeoff.png" in md
    assert "10.00 [9.00, 12.00]" in md and "46.0 MiB" in md
    bare = re.compile(r"^[+-]?\d[\d,]*\.\d$")  # a share or time without its interval
    for line in md.splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert not any(bare.match(c) for c in cells), line
    shows = md.split("### What this shows")[1]
    assert "at vs its standard twin std: clean accuracy inconclusive: -5.0 [" in shows
    assert "PGD robust accuracy at ε = 4/255 higher: +55.0 [+" in shows and "2/255 higher" not in shows
    assert "Feature squeezing on std at ε = 4/255: only against non-adaptive attacks" in shows


def test_missing_defences_explain_how_to_enable_them(results: pd.DataFrame) -> None:
    d = analyse_defences(results, settings())
    md = defences_section(d, settings(), {})
    assert "variants.<name>.adversarial" in md and "`squeeze`" in md and "`switching`" in md
    assert "No defence produced a tested comparison." in md and "![" not in md


def test_tradeoff_points_and_deterministic_figure(defences, tmp_path) -> None:
    points = defences.points
    assert list(points.columns) == ["label", "kind", "arm", "twin", "clean", "clean_lo", "clean_hi", "robust",
                                    "robust_lo", "robust_hi"]
    assert list(points["kind"]) == ["arm", "adversarial", "squeeze", "switching"]
    at = points[points["kind"] == "adversarial"].iloc[0]
    assert at["twin"] == "std" and at["robust"] == pytest.approx(0.75)
    sq = points[points["kind"] == "squeeze"].iloc[0]
    assert (sq["clean"], sq["robust"]) == (pytest.approx(32 / 40), pytest.approx(10 / 40))
    a = write_defence_figures(tmp_path / "a", points, 4 / 255)["defences_tradeoff"]
    b = write_defence_figures(tmp_path / "b", points.copy(), 4 / 255)["defences_tradeoff"]
    assert a.name == "defences_tradeoff.png" and a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
    assert write_defence_figures(tmp_path / "c", points.iloc[:0], 4 / 255) == {}
    assert tradeoff_figure(tradeoff_points(defences.adversarial, 4 / 255), 4 / 255) is not None


def test_bytes_are_shown_in_the_unit_that_keeps_them_readable() -> None:
    from robustlora.reporting.defences import format_bytes

    assert format_bytes(11_728) == "11.5 KiB" and format_bytes(44_726_568) == "42.7 MiB"  # an adapter vs a ResNet18
