"""The attacks beyond FGSM and PGD, analysed against PGD on the same images: AutoAttack, black-box, transfer.

Each of these attacks runs on the first N images of the attack stage's subset, for every arm and training seed, so
each is compared with PGD *on its own images*, paired: robust accuracy and success rate with hierarchical-bootstrap
intervals (images and seeds), the paired difference to PGD with its interval and an exact McNemar p. The query
counts of the black-box attacks give success-rate-vs-budget curves; transfer gives a surrogate x target matrix per ε.
Shares are in [0, 1]; ε in [0, 1] pixel units. Carlini et al. 2019 read these as checks of the white-box numbers:
an attack that sees less (black-box, transfer) must not beat the one that sees everything (see
robustlora.analysis.masking). Attack names: robustlora.analysis.names.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.compare import compare
from robustlora.analysis.estimates import cell_estimate
from robustlora.analysis.names import BLACK_BOX, TRANSFER_PREFIX, WHITE_BOX, attack_name, transfer_source
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import ResultSet
from robustlora.formatting import eps_text, format_eps

__all__ = ["WHITE_BOX", "BLACK_BOX", "TRANSFER_PREFIX", "attack_name", "transfer_source", "subset", "versus_pgd",
           "query_curves", "transfer_matrix", "settings_lines", "eps_text"]


def subset(pgd_rows: pd.DataFrame, other: pd.DataFrame) -> ResultSet:
    """One ResultSet of ``other``'s rows and PGD's rows on the same images (per variant and seed)."""
    images = np.sort(other["image"].unique())
    models = other[["variant", "seed"]].drop_duplicates()
    keep = pgd_rows[pgd_rows["image"].isin(images)].merge(models, on=["variant", "seed"])  # same images and models
    return ResultSet(pd.concat([keep, other], ignore_index=True))


def _with_pgd(results: pd.DataFrame, extra: pd.DataFrame) -> Iterable[tuple[str, ResultSet]]:
    pgd_rows = results[results["attack"] == "pgd"]
    for attack, rows in extra.groupby("attack", sort=False):
        yield str(attack), subset(pgd_rows, rows)


def versus_pgd(results: pd.DataFrame, extra: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per attack x arm x ε (where PGD ran too): robust accuracy and success rate of the attack and of PGD on the
    attack's images, and the paired difference attack − PGD.

    Columns: attack, arm, eps, metric, n_images, n_seeds, value, ci_low, ci_high, pgd, pgd_ci_low, pgd_ci_high,
    diff, diff_ci_low, diff_ci_high, p, more_only, pgd_only. ``more_only``/``pgd_only``: images (majority vote over
    seeds; success rate: among the clean-correct ones) where only the attack / only PGD is ahead on the metric.
    """
    rows = []
    for attack, rs in _with_pgd(results, extra):
        for arm in rs.arms:
            for eps in rs.eps(attack):
                cell, pgd = rs.get(arm, attack, eps), rs.get(arm, "pgd", eps)
                if cell is None or pgd is None:
                    continue
                correct = cell.clean_correct.all(axis=0)
                for metric, a, b, mask in (("robust_accuracy", cell.robust, pgd.robust, None),
                                           ("attack_success_rate", cell.success, pgd.success, correct)):
                    est, ref = cell_estimate(cell, metric, settings), cell_estimate(pgd, metric, settings)
                    diff = compare(a, b, settings, mask)
                    rows.append({"attack": attack, "arm": arm, "eps": eps, "metric": metric,
                                 "n_images": cell.clean_correct.shape[1], "n_seeds": len(cell.seeds),
                                 "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                                 "pgd": ref.value, "pgd_ci_low": ref.ci_low, "pgd_ci_high": ref.ci_high,
                                 "diff": diff.diff, "diff_ci_low": diff.ci_low, "diff_ci_high": diff.ci_high,
                                 "p": diff.p, "more_only": diff.a_only, "pgd_only": diff.b_only})
    return pd.DataFrame(rows, columns=["attack", "arm", "eps", "metric", "n_images", "n_seeds", "value", "ci_low",
                                       "ci_high", "pgd", "pgd_ci_low", "pgd_ci_high", "diff", "diff_ci_low",
                                       "diff_ci_high", "p", "more_only", "pgd_only"])


