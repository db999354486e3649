"""Tests for robustlora.analysis.checks: each check passes on a sound study and fails on a constructed violation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robustlora.analysis.checks import STATUSES, Check, attack_checks, count, run_checks, training_checks
from robustlora.errors import DataError
from rows import GRID, SANITY, SUCCESS, arm_frame, first_correct, study


def checks_of(results: pd.DataFrame, sanity_eps: float | None = SANITY) -> dict[tuple[str, str, int], Check]:
    return {(c.name, c.arm, c.seed): c for c in attack_checks(results, eps_grid=GRID, sanity_eps=sanity_eps)}


def statuses(checks: dict, name: str) -> set[str]:
    return {c.status for (n, _, _), c in checks.items() if n == name}


def with_success(**changes: int) -> dict:
    """SUCCESS with some cells changed, keys like pgd_8=20 (ε as k/255) or pgd_sanity=30."""
    success = dict(SUCCESS)
    for key, k in changes.items():
        attack, eps = key.split("_")
        success[(attack, SANITY if eps == "sanity" else int(eps) / 255)] = k
    return success


GOOD = study(b=arm_frame("baseline", first_correct(36)), l=arm_frame("lora_fc", first_correct(38)))


def test_every_attack_check_passes_on_a_sound_study() -> None:
    checks = checks_of(GOOD)
    assert len(checks) == 2 * 3 * 7  # arms x seeds x checks
    assert {c.status for c in checks.values()} == {"passed"}, [c for c in checks.values() if c.flagged]
    # lora_fc at 2/255: PGD 14/38 vs FGSM 10/38 correct images flipped
    assert "smallest PGD − FGSM = +10.5 points" in checks[("pgd_vs_fgsm", "lora_fc", 0)].detail


def test_pgd_weaker_than_fgsm_fails_beyond_one_image() -> None:
    one_short = checks_of(arm_frame("baseline", first_correct(36), with_success(pgd_8=19)))
    assert statuses(one_short, "pgd_vs_fgsm") == {"passed"}  # the tolerance: one image
    two_short = checks_of(arm_frame("baseline", first_correct(36), with_success(pgd_8=18)))
    check = two_short[("pgd_vs_fgsm", "baseline", 1)]
    assert check.status == "failed" and "ε = 8/255: PGD 50.0 % < FGSM 55.6 %" in check.detail


def test_success_falling_with_eps_fails() -> None:
    checks = checks_of(arm_frame("baseline", first_correct(36), with_success(fgsm_8=8)))
    assert statuses(checks, "monotone_fgsm") == {"failed"}
    assert statuses(checks, "monotone_pgd") == {"passed"}
    assert "27.8 % at ε = 2/255 → 22.2 % at ε = 8/255" in checks[("monotone_fgsm", "baseline", 0)].detail


def test_pgd_below_99_percent_at_the_sanity_eps_fails() -> None:
    checks = checks_of(arm_frame("baseline", first_correct(36), with_success(pgd_sanity=35)))
    assert statuses(checks, "pgd_sanity_eps") == {"failed"}  # 35/36 = 97.2 %
    assert "97.2 % (35/36)" in checks[("pgd_sanity_eps", "baseline", 0)].detail
    skipped = checks_of(GOOD, sanity_eps=None)
    assert statuses(skipped, "pgd_sanity_eps") == {"not evaluated"}  # never a pass
    no_rows = GOOD[GOOD["eps"] != SANITY]
    assert statuses(checks_of(no_rows), "pgd_sanity_eps") == {"not evaluated"}


def test_clean_prediction_differing_across_attack_rows_fails() -> None:
    bad = GOOD.copy()
    row = bad.index[(bad["variant"] == "lora_fc") & (bad["seed"] == 2) & (bad["attack"] == "pgd")
                    & (bad["image"] == 4)][0]
    bad.loc[row, "clean_pred"] = (bad.loc[row, "clean_pred"] + 3) % 10
    checks = checks_of(bad)
    assert checks[("clean_consistent", "lora_fc", 2)].status == "failed"
    assert "1 of 40 images" in checks[("clean_consistent", "lora_fc", 2)].detail
    assert checks[("clean_consistent", "lora_fc", 1)].status == "passed"
    assert checks[("flags_match_predictions", "lora_fc", 2)].status == "failed"  # clean_correct no longer matches


def test_accuracy_rising_under_attack_fails() -> None:
    clean = first_correct(30)
    adv = np.ones(40, dtype=bool)  # every image right after the attack, 10 of them wrong before
    checks = checks_of(arm_frame("baseline", clean, {**SUCCESS, ("fgsm", GRID[0]): adv}))
    assert statuses(checks, "adv_not_above_clean") == {"failed"}
    assert "40 images right after the attack vs 30 before" in checks[("adv_not_above_clean", "baseline", 0)].detail


def test_training_checks_best_epoch() -> None:
    metrics = {
        "pretrained": {"seeds": {"0": {"best_epoch": 0, "epochs_run": 0, "max_epochs": 15}}},  # not trained: no check
        "baseline": {"seeds": {"0": {"best_epoch": 1, "epochs_run": 6, "max_epochs": 15},
                               "1": {"best_epoch": 8, "epochs_run": 13, "max_epochs": 15},
                               "2": {"best_epoch": 15, "epochs_run": 15, "max_epochs": 15}}},
        "lora_fc": {"seeds": {"0": {"best_epoch": 4, "epochs_run": 9}}},
        "broken": {"val_accuracy": 0.5},
    }
    checks = {(c.arm, c.seed): c for c in training_checks(metrics)}
    assert ("pretrained", 0) not in checks
    assert checks[("baseline", 0)].status == "failed" and "best epoch 1 of 6" in checks[("baseline", 0)].detail
    assert checks[("baseline", 1)].status == "passed"
    assert checks[("baseline", 2)].status == "warning" and "still improving" in checks[("baseline", 2)].detail
    assert checks[("lora_fc", 0)].status == "not evaluated"  # no max_epochs to compare with
    assert checks[("broken", None)].status == "not evaluated"


def test_run_checks_and_count() -> None:
    train = {"baseline": {"seeds": {"0": {"best_epoch": 1, "epochs_run": 4, "max_epochs": 10}}}}
    checks = run_checks(GOOD, train, eps_grid=GRID, sanity_eps=SANITY)
    assert checks[0].name == "best_epoch"
    counts = count(checks)
    assert list(counts) == list(STATUSES) and counts["failed"] == 1 and counts["passed"] == len(checks) - 1
    with pytest.raises(ValueError, match="status must be one of"):
        Check("best_epoch", "baseline", 0, "FAILED", "")


# ----------------------------------------------------------------------------- catastrophic overfitting

def history(robust: list[float], train: list[float]) -> pd.DataFrame:
    """A per-epoch history as the train stage writes it (plots/train/<arm>/seed_<s>.csv)."""
    n = len(robust)
    return pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": np.linspace(2, 1, n), "train_accuracy": train,
                         "holdout_accuracy": 0.8, "holdout_robust_accuracy": robust, "lr": 0.01})


# Wong et al. 2020's pattern: holdout PGD accuracy collapses at epoch 5 while the training attack's accuracy jumps
COLLAPSING = history([0.30, 0.38, 0.42, 0.45, 0.05, 0.02], [0.40, 0.45, 0.50, 0.52, 0.85, 0.92])
HEALTHY = history([0.30, 0.38, 0.42, 0.45, 0.43, 0.46], [0.40, 0.45, 0.50, 0.52, 0.55, 0.57])


def test_catastrophic_overfitting_is_flagged_on_a_collapsing_history_only() -> None:
    from robustlora.analysis.checks import catastrophic_overfitting

    c = catastrophic_overfitting(COLLAPSING)
    assert c.flagged and (c.best_epoch, c.epoch) == (4, 6) and c.best == pytest.approx(0.45)
    assert (c.robust, c.train_before, c.train_after) == (pytest.approx(0.02), pytest.approx(0.52), pytest.approx(0.92))
    healthy = catastrophic_overfitting(HEALTHY)
    assert not healthy.flagged and (healthy.best_epoch, healthy.epoch) == (4, 5)  # a 2-point dip: noise
    # PGD accuracy falling while the training attack's accuracy falls too is not this failure mode
    assert not catastrophic_overfitting(history([0.45, 0.10], [0.60, 0.40])).flagged
    # 20 points below the best, or below half of a small best; 15 points from 0.5 is neither
    assert catastrophic_overfitting(history([0.50, 0.30], [0.4, 0.5])).flagged
    assert not catastrophic_overfitting(history([0.50, 0.35], [0.4, 0.5])).flagged
    assert catastrophic_overfitting(history([0.16, 0.07], [0.4, 0.5])).flagged
    # an early collapse from a small best is not hidden by a larger, unflagged dip later
    late = catastrophic_overfitting(history([0.20, 0.09, 0.60, 0.45], [0.3, 0.4, 0.5, 0.6]))
    assert late.flagged and late.epoch == 2
    with pytest.raises(DataError, match="holdout_robust_accuracy"):
        catastrophic_overfitting(COLLAPSING.drop(columns="holdout_robust_accuracy"))


def test_overfitting_checks_per_adversarially_trained_arm_and_seed() -> None:
    from robustlora.analysis.checks import overfitting_checks

    histories = {"at": {0: COLLAPSING, 1: HEALTHY, 2: COLLAPSING, 3: COLLAPSING.iloc[:1]},
                 "std": {0: COLLAPSING}}
    train = {"at": {"seeds": {"0": {"best_epoch": 6}, "2": {"best_epoch": 4}}}}
    checks = {(c.arm, c.seed): c for c in overfitting_checks(histories, ["at", "at_missing"], train)}
    assert ("std", 0) not in checks  # only the arms named as adversarially trained
    assert checks[("at", 0)].status == "failed" and "45.0 % at epoch 4 → 2.0 % at epoch 6" in checks[("at", 0)].detail
    assert "52.0 → 92.0 %" in checks[("at", 0)].detail
    assert checks[("at", 1)].status == "passed" and "largest fall 2.0 points" in checks[("at", 1)].detail
    assert checks[("at", 2)].status == "warning" and "selected epoch 4 precedes" in checks[("at", 2)].detail
    assert checks[("at", 3)].status == "not evaluated"
    assert checks[("at_missing", None)].status == "not evaluated"
    assert overfitting_checks({"at": {0: COLLAPSING}}, ["at"])[0].status == "failed"  # no metrics: the last epoch


def test_not_informative_is_a_status_of_its_own() -> None:
    assert "not informative" in STATUSES
    check = Check("convergence", "a", None, "not informative", "2 informative pairs, the test needs 5")
    assert check.flagged and count([check])["not informative"] == 1 and count([check])["passed"] == 0


def test_the_report_lists_not_informative_checks_apart_and_before_the_passes() -> None:
    from robustlora.reporting.appendix import checks_section

    checks = [Check("best_epoch", "a", 0, "passed", "fine"),
              Check("convergence", "a", None, "not informative", "2 informative pairs, the test needs 5"),
              Check("zero_gradients", "a", 0, "failed", "zero")]
    md = checks_section(checks)
    assert "**2 of 3 checks flagged: 1 failed, 1 not informative.**" in md
    assert md.index("**FAILED**") < md.index("**NOT INFORMATIVE**") < md.index("| passed |")
    assert "neither is a pass" in md
