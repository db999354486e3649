"""Tests for the per-image worst case over attacks (robustlora.analysis.tables.worst_case_rows, with_worst_case,
beyond_pgd) on constructed rows, and on a tiny model whose PGD is deliberately weak: AutoAttack then beats PGD, the
both-direction masking check fails PGD's convergence, and the worst case takes AutoAttack's outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robustlora.analysis import Settings, arm_estimates, eps_key, masking_checks, result_set
from robustlora.analysis.summary import headline
from robustlora.analysis.tables import WORST_CASE, beyond_pgd, with_worst_case, worst_case_rows
from robustlora.errors import DataError
from rows import N, first_correct as first, model_rows

E4, E8 = 4 / 255, 8 / 255
SEEDS = (0, 1)


def rows(attack: str, fooled: np.ndarray, eps: float = E4, seeds=SEEDS, n: int = N, variant: str = "a",
         true_prob: float = 0.3) -> pd.DataFrame:
    """One attack's rows over seeds on the first ``n`` images, every image clean-correct."""
    return pd.concat([model_rows(variant, s, attack, eps, fooled).iloc[:n] for s in seeds],
                     ignore_index=True).assign(adv_true_prob=np.float32(true_prob))


def attack_stage() -> pd.DataFrame:
    """FGSM fools images 0..9, PGD 0..19, at 4/255 and 8/255 on 40 images and two seeds."""
    return pd.concat([rows(a, first(k), e) for a, k in (("fgsm", 10), ("pgd", 20)) for e in (E4, E8)],
                     ignore_index=True)


def fooled(*images: int) -> np.ndarray:
    out = np.zeros(N, bool)
    out[list(images)] = True
    return out


def test_an_image_is_robust_only_if_every_attack_that_ran_on_it_left_it_correct() -> None:
    extra = pd.concat([
        rows("autoattack", first(25), n=30, true_prob=0.05),  # fools 20..24 beyond PGD, on the first 30 images
        rows("square", fooled(3, 26), seeds=(0,), n=10),  # seed 0 only; image 26 is outside its 10 images
        rows("transfer_b", fooled(35), eps=E8),  # 8/255 only
        rows("hopskipjump", fooled(39), eps=0.3),  # an ε where PGD did not run: left out
    ], ignore_index=True)
    worst = worst_case_rows(attack_stage(), extra).set_index(["seed", "eps", "image"])
    assert set(worst["attack"]) == {WORST_CASE} and len(worst) == 2 * 2 * N  # seeds x PGD's ε x images
    at4 = worst.xs(E4, level="eps")
    assert (~at4["adv_correct"]).groupby("seed").sum().tolist() == [25, 25]  # PGD 20 + AutoAttack 5
    assert at4.loc[(0, 22), "decisive"] == "autoattack" and at4.loc[(0, 5), "decisive"] == "pgd"
    assert at4.loc[(0, 22), "adv_true_prob"] == pytest.approx(0.05)  # the probabilities of the fooling attack
    at8 = worst.xs(E8, level="eps")
    assert not at8.loc[(1, 35), "adv_correct"] and at8.loc[(1, 35), "decisive"] == "transfer_b"
    assert at8.loc[(0, 39), "adv_correct"]  # HopSkipJump's 0.3 is not on PGD's grid
    # the count of attacks per image: FGSM, PGD, AutoAttack on the first 30, Square on seed 0's first 10
    assert at4.loc[(0, 3), "n_attacks"] == 4 and at4.loc[(1, 3), "n_attacks"] == 3
    assert at4.loc[(0, 35), "n_attacks"] == 2
    # a robust image takes the lowest true-class probability: AutoAttack's 0.05 where it ran
    assert at4.loc[(0, 27), "adv_correct"] and at4.loc[(0, 27), "decisive"] == "autoattack"
    # clean columns are PGD's, and the same columns as the attack rows
    assert list(worst_case_rows(attack_stage(), extra).columns) == [*attack_stage().columns, "decisive", "n_attacks"]


def test_the_worst_case_is_one_more_attack_of_the_estimates_and_the_headline() -> None:
    extra = rows("autoattack", first(25), n=30)
    table = with_worst_case(attack_stage(), extra)
    assert set(table["attack"]) == {"fgsm", "pgd", WORST_CASE}
    assert len(with_worst_case(table, extra)) == len(table)  # earlier worst-case rows are replaced, not doubled
    settings = Settings(eps_grid=(E4, E8), report_eps=E4, arms={"baseline": "a"}, n_boot=200)
    arm_table = arm_estimates(result_set(table), settings)
    est = arm_table.set_index(["attack", "eps", "metric"])
    e = eps_key(E4)
    assert est.loc[(WORST_CASE, e, "robust_accuracy"), "value"] == pytest.approx(15 / N)
    assert est.loc[("pgd", e, "robust_accuracy"), "value"] == pytest.approx(20 / N)
    assert est.loc[(WORST_CASE, e, "attack_success_rate"), "value"] == pytest.approx(25 / N)
    top = headline(arm_table, None, {}, E4)["a"]
    assert top["worst_robust_acc"] == pytest.approx(15 / N) and top["pgd_robust_acc"] == pytest.approx(20 / N)
    assert top["worst_asr"] == pytest.approx(25 / N)
    assert top["worst_robust_acc_lo"] <= top["worst_robust_acc"] <= top["worst_robust_acc_hi"]


