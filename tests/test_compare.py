"""Tests for the one comparison engine (robustlora.analysis.compare) and the one per-image table check
(robustlora.analysis.tables): estimate, interval, p-value and verdict come from one call and agree."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robustlora import stats
from robustlora.analysis import (COMPARISON_COLUMNS, Comparison, attack_name, compare, comparison_table, direction,
                                 holm_family, strong_pgd_name, validate_results, validate_table)
from robustlora.config import ConvergenceConfig
from robustlora.errors import DataError
from rows import N, arm_frame, first_correct, settings

RNG = np.random.default_rng(0)


def outcomes(p: float, seeds: int = 3, n: int = N) -> np.ndarray:
    return RNG.random((seeds, n)) < p


def test_compare_is_the_paired_test_in_one_call() -> None:
    a, b, mask = outcomes(0.8), outcomes(0.4, seeds=2), first_correct(30)
    c = compare(a, b, settings(), mask)
    t = stats.paired_test(a, b, mask, alpha=0.05, confidence=0.95)
    assert (c.diff, c.ci_low, c.ci_high, c.p, c.n_images, c.n_seeds) == (t.diff, t.ci_low, t.ci_high, t.p, 30, 2)
    assert (c.se, c.mde, c.eq_low, c.eq_high, c.method) == (t.se, t.mde, t.eq_low, t.eq_high, t.method)
    assert (c.a_only, c.b_only) == stats.mcnemar_paired(a, b, mask)[1:]  # descriptive counts
    assert c.estimate == stats.Estimate(t.diff, t.ci_low, t.ci_high, 30, 2, t.se)
    assert c.ci_low <= c.eq_low <= c.diff <= c.eq_high <= c.ci_high
    assert c.row() == {"diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p, "n_images": 30,
                       "mde": c.mde}
    assert math.isnan(c.p_holm) and c.direction == 0  # decided only within its Holm family
    # the interval and the test agree: 0 is rejected exactly when p < alpha
    assert c.rejects(0.0) == (c.p < 0.05) and not c.rejects(c.diff)


def test_compare_of_the_same_seeds_pairs_the_seeds_and_can_be_one_sided() -> None:
    a = outcomes(0.7)
    b = a & outcomes(0.5)  # b's True images are a subset of a's: the difference is never negative
    c = compare(a, b, settings(), same_seeds=True, sided="greater")
    t = stats.paired_test(a, b, same_seeds=True, sided="greater")
    assert (c.diff, c.ci_low, c.ci_high, c.p, c.n_seeds) == (t.diff, t.ci_low, t.ci_high, t.p, 3)
    assert c.ci_high == 1.0 and 0 < c.ci_low < c.diff and c.b_only == 0 < c.a_only
    assert c.p == pytest.approx(compare(a, b, settings(), same_seeds=True).p / 2)
    # no gain at all: one-sided [low, 1] with low the one-sided Tango bound of the 40 images (no discordant pair:
    # no credit for the 3 seeds), not '+0.0 [-8.8, +8.8]'
    none = compare(a, a.copy(), settings(), same_seeds=True, sided="greater")
    assert none.diff == 0.0 and none.ci_high == 1.0 and none.p == 0.5
    assert stats.tango_interval(0, 0, 40, confidence=0.90)[0] == pytest.approx(none.ci_low, rel=1e-6)


def test_rejects_and_equivalent() -> None:
    c = Comparison(0.01, -0.02, 0.04, 0.5, 100, 3, 0, 0, eq_low=-0.015, eq_high=0.035)
    assert c.rejects(0.05) and c.rejects(-0.03) and not c.rejects(0.0)
    assert c.equivalent(0.05) and not c.equivalent(0.03)
    nan = compare(None, outcomes(0.5), settings())
    assert not nan.rejects(0.0) and not nan.equivalent(1.0) and nan.method == "not evaluated"


def test_a_missing_side_or_an_empty_mask_is_not_evaluated() -> None:
    for c in (compare(None, outcomes(0.5), settings()), compare(outcomes(0.5), outcomes(0.5), settings(),
                                                                np.zeros(N, bool))):
        assert c.n_images == 0 and math.isnan(c.diff) and math.isnan(c.p) and (c.a_only, c.b_only) == (0, 0)
        assert holm_family([c], 0.05)[0].verdict == "not evaluated"


def test_direction_needs_the_interval_to_exclude_zero_and_a_small_holm_p() -> None:
    assert direction(0.1, 0.3, 0.01, 0.05) == 1 and direction(-0.3, -0.1, 0.01, 0.05) == -1
    assert direction(0.1, 0.3, 0.2, 0.05) == 0  # significant CI, not after Holm
    assert direction(-0.1, 0.3, 0.001, 0.05) == 0  # CI straddles 0
    assert direction(0.1, 0.3, None, 0.05) == 1  # untested: the interval alone decides
    assert direction(math.nan, math.nan, 0.001, 0.05) == 0 and direction(0.1, 0.3, math.nan, 0.05) == 0


def test_holm_family_adjusts_over_the_family_and_assigns_verdicts() -> None:
    def tested(lo: float, hi: float, p: float) -> Comparison:
        return Comparison((lo + hi) / 2, lo, hi, p, 10, 3, 0, 0)

    family = [tested(0.1, 0.3, 0.01), tested(-0.4, -0.2, 0.012), tested(0.05, 0.2, 0.04), tested(-0.1, 0.1, 0.5),
              Comparison(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0)]
    decided = holm_family(family, 0.05)
    adjusted = stats.holm_adjust([c.p for c in family])
    np.testing.assert_array_equal([c.p_holm for c in decided], adjusted)  # NaN stays NaN, not counted
    assert adjusted[0] == pytest.approx(4 * 0.01)  # a family of four tested p-values
    assert [c.verdict for c in decided] == ["higher", "lower", "inconclusive", "inconclusive", "not evaluated"]
    assert decided[2].p_holm > 0.05 > decided[2].p  # nominally significant, not within the family


def test_comparison_table_is_one_holm_family_with_its_columns() -> None:
    rows = [({"arm": "a", "attack": "pgd", "eps": 0.1, "metric": m}, compare(outcomes(0.9), outcomes(0.2), settings()))
            for m in ("robust_accuracy", "attack_success_rate")]
    table = comparison_table(rows, COMPARISON_COLUMNS, 0.05)
    assert list(table.columns) == COMPARISON_COLUMNS and set(table["verdict"]) == {"higher"}
    np.testing.assert_array_equal(table["p_holm"], stats.holm_adjust(table["p"].to_numpy(dtype=float)))
    empty = comparison_table([], COMPARISON_COLUMNS, 0.05)
    assert empty.empty and list(empty.columns) == COMPARISON_COLUMNS and empty["p_holm"].dtype == float


def test_one_table_check_for_every_stage() -> None:
    good = arm_frame("baseline", first_correct(36))
    table = validate_results(good)
    assert (table["eps_key"] == table["eps"].round(9)).all()
    system = good.rename(columns={"variant": "system"})
    with pytest.raises(DataError, match="switching results: eps must be in \\[0,1\\] pixel units, got 8 for system"):
        validate_table(system.assign(eps=8.0), ("system", "seed", "attack", "eps", "image"),
                       what="switching results", stage="defences", name="system")
    with pytest.raises(DataError, match="hold image 0 twice for system 'baseline', seed 0"):
        validate_table(pd.concat([system, system.iloc[:1]]), ("system", "seed", "attack", "eps", "image"),
                       what="switching results", stage="defences", name="system")
    with pytest.raises(DataError, match="are empty; run the defences stage for at least one system"):
        validate_table(system.iloc[:0], ("system",), what="switching results", stage="defences", name="system")


def test_the_convergence_check_is_named_from_its_params() -> None:
    assert attack_name("pgd_strong") == strong_pgd_name() == "PGD ×10 steps, 5 restarts"  # params' defaults
    custom = ConvergenceConfig(steps_factor=20, restarts=3)
    assert attack_name("pgd_strong", custom) == "PGD ×20 steps, 3 restarts"


def test_common_correct_covers_the_images_of_its_own_attack_and_eps() -> None:

    from robustlora.analysis.compare import common_correct
    from robustlora.analysis.tables import ResultSet

    def rows(arm: str, attack: str, eps: float, n: int) -> pd.DataFrame:
        correct = np.arange(n) % 4 != 0
        return pd.DataFrame({"variant": arm, "seed": 0, "attack": attack, "eps": eps, "image": np.arange(n),
                             "label": 0, "clean_pred": 0, "adv_pred": 0, "clean_correct": correct,
                             "adv_correct": False, "clean_max_prob": 0.9, "adv_max_prob": 0.5})

    # PGD at 2/255 on the first 12 of the 40 images FGSM covers (attack.grid_images)
    rs = ResultSet(pd.concat([rows(a, k, e, n) for a in ("x", "y") for k, e, n in
                              (("fgsm", 2 / 255, 40), ("fgsm", 4 / 255, 40), ("pgd", 2 / 255, 12),
                               ("pgd", 4 / 255, 40))]))
    assert rs.n_images == 40
    assert len(common_correct(rs, "pgd", 2 / 255)) == 12 and common_correct(rs, "pgd", 2 / 255).sum() == 9
    assert len(common_correct(rs, "pgd", 4 / 255)) == 40