def query_curves(extra: pd.DataFrame, budgets: Sequence[int] | None = None) -> pd.DataFrame:
    """Success rate vs query budget of the attacks that count queries, per attack x arm x ε.

    Success at budget q: the image was clean-correct and first fooled within q queries, pooled over seeds (a share
    of seed x image pairs), with a Wilson interval. ``budgets`` default: 1, 2, 5, 10, 20, 50, ... up to the largest
    count. Columns: attack, arm, eps, queries, success_rate, ci_low, ci_high, n.
    """
    counted = extra[extra["queries"].notna().groupby([extra["attack"]]).transform("any")] \
        if "queries" in extra.columns else extra.iloc[:0]
    rows = []
    # one budget axis per attack and arm: up to the most queries any of its successes took, at any ε
    tops = counted.groupby(["attack", "variant"], sort=False)["queries"].max().fillna(1.0)
    for (attack, arm, eps), g in counted.groupby(["attack", "variant", "eps"], sort=False):
        correct = g[g["clean_correct"]]
        n = len(correct)
        queries = correct["queries"].to_numpy(dtype=float)
        for q in budgets if budgets is not None else _budgets(float(tops[attack, arm])):
            k = int(np.sum(queries <= q))  # NaN (never fooled) compares False
            lo, hi = stats.wilson_interval(k, n) if n else (math.nan, math.nan)
            rows.append({"attack": attack, "arm": arm, "eps": float(eps), "queries": int(q),
                         "success_rate": k / n if n else math.nan, "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=["attack", "arm", "eps", "queries", "success_rate", "ci_low", "ci_high", "n"])


def _budgets(top: float) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including the first step >= top."""
    out, base = [], 1
    while True:
        for m in (1, 2, 5):
            out.append(m * base)
            if m * base >= top:
                return out
        base *= 10


def transfer_matrix(extra: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Transfer success per ε x surrogate x target arm: the share of the target's clean-correct images that PGD
    examples crafted on the surrogate fool, mean over the target's seeds with a hierarchical interval.

    ``white_box``: the surrogate's own model is among the target's (the surrogate arm's first seed): that entry
    mixes white-box and transfer. Columns: eps, surrogate, target, success_rate, ci_low, ci_high, n_images, n_seeds,
    white_box.
    """
    rows = []
    transfer = extra[extra["attack"].str.startswith(TRANSFER_PREFIX)]
    if transfer.empty:
        return pd.DataFrame(columns=["eps", "surrogate", "target", "success_rate", "ci_low", "ci_high", "n_images",
                                     "n_seeds", "white_box"])
    rs = ResultSet(transfer)
    order = {arm: i for i, arm in enumerate(rs.arms)}
    for attack in sorted(rs.attacks(), key=lambda a: order.get(transfer_source(a), len(order))):
        source = transfer_source(attack)
        for eps in rs.eps(attack):
            for arm in rs.arms:
                cell = rs.get(arm, attack, eps)
                if cell is None:
                    continue
                est = cell_estimate(cell, "attack_success_rate", settings)
                rows.append({"eps": eps, "surrogate": source, "target": arm, "success_rate": est.value,
                             "ci_low": est.ci_low, "ci_high": est.ci_high, "n_images": est.n_images,
                             "n_seeds": est.n_seeds, "white_box": arm == source})
    return pd.DataFrame(rows)


def settings_lines(params) -> dict[str, str]:
    """attack -> one line on what ran (budget, images), from a robustlora.config.Params."""
    aa, bb, tr = params.autoattack, params.blackbox, params.transfer
    grid = ", ".join(format_eps(e) for e in aa.eps) + (f" and {eps_text(aa.sanity_eps)}" if aa.sanity_eps else "")
    if aa.version == "standard":
        what = "version standard (APGD-CE, APGD-T, FAB-T, Square; the authors' settings)"
    else:
        what = (f"version custom: {', '.join(aa.attacks)}, {aa.n_iter} iterations, {aa.n_target_classes} target "
                f"classes" + (f", Square {aa.square_queries} queries" if "square" in aa.attacks else ""))
    sq, hsj, bd, zoo = bb.square, bb.hopskipjump, bb.boundary, bb.zoo
    sq_grid = ", ".join(format_eps(e) for e in sq.eps) + (f" and {eps_text(sq.sanity_eps)}" if sq.sanity_eps else "")
    minimal = "scored at every ε of attack.eps and unbounded"

    def models(c) -> str:
        return "every seed" if c.all_seeds else "each arm's first seed"

    surrogates = ", ".join(tr.surrogates or params.variants)
    return {
        "autoattack": f"{what}; ε {grid}; first {aa.n_images} images.",
        "square": f"L∞, {sq.queries} iterations per image (ART's max_iter; about 3 model queries each), p_init "
                  f"{sq.p_init:g}; ε {sq_grid}; first {sq.n_images} images.",
        "hopskipjump": f"L∞, untargeted, {hsj.max_iter} iterations (≤ {hsj.max_eval} evaluations for each gradient "
                       f"estimate); {minimal}; first {hsj.n_images} images, {models(hsj)}.",
        "boundary": f"L2, untargeted, {bd.max_iter} iterations, {bd.num_trial} trials per step; {minimal}; first "
                    f"{bd.n_images} images, {models(bd)}.",
        "zoo": f"L2, untargeted, {zoo.max_iter} iterations of {zoo.nb_parallel} coordinates; {minimal}; first "
               f"{zoo.n_images} images, {models(zoo)}.",
        "transfer_": f"PGD (attack.pgd) on the first seed of {surrogates}; ε "
                     f"{', '.join(format_eps(e) for e in tr.eps)}; first {tr.n_images} images.",
    }