def test_beyond_pgd_counts_the_pairs_other_attacks_fooled_by_attack() -> None:
    extra = pd.concat([rows("autoattack", first(25), n=30), rows("square", fooled(3, 30), seeds=(0,))])
    counts = beyond_pgd(worst_case_rows(attack_stage(), extra))
    at4 = counts[counts["eps"] == eps_key(E4)].set_index("attack")
    assert at4.loc["autoattack", "pairs"] == 10 and at4.loc["square", "pairs"] == 1  # image 3: PGD fooled it too
    assert set(at4["of"]) == {2 * N}
    assert beyond_pgd(attack_stage()).empty  # no worst-case rows


def test_bad_inputs_are_refused_with_one_line() -> None:
    with pytest.raises(DataError, match="no PGD rows"):
        worst_case_rows(rows("fgsm", first(3)))
    with pytest.raises(DataError, match="adv_correct"):
        worst_case_rows(attack_stage(), rows("square", first(3)).drop(columns="adv_correct"))
    with pytest.raises(DataError, match="clean_pred") as info:
        worst_case_rows(attack_stage().drop(columns="clean_pred"))
    assert "\n" not in str(info.value)


def test_deliberately_weak_pgd_is_caught_both_ways_and_the_worst_case_is_autoattacks(trained, suite_data) -> None:
    """One PGD step of 0.05·ε barely moves from its random start; AutoAttack (APGD-CE) fools what it left."""
    from robustlora.attacks.autoattack import autoattack_suite
    from robustlora.config import AutoAttackConfig
    from robustlora.evaluation.suite import attack_suite
    from tiny import attack_cfg

    images, labels = suite_data
    aa_cfg = AutoAttackConfig(version="custom", attacks=("apgd-ce",), n_iter=10, n_target_classes=3,
                              square_queries=50, eps=(E4,), batch_size=48, seed=0, device="cpu")
    aa = autoattack_suite(trained, images, labels, aa_cfg, progress=False).assign(variant="t", seed=0)
    weak = attack_suite(trained, images, labels, attack_cfg(eps=(E4,), sanity_eps=None, steps=1, rel_step_size=0.05),
                        progress=False).assign(variant="t", seed=0)
    checks = {c.name: c for c in masking_checks(weak, aa)}
    assert checks["pgd_vs_autoattack"].status == "failed" and "not converged" in checks["pgd_vs_autoattack"].detail
    assert checks["autoattack_vs_pgd"].status == "passed"  # the other direction: AutoAttack is not the weak one
    worst = worst_case_rows(weak, aa)
    aa_robust = aa["clean_correct"] & aa["adv_correct"]
    pgd_robust = weak.loc[weak["attack"] == "pgd", ["clean_correct", "adv_correct"]].all(axis=1)
    assert (worst["clean_correct"] & worst["adv_correct"]).sum() == aa_robust.sum() < pgd_robust.sum()
    # a converged PGD (20 steps of 0.25·ε) passes the same check
    strong = attack_suite(trained, images, labels, attack_cfg(eps=(E4,), sanity_eps=None, steps=20),
                          progress=False).assign(variant="t", seed=0)
    check, = [c for c in masking_checks(strong, aa) if c.name == "pgd_vs_autoattack"]
    assert check.status == "passed", check.detail


def test_the_worst_case_section_shows_each_attack_beside_it_and_what_beat_pgd() -> None:
    from robustlora.analysis import analyse
    from robustlora.reporting.per_attack import attack_section, display_name

    extra = rows("autoattack", first(25), n=30)
    table = with_worst_case(attack_stage(), extra)
    settings = Settings(eps_grid=(E4, E8), report_eps=E4, arms={"baseline": "a"}, n_boot=200)
    md = attack_section(analyse(table, settings), WORST_CASE, settings, {},
                        beyond=beyond_pgd(worst_case_rows(attack_stage(), extra)))
    assert md.startswith("## Worst case over attacks") and display_name("autoattack") == "AutoAttack"
    assert "| Arm | Worst case | FGSM | PGD |" in md
    assert "| a | 37.5 [" in md and "50.0 [" in md  # worst case 15/40 beside PGD's 20/40
    assert "- a: 10 of 80 clean-correct seed·image pairs (AutoAttack 10)" in md
    pgd_md = attack_section(analyse(table, settings), "pgd", settings, {})
    assert pgd_md.startswith("## PGD") and "Worst case" not in pgd_md
