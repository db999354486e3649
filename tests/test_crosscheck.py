"""Tests for robustlora.analysis.crosscheck (attacks beyond FGSM/PGD vs PGD) and .masking (gradient-masking checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from torch import nn

from robustlora import formatting
from robustlora.analysis import Settings, crosscheck, masking_checks
from robustlora.evaluation.suite import attack_suite
from rows import N, first_correct as first, model_rows
from tiny import Quantised, attack_cfg

SETTINGS = Settings(eps_grid=(4 / 255,), report_eps=4 / 255, arms={"baseline": "a"}, n_boot=200)


def pgd_rows(k: int = 20, eps: float = 4 / 255, variant: str = "a") -> pd.DataFrame:
    return pd.concat([model_rows(variant, s, "pgd", eps, first(k)) for s in (0, 1)], ignore_index=True)


def by_name(checks, name: str) -> list:
    return [c for c in checks if c.name == name]


# --- gradient masking checks -------------------------------------------------------------------------------------


def test_blackbox_beating_pgd_is_flagged_and_a_weaker_one_passes() -> None:
    masked = pd.concat([model_rows("a", s, "square", 4 / 255, first(30)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), masked), "blackbox_vs_pgd")
    assert check.status == "failed" and "20 vs 0 of 80" in check.detail and "gradient masking" in check.detail
    weaker = pd.concat([model_rows("a", s, "square", 4 / 255, first(12)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), weaker), "blackbox_vs_pgd")
    assert check.status == "passed"
    one_more = pd.concat([model_rows("a", s, "square", 4 / 255, first(21) if s == 0 else first(20)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), one_more), "blackbox_vs_pgd")
    assert check.status == "passed"  # one image ahead is within the slack


def test_transfer_beating_pgd_is_flagged() -> None:
    transfer = pd.concat([model_rows("a", s, "transfer_b", 4 / 255, first(28)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), transfer), "transfer_vs_pgd")
    assert check.status == "failed" and "PGD transfer from b" in check.detail


def test_autoattack_weaker_than_pgd_is_flagged() -> None:
    weaker = pd.concat([model_rows("a", s, "autoattack", 4 / 255, first(12)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), weaker), "autoattack_vs_pgd")
    assert check.status == "failed" and "16 vs 0" in check.detail
    stronger = pd.concat([model_rows("a", s, "autoattack", 4 / 255, first(25)) for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), stronger), "autoattack_vs_pgd")
    assert check.status == "passed"


def test_convergence_check() -> None:
    converged = pd.concat([pgd_rows(20), *(model_rows("a", s, "pgd_strong", 4 / 255, first(20)) for s in (0, 1))])
    check, = by_name(masking_checks(converged), "convergence")
    assert check.status == "passed"
    more = pd.concat([pgd_rows(20), *(model_rows("a", s, "pgd_strong", 4 / 255, first(23)) for s in (0, 1))])
    check, = by_name(masking_checks(more), "convergence")
    assert check.status == "failed" and "6 vs 0" in check.detail and "not converged" in check.detail
    two_more = pd.concat([pgd_rows(20), *(model_rows("a", s, "pgd_strong", 4 / 255, first(21)) for s in (0, 1))])
    check, = by_name(masking_checks(two_more), "convergence")
    assert check.status == "warning"  # 2 images ahead: more than the slack, p = 0.25


def test_autoattack_beating_pgd_fails_pgds_convergence() -> None:
    """Both directions: AutoAttack fooling images PGD left correct means PGD has not converged."""
    stronger = pd.concat([model_rows("a", s, "autoattack", 4 / 255, first(25)) for s in (0, 1)])
    checks = masking_checks(pgd_rows(20), stronger)
    converged, = by_name(checks, "pgd_vs_autoattack")
    assert converged.status == "failed" and "10 vs 0 of 80" in converged.detail
    assert "PGD had not converged" in converged.detail and converged.title.startswith("AutoAttack fools no more")
    assert by_name(checks, "autoattack_vs_pgd")[0].status == "passed"  # PGD does not beat AutoAttack
    one_more = pd.concat([model_rows("a", s, "autoattack", 4 / 255, first(21) if s == 0 else first(20))
                          for s in (0, 1)])
    check, = by_name(masking_checks(pgd_rows(20), one_more), "pgd_vs_autoattack")
    assert check.status == "passed"  # one pair ahead is within the slack


def test_min_informative_pairs_is_where_the_exact_test_can_first_reject() -> None:
    from robustlora.analysis.masking import min_informative_pairs

    assert [min_informative_pairs(a) for a in (0.05, 0.01, 0.0625, 0.1)] == [5, 7, 5, 4]
    for alpha in (0.05, 0.01, 0.1):
        k = min_informative_pairs(alpha)
        assert 0.5 ** k < alpha <= 0.5 ** (k - 1)
    with pytest.raises(ValueError, match="alpha"):
        min_informative_pairs(0)


def test_a_check_on_too_few_informative_pairs_is_not_informative_never_passed() -> None:
    pgd = pd.concat([model_rows("a", 0, "pgd", e, first(36)) for e in (4 / 255, 8 / 255)])
    # HopSkipJump on 2 images of the first seed: at most 2 pairs PGD left correct... here none
    hsj = pd.concat([model_rows("a", 0, "hopskipjump", e, first(2)).iloc[:2] for e in (4 / 255, 8 / 255)])
    check, = by_name(masking_checks(pgd, hsj), "blackbox_vs_pgd")
    assert check.status == "not informative" and "0 informative pairs, the test needs 5" in check.detail
    # on the last 4 images PGD left correct: 4 pairs, still one short of p < 0.05
    tail = pd.concat([model_rows("a", 0, "hopskipjump", 4 / 255, first(36)).iloc[36:]])
    check, = by_name(masking_checks(pgd, tail), "blackbox_vs_pgd")
    assert check.status == "not informative" and "4 informative pairs" in check.detail
    # 5 such pairs can reject: a pass means something
    five = pd.concat([model_rows("a", 0, "hopskipjump", 4 / 255, first(35)).iloc[35:]])
    pgd5 = model_rows("a", 0, "pgd", 4 / 255, first(35))
    assert by_name(masking_checks(pgd5, five), "blackbox_vs_pgd")[0].status == "passed"
    # an informative ε does not lift an uninformative one: the arm reads its worst cell
    wide = pd.concat([model_rows("a", 0, "hopskipjump", 4 / 255, first(10)),
                      model_rows("a", 0, "hopskipjump", 8 / 255, first(2)).iloc[:2]])
    check, = by_name(masking_checks(pd.concat([pgd5, model_rows("a", 0, "pgd", 8 / 255, first(36))]), wide),
                     "blackbox_vs_pgd")
    assert check.status == "not informative" and "other ε: ε = 4/255" in check.detail
    # the convergence check on 6 images of one seed, 2 of them left correct by PGD
    conv = pd.concat([model_rows("a", 0, "pgd", 4 / 255, first(4)), model_rows("a", 0, "pgd_strong", 4 / 255,
                                                                               first(4)).iloc[:6]])
    check, = by_name(masking_checks(conv), "convergence")
    assert check.status == "not informative" and "2 informative pairs" in check.detail


def test_a_large_eps_is_left_to_the_large_eps_check() -> None:
    pgd = model_rows("a", 0, "pgd", 1.0, first(N))
    square = model_rows("a", 0, "square", 1.0, first(N))
    checks = masking_checks(pgd, square)
    assert by_name(checks, "blackbox_vs_pgd") == [] and by_name(checks, "large_eps")[0].status == "passed"


def test_the_convergence_check_says_which_effort_it_measured() -> None:
    from robustlora.config import ConvergenceConfig

    more = pd.concat([pgd_rows(20), *(model_rows("a", s, "pgd_strong", 4 / 255, first(23)) for s in (0, 1))])
    default, = by_name(masking_checks(more), "convergence")
    assert default.title == "PGD with 10x the steps and 5 restarts fools no more images than PGD (within the noise)"
    assert default.detail.startswith("PGD ×10 steps, 5 restarts: ε = 4/255: 6 vs 0")
    custom, = by_name(masking_checks(more, convergence=ConvergenceConfig(steps_factor=20, restarts=3)), "convergence")
    assert custom.title.startswith("PGD with 20x the steps and 3 restarts fools no more images")
    assert custom.detail.startswith("PGD ×20 steps, 3 restarts: ")


def test_large_eps_must_reach_full_success_unless_the_budget_is_limited() -> None:
    full = pd.concat([model_rows("a", 0, "square", 1.0, first(N)), model_rows("a", 0, "zoo", 1.0, first(30))])
    pgd = pd.concat([model_rows("a", 0, "pgd", 1.0, first(N))])
    checks = {c.arm + c.detail.split(":")[0]: c for c in by_name(masking_checks(pgd, full), "large_eps")}
    assert checks["aSquare"].status == "passed"
    assert checks["aZOO"].status == "warning" and "75.0 %" in checks["aZOO"].detail
    short = model_rows("a", 0, "square", 1.0, first(30))
    check, = by_name(masking_checks(pgd, short), "large_eps")
    assert check.status == "failed"


def test_a_quantised_model_is_flagged(trained, suite_data) -> None:  # noqa: F811
    images, labels = suite_data
    cfg = attack_cfg(eps=(4 / 255,), sanity_eps=None, steps=2)
    masked = attack_suite(Quantised(trained), images[:16], labels[:16], cfg).assign(variant="q", seed=0)
    checks = masking_checks(masked)
    zero, = by_name(checks, "zero_gradients")
    assert zero.status == "failed" and "100.0 % of 16" in zero.detail
    assert by_name(checks, "outputs_are_logits")[0].status == "passed"
    sound = attack_suite(trained, images[:16], labels[:16], cfg).assign(variant="t", seed=0)
    assert {c.status for c in masking_checks(sound)} == {"passed"}
    softmax = attack_suite(nn.Sequential(trained, nn.Softmax(dim=1)), images[:16], labels[:16], cfg)
    logits, = by_name(masking_checks(softmax.assign(variant="s", seed=0)), "outputs_are_logits")
    assert logits.status == "failed" and "probabilities: 16" in logits.detail


# --- tables ------------------------------------------------------------------------------------------------------


def test_versus_pgd_pairs_the_attack_with_pgd_on_its_own_images() -> None:
    results = pd.concat([pgd_rows(20), pgd_rows(20, 8 / 255)])
    # AutoAttack on the first 30 images only: PGD is compared on those 30
    aa = pd.concat([model_rows("a", s, "autoattack", 4 / 255, first(25)).iloc[:30] for s in (0, 1)])
    table = crosscheck.versus_pgd(results, aa, SETTINGS)
    ra = table[table["metric"] == "robust_accuracy"].iloc[0]
    assert ra["n_images"] == 30 and ra["n_seeds"] == 2
    assert ra["value"] == pytest.approx(5 / 30) and ra["pgd"] == pytest.approx(10 / 30)
    assert ra["diff"] == pytest.approx(-5 / 30) and ra["diff_ci_low"] <= ra["diff"] <= ra["diff_ci_high"] < 0
    assert (ra["more_only"], ra["pgd_only"]) == (0, 5)  # images robust only under AA vs only under PGD
    asr = table[table["metric"] == "attack_success_rate"].iloc[0]
    assert asr["value"] == pytest.approx(25 / 30)
    # 5 of 30 images x 2 seeds fooled by AutoAttack only: significant, and the test agrees with its interval
    assert asr["p"] < 0.05 and asr["diff_ci_low"] > 0


def test_query_curves_are_monotone_and_end_at_the_success_rate() -> None:
    queries = np.where(first(20), np.arange(N) * 7 + 1.0, np.nan)
    extra = pd.concat([model_rows("a", 0, "square", 4 / 255, first(20), queries=queries),
                       model_rows("a", 0, "autoattack", 4 / 255, first(25))])
    curves = crosscheck.query_curves(extra)
    assert set(curves["attack"]) == {"square"}  # AutoAttack counts no queries
    curve = curves.sort_values("queries")
    assert curve["queries"].tolist() == [1, 2, 5, 10, 20, 50, 100, 200]  # the last step covers the max (134)
    assert (np.diff(curve["success_rate"]) >= 0).all()
    assert curve["success_rate"].iloc[-1] == pytest.approx(20 / N)
    assert curve.loc[curve["queries"] == 10, "success_rate"].item() == pytest.approx(2 / N)  # 1 and 8 queries
    assert (curve["ci_low"] <= curve["success_rate"]).all() and (curve["success_rate"] <= curve["ci_high"]).all()


def test_transfer_matrix_marks_the_surrogates_own_arm() -> None:
    extra = pd.concat([model_rows(t, s, f"transfer_{src}", 4 / 255, first(k))
                       for src, t, k in (("a", "a", 30), ("a", "b", 10), ("b", "a", 8), ("b", "b", 36))
                       for s in (0, 1)])
    m = crosscheck.transfer_matrix(extra, SETTINGS).set_index(["surrogate", "target"])
    assert m.loc[("a", "b"), "success_rate"] == pytest.approx(10 / N)
    assert bool(m.loc[("a", "a"), "white_box"]) and not bool(m.loc[("a", "b"), "white_box"])
    assert m.loc[("b", "a"), "ci_low"] < 8 / N < m.loc[("b", "a"), "ci_high"]


def test_attack_names() -> None:
    assert crosscheck.attack_name("transfer_pretrained") == "PGD transfer from pretrained"
    assert crosscheck.attack_name("hopskipjump") == "HopSkipJump"
    assert formatting.eps_text(1.0) == "unbounded" and formatting.eps_text(8 / 255) == "8/255"
    assert crosscheck.query_curves(model_rows("a", 0, "autoattack", 4 / 255, first(3))).empty  # no query counts


def test_row_cache_reuses_only_rows_with_the_same_fingerprint(tmp_path) -> None:
    from robustlora.evaluation.rowcache import RowCache, rows_fingerprint as fingerprint

    model_a, model_b = tmp_path / "a.pt", tmp_path / "b.pt"
    model_a.write_bytes(b"weights a")
    model_b.write_bytes(b"weights b")
    ids = np.arange(5)
    fp = fingerprint([model_a], {"queries": 100}, ids)
    assert fp == fingerprint([model_a], {"queries": 100}, ids)
    assert len({fp, fingerprint([model_b], {"queries": 100}, ids), fingerprint([model_a], {"queries": 200}, ids),
                fingerprint([model_a], {"queries": 100}, ids[:4]),
                fingerprint([model_a, model_b], {"queries": 100}, ids)}) == 5
    assert RowCache(tmp_path / "missing.parquet").get("a", fp) is None
    table = pd.concat([RowCache.tag(model_rows("a", 0, "square", 4 / 255, first(3)), fp),
                       RowCache.tag(model_rows("b", 0, "square", 4 / 255, first(5)), "other")])
    table.to_parquet(tmp_path / "square.parquet")
    cache = RowCache(tmp_path / "square.parquet")
    hit = cache.get("a seed 0", fp)
    assert hit is not None and set(hit["variant"]) == {"a"} and len(hit) == N and cache.reused == ["a seed 0"]
    assert cache.get("a seed 0", fingerprint([model_a], {"queries": 101}, ids)) is None
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert RowCache(tmp_path / "broken.parquet").get("a", fp) is None


def test_square_beating_pgd_on_a_quantised_model_is_flagged_as_masking(trained, suite_data) -> None:  # noqa: F811
    """End to end: PGD gets no gradient through an input quantiser, Square does not need one."""
    from robustlora.attacks.blackbox import blackbox_attack
    from robustlora.config import BlackboxConfig, SquareConfig

    images, labels = suite_data
    masked = Quantised(trained)
    eps = 16 / 255
    pgd = attack_suite(masked, images, labels, attack_cfg(eps=(eps,), sanity_eps=None, steps=5))
    cfg = BlackboxConfig(device="cpu", square=SquareConfig(n_images=48, queries=100, eps=[eps]))
    square = blackbox_attack("square", masked, images, labels, cfg)
    checks = masking_checks(pgd.assign(variant="q", seed=0), square.assign(variant="q", seed=0))
    check, = by_name(checks, "blackbox_vs_pgd")
    assert check.status == "failed", check.detail
    assert by_name(checks, "zero_gradients")[0].status == "failed"
    # the same model without the quantiser: PGD is at least as strong as Square
    pgd = attack_suite(trained, images, labels, attack_cfg(eps=(eps,), sanity_eps=None, steps=5))
    square = blackbox_attack("square", trained, images, labels, cfg)
    check, = by_name(masking_checks(pgd.assign(variant="t", seed=0), square.assign(variant="t", seed=0)),
                     "blackbox_vs_pgd")
    # PGD fooled every pair at this ε, so Square cannot be ahead: nothing to detect, never a pass
    assert check.status == "not informative" and "0 informative pairs" in check.detail, check.detail
