"""The study's numbers from the per-image attack results: per-arm estimates, paired comparisons, findings.

Input: the concatenated `results/attack/<variant>.parquet` files, one row per arm x seed x attack x ε x image (the
columns in `RESULT_COLUMNS`; ε in [0,1] pixel units). Every arm and seed is attacked on the same images, so all
comparisons are paired on images. Conventions (RobustBench):
- clean accuracy: share of attacked images classified correctly before the attack;
- robust accuracy: share classified correctly before AND after the attack;
- attack success rate: among a seed's clean-correct images, the share misclassified after the attack;
- certainty: mean max-softmax probability over all attacked images, before / after the attack.
An arm's value is the mean over its training seeds. Intervals: hierarchical bootstrap over seeds and images
(robustlora.stats), Wilson per seed, exact McNemar on per-image majority votes over seeds, Holm across a family.

Pure functions of DataFrames and small dataclasses: no files, no plotting, no markdown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.errors import DataError
from robustlora.formatting import (EPS_DECIMALS, MISSING, eps_key, format_eps, format_p, format_pct,  # noqa: F401
                                   format_points, p_phrase)

__all__ = ["RESULT_COLUMNS", "ATTACK_ORDER", "ATTACK_NAMES", "ROLES", "VERDICTS", "Settings", "Outcomes",
           "ResultSet", "Finding", "Analysis", "validate_results", "eps_key", "format_eps", "format_pct",
           "format_points", "format_p", "p_phrase", "cell_estimate", "arm_estimates", "seed_estimates",
           "common_correct", "paired_comparisons", "train_table", "findings", "findings_json", "analyse"]

RESULT_COLUMNS = ("variant", "seed", "attack", "eps", "image", "label", "clean_pred", "adv_pred", "clean_correct",
                  "adv_correct", "clean_max_prob", "adv_max_prob")
ATTACK_ORDER = ("fgsm", "pgd")
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD"}
ROLES = ("baseline", "lora_fc", "lora_fc_conv1")  # the paper's arms, mapped onto variants by report.arms
VERDICTS = ("supported", "contradicted", "inconclusive", "not evaluated")
METRICS = ("clean_accuracy", "robust_accuracy", "attack_success_rate", "certainty_clean", "certainty_adv")
PROPORTIONS = ("clean_accuracy", "robust_accuracy", "attack_success_rate")
PAPER_CLEAN = {"baseline": 0.90, "lora_fc": 0.96, "lora_fc_conv1": 0.98}  # the paper's Table 1, claim (a)


# ----------------------------------------------------------------------------- settings and formatting

@dataclass(frozen=True)
class Settings:
    """What the analysis needs from params: the ε grid (attack.eps) and the report section, as plain values."""

    eps_grid: tuple[float, ...]
    report_eps: float
    arms: Mapping[str, str | None]  # role (ROLES) -> variant name, None = absent
    reference_fgsm_asr: float = 0.65
    tolerance: float = 0.10
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    confidence: float = 0.95

    @property
    def baseline(self) -> str | None:
        return self.arms.get("baseline")


# ----------------------------------------------------------------------------- per-image results

def validate_results(results: pd.DataFrame) -> pd.DataFrame:
    """Check the per-image table (columns, ε range, one row per key); return a copy with an `eps_key` column."""
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise DataError(f"per-image results lack column(s) {', '.join(missing)}; expected the attack stage's "
                        f"columns {', '.join(RESULT_COLUMNS)}")
    if results.empty:
        raise DataError("per-image results are empty; run the attack stage for at least one variant")
    table = results.copy()
    table["variant"] = table["variant"].astype(str)
    table["attack"] = table["attack"].astype(str)
    table["eps"] = table["eps"].astype(float)
    bad = table[(table["eps"] < 0) | (table["eps"] > 1)]
    if not bad.empty:
        raise DataError(f"per-image results: eps must be in [0,1] pixel units, got {bad['eps'].iloc[0]:g} for "
                        f"variant {bad['variant'].iloc[0]!r}")
    table["eps_key"] = table["eps"].round(EPS_DECIMALS)
    key = ["variant", "seed", "attack", "eps_key", "image"]
    dupes = table[table.duplicated(key)]
    if not dupes.empty:
        d = dupes.iloc[0]
        raise DataError(f"per-image results hold image {d['image']} twice for variant {d['variant']!r}, seed "
                        f"{d['seed']}, {d['attack']} ε = {format_eps(d['eps'])}; expected one row per key")
    return table


@dataclass(frozen=True)
class Outcomes:
    """One arm at one attack and ε: (S, N) per-image arrays, S seeds and N images both sorted ascending."""

    arm: str
    attack: str
    eps: float
    seeds: tuple[int, ...]
    images: np.ndarray
    clean_correct: np.ndarray
    adv_correct: np.ndarray
    clean_max_prob: np.ndarray
    adv_max_prob: np.ndarray

    @property
    def robust(self) -> np.ndarray:
        """Correct before AND after the attack (RobustBench's robust accuracy)."""
        return self.clean_correct & self.adv_correct

    @property
    def success(self) -> np.ndarray:
        """Correct before and wrong after: a successful attack."""
        return self.clean_correct & ~self.adv_correct


class ResultSet:
    """The per-image results split into `Outcomes` cells, one per arm x attack x ε, all on the same images."""

    def __init__(self, results: pd.DataFrame) -> None:
        table = validate_results(results)
        self.arms: list[str] = list(dict.fromkeys(table["variant"]))  # first-seen order = params order
        self._cells: dict[tuple[str, str, float], Outcomes] = {}
        for (arm, attack, key), group in table.groupby(["variant", "attack", "eps_key"], sort=False):
            self._cells[(arm, attack, key)] = _pivot(str(arm), str(attack), float(key), group)
        first = next(iter(self._cells.values()))
        for cell in self._cells.values():
            if not np.array_equal(cell.images, first.images):
                raise DataError(f"{cell.arm} {cell.attack} ε = {format_eps(cell.eps)} covers other images than "
                                f"{first.arm} {first.attack} ε = {format_eps(first.eps)}; every arm and seed must "
                                "attack the same images (attack.n_images, attack.seed)")
        self.images: np.ndarray = first.images

    @property
    def n_images(self) -> int:
        return len(self.images)

    def attacks(self) -> list[str]:
        """Attacks present, FGSM and PGD first."""
        present = {a for _, a, _ in self._cells}
        return [a for a in ATTACK_ORDER if a in present] + sorted(present - set(ATTACK_ORDER))

    def eps(self, attack: str) -> list[float]:
        """ε evaluated for `attack`, ascending."""
        return sorted({e for _, a, e in self._cells if a == attack})

    def get(self, arm: str, attack: str, eps: float) -> Outcomes | None:
        return self._cells.get((arm, attack, eps_key(eps)))

    def seeds(self, arm: str) -> tuple[int, ...]:
        """The arm's training seeds (union over its cells)."""
        return tuple(sorted({s for c in self._cells.values() if c.arm == arm for s in c.seeds}))

    def clean(self, arm: str) -> Outcomes:
        """A cell of the arm, for its clean outcomes (identical in every cell: the `clean_consistent` check)."""
        cells = [c for c in self._cells.values() if c.arm == arm]
        if not cells:
            raise KeyError(f"arm {arm!r} has no results; arms: {', '.join(self.arms)}")
        order = {a: i for i, a in enumerate(self.attacks())}
        return min(cells, key=lambda c: (order[c.attack], c.eps))


def _pivot(arm: str, attack: str, eps: float, group: pd.DataFrame) -> Outcomes:
    """(S, N) arrays of one cell; every seed must cover every image of the cell."""
    arrays = {}
    for column in ("clean_correct", "adv_correct", "clean_max_prob", "adv_max_prob"):
        wide = group.pivot(index="seed", columns="image", values=column)
        if wide.isna().to_numpy().any():
            seed = wide.index[wide.isna().any(axis=1)][0]
            raise DataError(f"{arm} {attack} ε = {format_eps(eps)}: seed {seed} lacks "
                            f"{int(wide.loc[seed].isna().sum())} of the {wide.shape[1]} images the other seeds "
                            "attacked; rerun its attack stage")
        arrays[column] = wide
    seeds = tuple(int(s) for s in arrays["clean_correct"].index)
    images = arrays["clean_correct"].columns.to_numpy()
    return Outcomes(arm, attack, eps, seeds, images,
                    arrays["clean_correct"].to_numpy(dtype=bool), arrays["adv_correct"].to_numpy(dtype=bool),
                    arrays["clean_max_prob"].to_numpy(dtype=np.float64),
                    arrays["adv_max_prob"].to_numpy(dtype=np.float64))


# ----------------------------------------------------------------------------- per-arm estimates

def _success_values(cell: Outcomes) -> np.ndarray | None:
    """(S', N) values whose row means are each seed's success rate over its own clean-correct images.

    Delta-method linearisation of the ratio r_s = Σ success / Σ correct: v_si = r_s + correct_si (success_si - r_s)
    N / n_s. Row means are exactly r_s, and resampling images reproduces the ratio's variance to first order, so
    stats.hierarchical_mean gives the hierarchical interval of a per-seed ratio. Seeds with no correct image drop out.
    """
    correct, success = cell.clean_correct.astype(float), cell.success.astype(float)
    n = correct.sum(axis=1)
    keep = n > 0
    if not keep.any():
        return None
    correct, success, n = correct[keep], success[keep], n[keep]
    rate = success.sum(axis=1) / n
    return rate[:, None] + correct * (success - rate[:, None]) * correct.shape[1] / n[:, None]


def _metric_values(cell: Outcomes, metric: str) -> np.ndarray | None:
    if metric == "attack_success_rate":
        return _success_values(cell)
    return {"clean_accuracy": cell.clean_correct, "robust_accuracy": cell.robust,
            "certainty_clean": cell.clean_max_prob, "certainty_adv": cell.adv_max_prob}[metric].astype(float)


def _per_seed(cell: Outcomes, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed (value, successes, n); successes/n are NaN for certainties (not proportions)."""
    n_img = cell.clean_correct.shape[1]
    if metric == "attack_success_rate":
        k, n = cell.success.sum(axis=1).astype(float), cell.clean_correct.sum(axis=1).astype(float)
    elif metric in PROPORTIONS:
        outcome = cell.clean_correct if metric == "clean_accuracy" else cell.robust
        k, n = outcome.sum(axis=1).astype(float), np.full(len(cell.seeds), float(n_img))
    else:
        values = cell.clean_max_prob if metric == "certainty_clean" else cell.adv_max_prob
        nan = np.full(len(cell.seeds), np.nan)
        return values.mean(axis=1), nan, nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return k / n, k, n


def _cells(rs: ResultSet, eps_grid: Iterable[float]) -> list[Outcomes]:
    """The grid's cells in report order: attack, ε, arm."""
    out = []
    for attack in rs.attacks():
        for eps in sorted(eps_key(e) for e in eps_grid):
            out += [c for arm in rs.arms if (c := rs.get(arm, attack, eps)) is not None]
    return out


def cell_estimate(cell: Outcomes, metric: str, settings: Settings) -> stats.Estimate:
    """Mean over seeds of `metric` with its hierarchical-bootstrap CI (NaN when no seed has a value).

    For shares the CI is widened to contain the Wilson interval of the mean share on the smallest per-seed n: when
    every image and seed agree (0 % or 100 %) the bootstrap has nothing to resample, and Wilson never has zero width.
    """
    values = _metric_values(cell, metric)
    if values is None:
        return stats.Estimate(math.nan, math.nan, math.nan, 0, 0)
    est = stats.hierarchical_mean(values, n_boot=settings.n_boot, seed=settings.seed, confidence=settings.confidence)
    if metric not in PROPORTIONS:
        return est
    n = _per_seed(cell, metric)[2]
    n_min = int(n[n > 0].min())
    w_lo, w_hi = stats.wilson_interval(est.value * n_min, n_min, settings.confidence)
    # clip: the linearised ratio of a success rate may overshoot [0,1] by rounding-size amounts
    lo, hi = float(np.clip(min(est.ci_low, w_lo), 0, 1)), float(np.clip(max(est.ci_high, w_hi), 0, 1))
    return stats.Estimate(est.value, lo, hi, est.n_images, est.n_seeds)


def arm_estimates(rs: ResultSet, settings: Settings) -> pd.DataFrame:
    """Per arm x attack x ε (grid only) x metric: `cell_estimate` and the spread of the per-seed values.

    Columns: arm, attack, eps, metric, value, ci_low, ci_high, n_images, n_seeds, seed_std, seed_min, seed_max.
    Shares in [0,1]; certainties are mean probabilities. A success rate with no clean-correct image is NaN.
    """
    rows = []
    for cell in _cells(rs, settings.eps_grid):
        for metric in METRICS:
            est = cell_estimate(cell, metric, settings)
            per_seed = _per_seed(cell, metric)[0]
            per_seed = per_seed[np.isfinite(per_seed)]
            spread = stats.seed_summary(per_seed) if per_seed.size else None
            rows.append({"arm": cell.arm, "attack": cell.attack, "eps": cell.eps, "metric": metric,
                         "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                         "n_images": cell.clean_correct.shape[1], "n_seeds": est.n_seeds,
                         "seed_std": spread["std"] if spread else math.nan,
                         "seed_min": spread["min"] if spread else math.nan,
                         "seed_max": spread["max"] if spread else math.nan})
    return pd.DataFrame(rows, columns=["arm", "attack", "eps", "metric", "value", "ci_low", "ci_high", "n_images",
                                       "n_seeds", "seed_std", "seed_min", "seed_max"])


def seed_estimates(rs: ResultSet, settings: Settings) -> pd.DataFrame:
    """Per arm x seed x attack x ε (grid) x metric: the seed's value, Wilson interval (proportions), successes, n.

    Columns: arm, seed, attack, eps, metric, value, ci_low, ci_high, successes, n. Certainties get NaN bounds.
    """
    rows = []
    for cell in _cells(rs, settings.eps_grid):
        for metric in METRICS:
            value, k, n = _per_seed(cell, metric)
            for i, seed in enumerate(cell.seeds):
                lo, hi = ((math.nan, math.nan) if not np.isfinite(n[i])
                          else stats.wilson_interval(int(k[i]), int(n[i]), settings.confidence))
                rows.append({"arm": cell.arm, "seed": seed, "attack": cell.attack, "eps": cell.eps,
                             "metric": metric, "value": float(value[i]), "ci_low": lo, "ci_high": hi,
                             "successes": k[i], "n": n[i]})
    return pd.DataFrame(rows, columns=["arm", "seed", "attack", "eps", "metric", "value", "ci_low", "ci_high",
                                       "successes", "n"])


# ----------------------------------------------------------------------------- paired comparisons

def common_correct(rs: ResultSet, attack: str, eps: float, arms: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool: images that every arm (default: all) classifies correctly in every seed, at this attack and ε."""
    mask = np.ones(rs.n_images, dtype=bool)
    for arm in arms if arms is not None else rs.arms:
        cell = rs.get(arm, attack, eps)
        if cell is not None:
            mask &= cell.clean_correct.all(axis=0)
    return mask


def _direction(ci_low: float, ci_high: float, p_holm: float | None, alpha: float) -> int:
    """+1 / -1 when the CI excludes 0 on that side and (when tested) the Holm-adjusted p < alpha; else 0."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return 0
    significant = p_holm is None or (np.isfinite(p_holm) and p_holm < alpha)
    if ci_low > 0 and significant:
        return 1
    if ci_high < 0 and significant:
        return -1
    return 0


def paired_comparisons(rs: ResultSet, settings: Settings, arms: Sequence[str] | None = None,
                       common_arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Every arm (default: all but the baseline) minus the baseline, per attack x ε of the grid, paired on images.

    metric `robust_accuracy`: over all attacked images; `attack_success_rate`: on the common-correct images of
    `common_arms` (default: every arm). CI: stats.paired_difference (images and seeds); p: exact McNemar on the
    per-image majority votes; p_holm: ONE Holm correction over the whole table. verdict: 'higher' / 'lower' (CI
    excludes 0 and p_holm < alpha) or 'inconclusive'; 'not evaluated' when no image is left.
    Columns: arm, attack, eps, metric, diff, ci_low, ci_high, p, p_holm, n_images, verdict.
    """
    columns = ["arm", "attack", "eps", "metric", "diff", "ci_low", "ci_high", "p", "p_holm", "n_images", "verdict"]
    base_arm = settings.baseline
    if base_arm is None or base_arm not in rs.arms:
        return pd.DataFrame(columns=columns)
    arms = [a for a in (arms if arms is not None else rs.arms) if a != base_arm]
    rows = []
    for attack in rs.attacks():
        for eps in sorted(eps_key(e) for e in settings.eps_grid):
            base = rs.get(base_arm, attack, eps)
            if base is None:
                continue
            mask = common_correct(rs, attack, eps, common_arms)
            for arm in arms:
                cell = rs.get(arm, attack, eps)
                if cell is None:
                    continue
                for metric, a, b, m in (("robust_accuracy", cell.robust, base.robust, None),
                                        ("attack_success_rate", cell.success, base.success, mask)):
                    est = stats.paired_difference(a, b, m, n_boot=settings.n_boot, seed=settings.seed,
                                                  confidence=settings.confidence)
                    p = stats.mcnemar_paired(a, b, m)[0] if est.n_images else math.nan
                    rows.append({"arm": arm, "attack": attack, "eps": eps, "metric": metric, "diff": est.value,
                                 "ci_low": est.ci_low, "ci_high": est.ci_high, "p": p, "n_images": est.n_images})
    table = pd.DataFrame(rows, columns=[c for c in columns if c not in ("p_holm", "verdict")])
    table["p_holm"] = stats.holm_adjust(table["p"].to_numpy(dtype=float)) if len(table) else []
    table["verdict"] = [
        "not evaluated" if r.n_images == 0
        else {1: "higher", -1: "lower", 0: "inconclusive"}[_direction(r.ci_low, r.ci_high, r.p_holm, settings.alpha)]
        for r in table.itertuples()]
    return table[columns]


# ----------------------------------------------------------------------------- training summary

def train_table(train_metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per arm, from metrics/train/<arm>.json: val/holdout accuracy over seeds, parameters, best epochs.

    Columns: arm, n_seeds, val_mean, val_std, holdout_mean, holdout_std, trainable_params, total_params,
    best_epochs, epochs_run, max_epochs (the last three: tuples in seed order; None where a seed lacks the key).
    """
    rows = []
    for arm, metrics in train_metrics.items():
        seeds = metrics.get("seeds") or {}
        if not isinstance(seeds, Mapping) or not seeds:
            raise DataError(f"train metrics of {arm!r} have no 'seeds' entries; rerun train@{arm}")
        ordered = [seeds[k] for k in sorted(seeds, key=int)]

        def summary(key: str) -> dict[str, float]:
            values = [float(s[key]) for s in ordered if s.get(key) is not None]
            return stats.seed_summary(values) if values else {"mean": math.nan, "std": math.nan}

        val, holdout = summary("val_accuracy"), summary("holdout_accuracy")
        rows.append({"arm": arm, "n_seeds": len(ordered), "val_mean": val["mean"], "val_std": val["std"],
                     "holdout_mean": holdout["mean"], "holdout_std": holdout["std"],
                     "trainable_params": ordered[0].get("trainable_params"),
                     "total_params": ordered[0].get("total_params"),
                     "best_epochs": tuple(s.get("best_epoch") for s in ordered),
                     "epochs_run": tuple(s.get("epochs_run") for s in ordered),
                     "max_epochs": tuple(s.get("max_epochs") for s in ordered)})
    return pd.DataFrame(rows, columns=["arm", "n_seeds", "val_mean", "val_std", "holdout_mean", "holdout_std",
                                       "trainable_params", "total_params", "best_epochs", "epochs_run",
                                       "max_epochs"])


# ----------------------------------------------------------------------------- findings

@dataclass(frozen=True)
class Finding:
    """One claim of the study, decided from the data. Shares and differences in [0,1]; p None when untested."""

    claim: str  # 'a', 'b', 'c1', 'c2', 'd'
    key: str  # unique, e.g. 'a/lora_fc', 'c1/pgd'
    statement: str  # what the paper claims, in this row's terms
    verdict: str  # one of VERDICTS
    effect: float
    ci_low: float
    ci_high: float
    p: float | None
    p_holm: float | None
    n_images: int
    n_seeds: int
    test: str
    detail: str  # the measured numbers behind the effect, or why the claim was not evaluated
    sentence: str  # the whole finding in one line


@dataclass(frozen=True)
class _Raw:
    """A finding before the family's Holm correction decides its verdict."""

    claim: str
    key: str
    statement: str
    estimate: stats.Estimate | None  # None: not evaluated
    p: float | None
    expect: int  # +1: the claim says the effect is > 0; -1: < 0; 0: equivalence band (claim b)
    test: str
    detail: str  # the data half of the sentence, or why it was not evaluated


def _arm_label(settings: Settings, role: str) -> str:
    return settings.arms.get(role) or role


def _present(rs: ResultSet, settings: Settings, *roles: str) -> str | None:
    """None when every role names an arm with results, else the reason it is not evaluated."""
    for role in roles:
        arm = settings.arms.get(role)
        if arm is None:
            return f"report.arms.{role} is null"
        if arm not in rs.arms:
            return f"arm {arm!r} (report.arms.{role}) has no attack results"
    return None


def _claim_a(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    for role in ("lora_fc", "lora_fc_conv1"):
        arm, base = _arm_label(settings, role), _arm_label(settings, "baseline")
        statement = (f"{arm} reaches higher clean accuracy than {base} (paper: {100 * PAPER_CLEAN[role]:.0f} vs "
                     f"{100 * PAPER_CLEAN['baseline']:.0f} %)")
        test = "paired bootstrap difference; exact McNemar on clean correctness"
        reason = _present(rs, settings, role, "baseline")
        if reason:
            out.append(_Raw("a", f"a/{role}", statement, None, None, 1, test, reason))
            continue
        a, b = rs.clean(arm).clean_correct, rs.clean(base).clean_correct
        est = stats.paired_difference(a, b, n_boot=settings.n_boot, seed=settings.seed,
                                      confidence=settings.confidence)
        p = stats.mcnemar_paired(a, b)[0]
        detail = (f"clean accuracy {format_pct(a.mean())} % vs {format_pct(b.mean())} % on the {est.n_images} "
                  "attacked images")
        out.append(_Raw("a", f"a/{role}", statement, est, p, 1, test, detail))
    return out


def _claim_b(rs: ResultSet, settings: Settings) -> list[_Raw]:
    ref, tol = settings.reference_fgsm_asr, settings.tolerance
    base, eps = _arm_label(settings, "baseline"), settings.report_eps
    statement = (f"{base}'s FGSM success rate at ε = {format_eps(eps)} is about {format_pct(ref)} % "
                 f"(equivalence band {format_pct(ref - tol)}–{format_pct(ref + tol)} %)")
    test = "hierarchical bootstrap CI inside / outside the equivalence band"
    reason = _present(rs, settings, "baseline")
    cell = rs.get(base, "fgsm", eps) if reason is None else None
    if reason is None and cell is None:
        reason = f"no FGSM results at ε = {format_eps(eps)} for {base}"
    est = cell_estimate(cell, "attack_success_rate", settings) if cell is not None else None
    if reason is None and not est.n_seeds:
        reason = f"{base} classifies no attacked image correctly"
    if reason:
        return [_Raw("b", "b", statement, None, None, 0, test, reason)]
    detail = (f"FGSM success {format_pct(est.value)} % [{format_pct(est.ci_low)}, {format_pct(est.ci_high)}] over "
              f"each seed's clean-correct images ({est.n_seeds} seeds)")
    return [_Raw("b", "b", statement, est, None, 0, test, detail)]


def _claim_c(rs: ResultSet, settings: Settings, common_arms: Sequence[str] | None) -> list[_Raw]:
    out = []
    eps = settings.report_eps
    for claim, role, ref_role, how in (("c1", "lora_fc", "baseline", "marginally"),
                                       ("c2", "lora_fc_conv1", "lora_fc", "further")):
        arm, ref = _arm_label(settings, role), _arm_label(settings, ref_role)
        for attack in ("fgsm", "pgd"):
            statement = (f"{arm} lowers the {ATTACK_NAMES[attack]} success rate at ε = {format_eps(eps)} {how} "
                         f"(vs {ref})")
            test = "paired bootstrap difference on common-correct images; exact McNemar"
            key = f"{claim}/{attack}"
            reason = _present(rs, settings, role, ref_role)
            a = rs.get(arm, attack, eps) if reason is None else None
            b = rs.get(ref, attack, eps) if reason is None else None
            if reason is None and (a is None or b is None):
                reason = f"no {ATTACK_NAMES[attack]} results at ε = {format_eps(eps)} for {arm if a is None else ref}"
            if reason:
                out.append(_Raw(claim, key, statement, None, None, -1, test, reason))
                continue
            mask = common_correct(rs, attack, eps, common_arms)
            if not mask.any():
                out.append(_Raw(claim, key, statement, None, None, -1, test,
                                "no image is classified correctly by every arm in every seed"))
                continue
            est = stats.paired_difference(a.success, b.success, mask, n_boot=settings.n_boot, seed=settings.seed,
                                          confidence=settings.confidence)
            p = stats.mcnemar_paired(a.success, b.success, mask)[0]
            detail = (f"success {format_pct(a.success[:, mask].mean())} % vs {format_pct(b.success[:, mask].mean())} %"
                      f" on the {est.n_images} common-correct images (correct in every seed of every adapted arm)")
            out.append(_Raw(claim, key, statement, est, p, -1, test, detail))
    return out


def _claim_d(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    eps = settings.report_eps
    arms = list(dict.fromkeys(a for role in ROLES if (a := settings.arms.get(role)) is not None))
    for arm in arms:
        for attack in ("fgsm", "pgd"):
            statement = f"{arm}'s certainty drops under {ATTACK_NAMES[attack]} at ε = {format_eps(eps)}"
            test = "hierarchical bootstrap CI of the within-arm paired drop (no test)"
            key = f"d/{arm}/{attack}"
            cell = rs.get(arm, attack, eps)
            if cell is None:
                reason = (f"arm {arm!r} has no attack results" if arm not in rs.arms
                          else f"no {ATTACK_NAMES[attack]} results at ε = {format_eps(eps)}")
                out.append(_Raw("d", key, statement, None, None, 1, test, reason))
                continue
            # same seed, same image: the pairing is exact, so the difference matrix is bootstrapped directly
            drop = cell.clean_max_prob - cell.adv_max_prob
            est = stats.hierarchical_mean(drop, n_boot=settings.n_boot, seed=settings.seed,
                                          confidence=settings.confidence)
            detail = (f"mean max-softmax probability {format_pct(cell.clean_max_prob.mean())} % before, "
                      f"{format_pct(cell.adv_max_prob.mean())} % after the attack")
            out.append(_Raw("d", key, statement, est, None, 1, test, detail))
    return out


def _decide(raw: _Raw, p_holm: float | None, settings: Settings) -> str:
    est = raw.estimate
    if est is None:
        return "not evaluated"
    if raw.expect == 0:  # equivalence: the whole CI inside the band, or entirely outside it
        lo, hi = settings.reference_fgsm_asr - settings.tolerance, settings.reference_fgsm_asr + settings.tolerance
        if not (np.isfinite(est.ci_low) and np.isfinite(est.ci_high)):
            return "inconclusive"
        if lo <= est.ci_low and est.ci_high <= hi:
            return "supported"
        if est.ci_high < lo or est.ci_low > hi:
            return "contradicted"
        return "inconclusive"
    direction = _direction(est.ci_low, est.ci_high, p_holm, settings.alpha)
    if direction == 0:
        return "inconclusive"
    return "supported" if direction == raw.expect else "contradicted"


def _sentence(raw: _Raw, verdict: str, p_holm: float | None) -> str:
    est = raw.estimate
    if est is None:
        return f"{raw.statement}: not evaluated — {raw.detail}."
    if raw.claim == "b":
        return f"{raw.statement}: {verdict} — {raw.detail}."
    effect = (f"{'drop' if raw.claim == 'd' else 'difference'} {format_points(est.value)} points "
              f"[{format_points(est.ci_low)}, {format_points(est.ci_high)}]")
    tested = f"; {p_phrase('McNemar p', raw.p)}, {p_phrase('Holm p', p_holm)}" if raw.p is not None else ""
    return f"{raw.statement}: {verdict} — {raw.detail}; {effect}{tested} ({est.n_seeds} seeds)."


def findings(rs: ResultSet, settings: Settings, common_arms: Sequence[str] | None = None) -> list[Finding]:
    """The study's claims (a)-(d) decided from the data; one Holm correction over every finding with a p-value.

    Verdicts: (a) and (c) 'supported' when the CI lies on the claimed side of 0 and the Holm p < alpha,
    'contradicted' when on the other side with Holm p < alpha; (b) equivalence band reference ± tolerance;
    (d) CI above 0; otherwise 'inconclusive'; 'not evaluated' when a named arm or cell is absent.
    """
    raws = (_claim_a(rs, settings) + _claim_b(rs, settings) + _claim_c(rs, settings, common_arms)
            + _claim_d(rs, settings))
    pvalues = np.array([math.nan if r.p is None else r.p for r in raws], dtype=float)
    adjusted = stats.holm_adjust(pvalues)
    out = []
    for raw, p_adj in zip(raws, adjusted):
        p_holm = None if raw.p is None else float(p_adj)
        verdict = _decide(raw, p_holm, settings)
        est = raw.estimate or stats.Estimate(math.nan, math.nan, math.nan, 0, 0)
        out.append(Finding(raw.claim, raw.key, raw.statement, verdict, est.value, est.ci_low, est.ci_high,
                           raw.p, p_holm, est.n_images, est.n_seeds, raw.test, raw.detail,
                           _sentence(raw, verdict, p_holm)))
    return out


def findings_json(found: Sequence[Finding], settings: Settings, common_sizes: Mapping[str, Mapping[str, int]],
                  check_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A JSON-able dict of the findings, the settings that decided them and the common-correct set sizes."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON has no NaN
        return value

    return {
        "settings": {"report_eps": settings.report_eps, "report_eps_label": format_eps(settings.report_eps),
                     "arms": dict(settings.arms), "reference_fgsm_asr": settings.reference_fgsm_asr,
                     "tolerance": settings.tolerance, "alpha": settings.alpha, "n_boot": settings.n_boot,
                     "seed": settings.seed, "confidence": settings.confidence},
        "verdicts": {f.key: f.verdict for f in found},
        "findings": [{k: clean(v) for k, v in asdict(f).items()} for f in found],
        "common_correct_images": {a: dict(v) for a, v in common_sizes.items()},
        "checks": dict(check_counts or {}),
    }


# ----------------------------------------------------------------------------- everything at once

@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed once."""

    arms: list[str]
    arm_table: pd.DataFrame
    seed_table: pd.DataFrame
    comparisons: pd.DataFrame
    findings: list[Finding]
    common_sizes: dict[str, dict[str, int]]  # attack -> ε label (k/255) -> number of common-correct images
    n_images: int
    seeds: dict[str, tuple[int, ...]]


def analyse(results: pd.DataFrame | ResultSet, settings: Settings,
            common_arms: Sequence[str] | None = None) -> Analysis:
    """Per-arm estimates, paired comparisons vs the baseline and findings from the per-image results."""
    rs = results if isinstance(results, ResultSet) else ResultSet(results)
    sizes = {attack: {format_eps(e): int(common_correct(rs, attack, e, common_arms).sum())
                      for e in sorted(eps_key(x) for x in settings.eps_grid) if e in rs.eps(attack)}
             for attack in rs.attacks()}
    return Analysis(arms=list(rs.arms), arm_table=arm_estimates(rs, settings), seed_table=seed_estimates(rs, settings),
                    comparisons=paired_comparisons(rs, settings, common_arms=common_arms),
                    findings=findings(rs, settings, common_arms), common_sizes=sizes, n_images=rs.n_images,
                    seeds={arm: rs.seeds(arm) for arm in rs.arms})


# ----------------------------------------------------------------------------- the headline figures of one run

HEADLINE = ("clean_acc", "pgd_robust_acc", "pgd_asr", "fgsm_asr", "autoattack_robust_acc")


def headline(arm_table: pd.DataFrame, versus: pd.DataFrame | None, train_metrics: Mapping[str, Any],
             report_eps: float) -> dict[str, Any]:
    """Per arm, the figures a sweep compares, at ``report_eps``, each with its 95 % interval (``_lo``, ``_hi``).

    From the report's own estimates (hierarchical bootstrap over seeds and images): clean accuracy on the attacked
    images, PGD robust accuracy and success rate, FGSM success rate, and AutoAttack's robust accuracy on its subset
    (``autoattack_n_images``); plus the val accuracy (mean ± sd over seeds), trainable parameters and seeds. Flat
    keys, so ``dvc exp show`` / ``dvc metrics diff`` print ``lora_fc.pgd_robust_acc``; NaN values are left out.
    """
    eps = eps_key(report_eps)
    sources = {"clean_acc": ("pgd", "clean_accuracy"), "pgd_robust_acc": ("pgd", "robust_accuracy"),
               "pgd_asr": ("pgd", "attack_success_rate"), "fgsm_asr": ("fgsm", "attack_success_rate")}
    out: dict[str, Any] = {"eps_255": round(report_eps * 255, 4)}
    at_eps = arm_table[arm_table["eps"].map(eps_key) == eps]
    aa = (versus[(versus["attack"] == "autoattack") & (versus["metric"] == "robust_accuracy")
                 & (versus["eps"].map(eps_key) == eps)] if versus is not None and len(versus) else None)
    for arm in dict.fromkeys(arm_table["arm"]):
        row: dict[str, float] = {}
        for name, (attack, metric) in sources.items():
            hit = at_eps[(at_eps["arm"] == arm) & (at_eps["attack"] == attack) & (at_eps["metric"] == metric)]
            if len(hit):
                row.update(_with_interval(name, hit.iloc[0]))
                if name == "clean_acc":
                    row["n_images"], row["n_seeds"] = int(hit.iloc[0]["n_images"]), int(hit.iloc[0]["n_seeds"])
        if aa is not None and len(hit := aa[aa["arm"] == arm]):
            row.update(_with_interval("autoattack_robust_acc", hit.iloc[0]))
            row["autoattack_n_images"] = int(hit.iloc[0]["n_images"])
        train = (train_metrics.get(arm) or {})
        for key, value in (("val_acc", (train.get("mean") or {}).get("val_accuracy")),
                           ("val_acc_std", (train.get("std") or {}).get("val_accuracy")),
                           ("trainable_params", (train.get("mean") or {}).get("trainable_params"))):
            if value is not None and math.isfinite(float(value)):
                row[key] = int(value) if key == "trainable_params" else round(float(value), 6)
        out[arm] = row
    return out


def _with_interval(name: str, row: pd.Series) -> dict[str, float]:
    values = {name: row["value"], f"{name}_lo": row["ci_low"], f"{name}_hi": row["ci_high"]}
    return {k: round(float(v), 6) for k, v in values.items() if v is not None and math.isfinite(float(v))}
