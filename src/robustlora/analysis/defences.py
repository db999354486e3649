"""The report's Defences section: adversarial fine-tuning, feature squeezing, dynamic adapter switching.

Pure functions from the per-image tables of the defence stages to long tables with intervals, one trade-off figure
and the markdown section. Conventions as in robustlora.analysis.results: shares in [0, 1] (shown in %), ε in [0, 1] pixel
units (shown as k/255), an arm's value is the mean over its training seeds, intervals are hierarchical bootstraps
over seeds and images (a share's interval widened to contain a Wilson interval: analysis.cell_estimate).
Comparisons are paired on images (paired bootstrap + exact McNemar on per-image majority votes over seeds) and
Holm-corrected within each table; a difference is called only when its CI excludes 0 AND its Holm p < alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robustlora import stats
from robustlora.analysis.results import (MISSING, Outcomes, ResultSet, Settings, _direction, cell_estimate, eps_key,
                                 format_eps, format_p, format_pct, format_points, p_phrase)
from robustlora.errors import DataError, ParamError
from robustlora.reporting.figures import new_figure, arm_colors, save_figure

__all__ = ["AdversarialArm", "Defences", "AUTOATTACK_COLUMNS", "SQUEEZE_COLUMNS", "SWITCHING_COLUMNS",
           "SQUEEZE_VERDICTS", "ADVERSARIAL_COLUMNS", "DIFFERENCE_COLUMNS", "SQUEEZE_TABLE_COLUMNS",
           "SQUEEZE_VERDICT_COLUMNS", "THRESHOLD_COLUMNS", "SWITCHING_TABLE_COLUMNS", "SWITCHING_COMPARISON_COLUMNS",
           "POINT_COLUMNS", "adversarial_table", "adversarial_differences", "squeeze_table",
           "squeeze_thresholds", "squeeze_verdicts", "switching_table", "switching_comparisons", "tradeoff_points",
           "tradeoff_figure", "write_defence_figures", "analyse_defences", "defences_section"]

AUTOATTACK_COLUMNS = ("variant", "seed", "attack", "eps", "image", "clean_correct", "adv_correct")
SQUEEZE_COLUMNS = ("variant", "seed", "attack", "eps", "image", "clean_correct", "adv_correct", "clean_flagged",
                   "adv_flagged", "threshold", "holdout_fpr")
SWITCHING_COLUMNS = ("system", "standard", "robust", "seed", "attack", "eps", "image", "clean_correct",
                     "adv_correct", "clean_switched", "adv_switched")
SQUEEZE_ATTACKS = {"fgsm": "FGSM", "pgd": "PGD", "adaptive": "adaptive (BPDA, knows squeezers and threshold)"}
SWITCHING_ATTACKS = {"pgd_standard": "PGD on the standard adapter (switching unknown)",
                     "pgd_robust": "PGD on the robust adapter", "adaptive_evade": "BPDA evading the detector",
                     "pgd_system": "PGD through the system (route recomputed per step)",
                     "worst": "worst case over the adaptive attacks"}
SQUEEZE_VERDICTS = ("survives the adaptive attack", "only against non-adaptive attacks", "no gain", "inconclusive")
_SHARE = "hierarchical bootstrap (Wilson-widened)"


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class AdversarialArm:
    """An adversarially fine-tuned variant; ε and step size in [0, 1] pixel units, β only for TRADES."""

    name: str
    standard: str | None  # its standard twin (same adaptation, clean training), None if it has none
    method: str  # "pgd" (Madry PGD-AT) or "trades"
    eps: float
    steps: int
    step_size: float
    random_start: bool = True
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("pgd", "trades"):
            raise ParamError(f"variants.{self.name}.adversarial.method must be 'pgd' or 'trades', got {self.method!r}")
        if self.method == "trades" and self.beta is None:
            raise ParamError(f"variants.{self.name}.adversarial.beta is required for TRADES")

    @property
    def label(self) -> str:
        """'PGD-AT ε=4/255, 1 step of 1.25·ε, random start' or 'TRADES β=6, ε=4/255, 2 steps of 1.25·ε' (as
        params' AdversarialSettings.label)."""
        head = "PGD-AT" if self.method == "pgd" else f"TRADES β={self.beta:g},"
        start = ", random start" if self.method == "pgd" and self.random_start else ""
        return (f"{head} ε={format_eps(self.eps)}, {self.steps} step{'s' if self.steps > 1 else ''} of "
                f"{self.step_size / self.eps:.3g}·ε{start}")


def adversarial_arms(variants: Mapping[str, Any]) -> list[AdversarialArm]:
    """The adversarially trained variants of params (``VariantSpec``s by name), each with its standard twin: the
    variant with the same adaptation, targets and settings trained without ``adversarial`` (None if none)."""
    out = []
    for name, spec in variants.items():
        at = getattr(spec, "adversarial", None)
        if at is None:
            continue
        twins = [n for n, s in variants.items() if getattr(s, "adversarial", None) is None
                 and (s.adaptation, tuple(s.targets), s.settings) == (spec.adaptation, tuple(spec.targets),
                                                                       spec.settings)]
        out.append(AdversarialArm(name, twins[0] if twins else None, at.method, at.eps, at.steps, at.step_size,
                                  at.random_start, at.beta if at.method == "trades" else None))
    return out


def _validate(frame: pd.DataFrame, columns: Sequence[str], what: str, stage: str) -> pd.DataFrame:
    """A copy with an `eps_key` column; one-line DataError naming a missing column, bad ε or duplicated row."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what} lack column(s) {', '.join(missing)}; expected the {stage} stage's columns "
                        f"{', '.join(columns)}")
    if frame.empty:
        raise DataError(f"{what} are empty; rerun the {stage} stage")
    table = frame[list(columns) + [c for c in frame.columns if c not in columns]].copy()  # name column first
    table["eps"], table["attack"], table[columns[0]] = (table["eps"].astype(float), table["attack"].astype(str),
                                                        table[columns[0]].astype(str))
    if ((table["eps"] < 0) | (table["eps"] > 1)).any():
        raise DataError(f"{what}: eps must be in [0,1] pixel units, got {table['eps'].max():g}")
    table["eps_key"] = table["eps"].round(9)
    dupes = table[table.duplicated([columns[0], "seed", "attack", "eps_key", "image"])]
    if len(dupes):
        r = dupes.iloc[0]
        raise DataError(f"{what} hold image {r['image']} twice for {r[columns[0]]} seed {r['seed']}, {r['attack']} "
                        f"ε = {format_eps(r['eps'])}; expected one row per key")
    return table


@dataclass(frozen=True)
class _Cell:
    """(S, N) bool arrays of one arm (or system) x attack x ε; seeds and images ascending."""

    seeds: tuple[int, ...]
    images: np.ndarray
    x: dict[str, np.ndarray]


def _cells(table: pd.DataFrame, bools: Sequence[str], first: Sequence[str], what: str) -> dict[tuple, _Cell]:
    """{(name, attack, ε key): _Cell} of a validated table in report order: name as first seen, attacks `first`
    first, ε ascending. The name column is the table's first column (variant or system)."""
    by = table.columns[0]
    names = {v: i for i, v in enumerate(dict.fromkeys(table[by]))}
    present = list(dict.fromkeys(table["attack"]))
    order = {a: i for i, a in enumerate([a for a in first if a in present] + [a for a in present if a not in first])}
    out = {}
    for (name, attack, key), group in table.groupby([by, "attack", "eps_key"], sort=False):
        arrays = {}
        for column in bools:
            wide = group.pivot(index="seed", columns="image", values=column)
            if wide.isna().to_numpy().any():
                seed = wide.index[wide.isna().any(axis=1)][0]
                raise DataError(f"{what}: {name} {attack} ε = {format_eps(key)} seed {seed} lacks "
                                f"{int(wide.loc[seed].isna().sum())} of the {wide.shape[1]} images of the other seeds")
            arrays[column] = wide.to_numpy(dtype=bool)
        out[(name, attack, float(key))] = _Cell(tuple(int(s) for s in wide.index), wide.columns.to_numpy(), arrays)
    return dict(sorted(out.items(), key=lambda kv: (names[kv[0][0]], order[kv[0][1]], kv[0][2])))


# ----------------------------------------------------------------------------- shared statistics

def _share(outcome: np.ndarray, settings: Settings, among: np.ndarray | None = None) -> stats.Estimate:
    """Mean over seeds of the share of `outcome` (S, N), over all images or over each seed's `among` images.

    Routed through analysis.cell_estimate so intervals match the rest of the report: a share over a per-seed
    subset is computed as a success rate (success = among & outcome, linearised per seed); both Wilson-widened.
    """
    s, n = outcome.shape
    nan = np.full((s, n), np.nan)
    if among is None:
        cell = Outcomes("", "", 0.0, tuple(range(s)), np.arange(n), outcome, outcome, nan, nan)
        return cell_estimate(cell, "clean_accuracy", settings)
    cell = Outcomes("", "", 0.0, tuple(range(s)), np.arange(n), among, among & ~outcome, nan, nan)
    return cell_estimate(cell, "attack_success_rate", settings)


def _est(est: stats.Estimate) -> dict[str, Any]:
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n_images": est.n_images,
            "n_seeds": est.n_seeds}


def _paired(a: np.ndarray | None, b: np.ndarray | None, settings: Settings) -> dict[str, Any]:
    """a − b of two arms on the same images (seeds resampled per arm) and the exact McNemar p; NaN if a side lacks."""
    if a is None or b is None:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n_images": 0}
    est = stats.paired_difference(a, b, n_boot=settings.n_boot, seed=settings.seed, confidence=settings.confidence)
    return {"diff": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
            "p": stats.mcnemar_paired(a, b)[0] if est.n_images else math.nan, "n_images": est.n_images}


def _verdicts(rows: list[dict[str, Any]], columns: list[str], settings: Settings) -> pd.DataFrame:
    """The rows with p_holm (one Holm family: the table) and verdict higher / lower / inconclusive / not evaluated."""
    table = pd.DataFrame(rows, columns=[c for c in columns if c not in ("p_holm", "verdict")])
    table["p_holm"] = stats.holm_adjust(table["p"].to_numpy(dtype=float)) if len(table) else []
    table["verdict"] = ["not evaluated" if not r.n_images else {1: "higher", -1: "lower", 0: "inconclusive"}[
        _direction(r.ci_low, r.ci_high, r.p_holm, settings.alpha)] for r in table.itertuples()]
    return table[columns]


def _results(attack_results: pd.DataFrame | ResultSet) -> ResultSet:
    return attack_results if isinstance(attack_results, ResultSet) else ResultSet(attack_results)


# ----------------------------------------------------------------------------- adversarial fine-tuning

ADVERSARIAL_COLUMNS = ["arm", "quantity", "attack", "eps", "value", "ci_low", "ci_high", "n_images", "n_seeds",
                       "interval"]
DIFFERENCE_COLUMNS = ["arm", "standard", "quantity", "attack", "eps", "diff", "ci_low", "ci_high", "p", "p_holm",
                      "n_images", "verdict"]


def _eps(settings: Settings, at_arms: Sequence[AdversarialArm]) -> list[float]:
    """The grid's ε and every training ε, ascending (a sanity ε feeds the checks, not the defences)."""
    return sorted({eps_key(e) for e in settings.eps_grid} | {eps_key(a.eps) for a in at_arms})


def _autoattack(autoattack: pd.DataFrame | None, settings: Settings,
                at_arms: Sequence[AdversarialArm]) -> dict[tuple, Outcomes]:
    """AutoAttack's cells at the ε of `_eps`."""
    if autoattack is None or autoattack.empty:
        return {}
    keep = set(_eps(settings, at_arms))
    table = _validate(autoattack, AUTOATTACK_COLUMNS, "AutoAttack results", "autoattack")
    cells = _cells(table, ("clean_correct", "adv_correct"), (), "AutoAttack results")
    return {(arm, attack, eps): Outcomes(arm, attack, eps, c.seeds, c.images, c.x["clean_correct"],
                                         c.x["adv_correct"], *[np.full(c.x["adv_correct"].shape, np.nan)] * 2)
            for (arm, attack, eps), c in sorted(cells.items(), key=lambda kv: kv[0][2]) if eps in keep}


def adversarial_table(attack_results: pd.DataFrame | ResultSet, settings: Settings, *,
                      at_arms: Sequence[AdversarialArm] = (), arms: Sequence[str] | None = None,
                      train_metrics: Mapping[str, Any] | None = None,
                      autoattack: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm: clean accuracy, PGD robust accuracy at every grid and training ε, AutoAttack robust accuracy at
    those ε, training cost.

    Shares in [0, 1] with hierarchical CIs (analysis.cell_estimate); train_seconds: wall-clock seconds per training
    run, mean over seeds with the min–max over seeds (interval 'seed range': no t quantile without scipy);
    trainable_params: exact. eps NaN and attack '' where they do not apply. Columns: ADVERSARIAL_COLUMNS.
    """
    rs, aa = _results(attack_results), _autoattack(autoattack, settings, at_arms)
    rows = []

    def add(arm: str, quantity: str, attack: str, eps: float, values: Mapping[str, Any], interval: str) -> None:
        rows.append({"arm": arm, "quantity": quantity, "attack": attack, "eps": eps, **values, "interval": interval})

    for arm in arms if arms is not None else rs.arms:
        if arm in rs.arms:
            add(arm, "clean_accuracy", "", math.nan, _est(cell_estimate(rs.clean(arm), "clean_accuracy", settings)),
                _SHARE)
            for eps in _eps(settings, at_arms):
                if (cell := rs.get(arm, "pgd", eps)) is not None:
                    add(arm, "pgd_robust_accuracy", "pgd", eps, _est(cell_estimate(cell, "robust_accuracy", settings)),
                        _SHARE)
        for (a, attack, eps), cell in aa.items():
            if a == arm:
                add(arm, "autoattack_robust_accuracy", attack, eps,
                    _est(cell_estimate(cell, "robust_accuracy", settings)), _SHARE)
        seeds = ((train_metrics or {}).get(arm) or {}).get("seeds") or {}
        per_seed = [seeds[k] for k in sorted(seeds, key=int)]
        if secs := [float(s["train_seconds"]) for s in per_seed if s.get("train_seconds") is not None]:
            add(arm, "train_seconds", "", math.nan, {"value": float(np.mean(secs)), "ci_low": min(secs),
                                                     "ci_high": max(secs), "n_images": 0, "n_seeds": len(secs)},
                "seed range")
        if params := [s["trainable_params"] for s in per_seed if s.get("trainable_params") is not None]:
            add(arm, "trainable_params", "", math.nan, {"value": float(params[0]), "ci_low": math.nan,
                                                        "ci_high": math.nan, "n_images": 0, "n_seeds": len(params)},
                "exact")
    return pd.DataFrame(rows, columns=ADVERSARIAL_COLUMNS)


def adversarial_differences(attack_results: pd.DataFrame | ResultSet, settings: Settings,
                            at_arms: Sequence[AdversarialArm], autoattack: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per adversarially trained arm with a twin: AT − standard, paired on images, in [0, 1] share units.

    Clean accuracy (all attacked images), PGD and AutoAttack robust accuracy at each grid and training ε.
    p: exact McNemar on per-image majority votes; p_holm: one Holm family over the table; a twin without results
    gives one 'not evaluated' row. Columns: DIFFERENCE_COLUMNS.
    """
    rs, aa = _results(attack_results), _autoattack(autoattack, settings, at_arms)
    rows = []
    for at in (a for a in at_arms if a.standard is not None):
        std = at.standard
        if at.name not in rs.arms or std not in rs.arms:
            pairs = [("clean_accuracy", "", math.nan, None, None)]
        else:
            pairs = [("clean_accuracy", "", math.nan, rs.clean(at.name).clean_correct, rs.clean(std).clean_correct)]
            for eps in _eps(settings, at_arms):
                if (a := rs.get(at.name, "pgd", eps)) is not None and (b := rs.get(std, "pgd", eps)) is not None:
                    pairs.append(("pgd_robust_accuracy", "pgd", eps, a.robust, b.robust))
        for (arm, attack, eps), a in aa.items():
            if arm == at.name and (b := aa.get((std, attack, eps))) is not None:
                if not np.array_equal(a.images, b.images):
                    raise DataError(f"AutoAttack ε = {format_eps(eps)}: {at.name} and {std} cover different images; "
                                    "both must run on the same first images of the attack subset")
                pairs.append(("autoattack_robust_accuracy", attack, eps, a.robust, b.robust))
        rows += [{"arm": at.name, "standard": std, "quantity": q, "attack": attack, "eps": eps,
                  **_paired(a, b, settings)} for q, attack, eps, a, b in pairs]
    return _verdicts(rows, DIFFERENCE_COLUMNS, settings)


# ----------------------------------------------------------------------------- feature squeezing

SQUEEZE_TABLE_COLUMNS = ["variant", "attack", "eps", "quantity", "value", "ci_low", "ci_high", "n_images",
                         "n_seeds", "n_cases"]
SQUEEZE_VERDICT_COLUMNS = ["variant", "eps", "gain_nonadaptive", "gain_nonadaptive_lo", "gain_nonadaptive_hi",
                           "p_nonadaptive", "p_holm_nonadaptive", "gain_adaptive", "gain_adaptive_lo",
                           "gain_adaptive_hi", "p_adaptive", "p_holm_adaptive", "n_images", "n_seeds", "verdict"]
THRESHOLD_COLUMNS = ["variant", "n_seeds", "threshold", "threshold_min", "threshold_max", "holdout_fpr",
                     "holdout_fpr_min", "holdout_fpr_max"]


def _squeeze(squeeze: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple, _Cell]]:
    table = _validate(squeeze, SQUEEZE_COLUMNS, "squeeze results", "squeeze")
    bools = ("clean_correct", "adv_correct", "clean_flagged", "adv_flagged")
    return table, _cells(table, bools, tuple(SQUEEZE_ATTACKS), "squeeze results")


def _defended(x: Mapping[str, np.ndarray]) -> np.ndarray:
    """Attacked input defended: correct before, and after the attack still correct or rejected by the detector."""
    return x["clean_correct"] & (x["adv_correct"] | x["adv_flagged"])


def squeeze_table(squeeze: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per variant x attack x ε: the detector's shares with hierarchical CIs (columns: SQUEEZE_TABLE_COLUMNS).

    clean_fpr: clean images flagged; detection_rate: flagged among each seed's successful adversarial examples
    (clean-correct, wrong after the attack; NaN without any); robust_accuracy: the classifier alone;
    detector_robust_accuracy: correct before and, after the attack, correct or rejected; detector_clean_accuracy:
    correct and not flagged (a rejected clean input is an error). n_cases: the seed × image pairs a share is over.
    """
    rows = []
    for (variant, attack, eps), c in _squeeze(squeeze)[1].items():
        x = c.x
        success = x["clean_correct"] & ~x["adv_correct"]
        for quantity, outcome, among in (
                ("clean_fpr", x["clean_flagged"], None), ("detection_rate", x["adv_flagged"], success),
                ("robust_accuracy", x["clean_correct"] & x["adv_correct"], None),
                ("detector_robust_accuracy", _defended(x), None),
                ("detector_clean_accuracy", x["clean_correct"] & ~x["clean_flagged"], None)):
            rows.append({"variant": variant, "attack": attack, "eps": eps, "quantity": quantity,
                         **_est(_share(outcome, settings, among)),
                         "n_cases": int(success.sum()) if among is not None else success.size})
    return pd.DataFrame(rows, columns=SQUEEZE_TABLE_COLUMNS)


def squeeze_thresholds(squeeze: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the fitted score threshold and its empirical FPR on the clean holdout (constant per seed), mean
    and min–max over seeds. Columns: THRESHOLD_COLUMNS."""
    per_seed = _squeeze(squeeze)[0].groupby(["variant", "seed"], sort=False)[["threshold", "holdout_fpr"]].first()
    table = per_seed.groupby(level="variant", sort=False).agg(["mean", "min", "max"])
    table.columns = [c if f == "mean" else f"{c}_{f}" for c, f in table.columns]
    table["n_seeds"] = per_seed.groupby(level="variant", sort=False).size()
    return table.reset_index()[THRESHOLD_COLUMNS]


def squeeze_verdicts(squeeze: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per variant x ε with both PGD and adaptive rows: does the detector add robust accuracy, and against whom?

    gain_nonadaptive = detector_robust_accuracy(PGD) − robust_accuracy(PGD); gain_adaptive =
    detector_robust_accuracy(adaptive) − robust_accuracy(PGD): same classifier, seeds and images, so the per-seed
    per-image difference is bootstrapped directly. p: exact McNemar on majority votes; Holm over every gain of the
    table. A gain counts when its CI lies above 0 and its Holm p < alpha. Verdict: 'survives the adaptive attack'
    (the adaptive gain counts), 'only against non-adaptive attacks' (only the PGD gain counts), 'no gain' (neither
    gain is above 0: the detector made no image robust), else 'inconclusive'. Columns: SQUEEZE_VERDICT_COLUMNS.
    """
    cells = _squeeze(squeeze)[1]
    rows = []
    for (variant, attack, eps), pgd in cells.items():
        if attack != "pgd" or (adaptive := cells.get((variant, "adaptive", eps))) is None:
            continue
        if pgd.seeds != adaptive.seeds or not np.array_equal(pgd.images, adaptive.images):
            raise DataError(f"squeeze results: {variant} ε = {format_eps(eps)}: the adaptive attack covers other "
                            "seeds or images than PGD; run both on the same images")
        robust = pgd.x["clean_correct"] & pgd.x["adv_correct"]
        row: dict[str, Any] = {"variant": variant, "eps": eps, "n_images": len(pgd.images), "n_seeds": len(pgd.seeds)}
        for name, defended in (("nonadaptive", _defended(pgd.x)), ("adaptive", _defended(adaptive.x))):
            est = stats.hierarchical_mean(defended.astype(float) - robust, n_boot=settings.n_boot,
                                          seed=settings.seed, confidence=settings.confidence, signed=True)
            row |= {f"gain_{name}": est.value, f"gain_{name}_lo": est.ci_low, f"gain_{name}_hi": est.ci_high,
                    f"p_{name}": stats.mcnemar_paired(defended, robust)[0]}
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in SQUEEZE_VERDICT_COLUMNS if not c.startswith(("p_holm", "verd"))])
    holm = stats.holm_adjust(np.concatenate([table["p_nonadaptive"], table["p_adaptive"]]).astype(float))
    table["p_holm_nonadaptive"], table["p_holm_adaptive"] = holm[:len(table)], holm[len(table):]

    def verdict(r: pd.Series) -> str:
        counts = [_direction(r[f"gain_{n}_lo"], r[f"gain_{n}_hi"], r[f"p_holm_{n}"], settings.alpha) == 1
                  for n in ("adaptive", "nonadaptive")]
        if any(counts):
            return SQUEEZE_VERDICTS[0] if counts[0] else SQUEEZE_VERDICTS[1]
        # no image gained against either attack; the CIs still say how large a gain the images cannot rule out
        return SQUEEZE_VERDICTS[2] if max(r["gain_nonadaptive"], r["gain_adaptive"]) <= 0 else SQUEEZE_VERDICTS[3]

    table["verdict"] = [verdict(r) for _, r in table.iterrows()] if len(table) else []
    return table[SQUEEZE_VERDICT_COLUMNS]


# ----------------------------------------------------------------------------- dynamic adapter switching

SWITCHING_TABLE_COLUMNS = ["system", "standard", "robust", "attack", "eps", "quantity", "value", "ci_low", "ci_high",
                           "n_images", "n_seeds"]
SWITCHING_COMPARISON_COLUMNS = ["system", "versus", "role", "quantity", "eps", "diff", "ci_low", "ci_high", "p",
                                "p_holm", "n_images", "verdict"]


def _switching(switching: pd.DataFrame) -> tuple[dict[str, tuple[str, str]], dict[tuple, _Cell]]:
    """({system: (standard adapter, robust adapter)}, cells)."""
    table = _validate(switching, SWITCHING_COLUMNS, "switching results", "switching")
    adapters = {s: (str(g["standard"].iloc[0]), str(g["robust"].iloc[0])) for s, g in table.groupby("system")}
    bools = ("clean_correct", "adv_correct", "clean_switched", "adv_switched")
    return adapters, _cells(table, bools, tuple(SWITCHING_ATTACKS), "switching results")


def switching_table(switching: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per system x attack x ε: clean_accuracy, robust_accuracy (correct before and after), switch_rate_clean and
    switch_rate_attacked (inputs routed to the robust adapter), with hierarchical CIs. Columns:
    SWITCHING_TABLE_COLUMNS."""
    adapters, cells = _switching(switching)
    rows = []
    for (system, attack, eps), c in cells.items():
        for quantity, outcome in (("clean_accuracy", c.x["clean_correct"]),
                                  ("robust_accuracy", c.x["clean_correct"] & c.x["adv_correct"]),
                                  ("switch_rate_clean", c.x["clean_switched"]),
                                  ("switch_rate_attacked", c.x["adv_switched"])):
            rows.append({"system": system, "standard": adapters[system][0], "robust": adapters[system][1],
                         "attack": attack, "eps": eps, "quantity": quantity, **_est(_share(outcome, settings))})
    return pd.DataFrame(rows, columns=SWITCHING_TABLE_COLUMNS)


def _restrict(cell: Outcomes, images: np.ndarray, arm: str) -> Outcomes:
    """The attack cell on `images` (the switching subset), in that order."""
    missing = images[~np.isin(images, cell.images)]
    if missing.size:
        raise DataError(f"switching images {missing[:3].tolist()} are not in the attack results of {arm}; run "
                        "switching on the attack stage's image subset")
    i = np.searchsorted(cell.images, images)
    return Outcomes(cell.arm, cell.attack, cell.eps, cell.seeds, images, cell.clean_correct[:, i],
                    cell.adv_correct[:, i], cell.clean_max_prob[:, i], cell.adv_max_prob[:, i])


def switching_comparisons(switching: pd.DataFrame, attack_results: pd.DataFrame | ResultSet,
                          settings: Settings) -> pd.DataFrame:
    """Per system x ε with 'worst' rows: system − each adapter alone, paired on the switching images.

    robust_accuracy: the system's worst case minus the adapter's PGD robust accuracy (attack stage); clean_accuracy:
    system minus adapter on the clean images. role: 'standard' / 'robust'. Holm over the table; a missing adapter
    cell gives a 'not evaluated' row. Columns: SWITCHING_COMPARISON_COLUMNS.
    """
    rs, (adapters, cells) = _results(attack_results), _switching(switching)
    rows = []
    for (system, attack, eps), c in cells.items():
        for role, arm in zip(("standard", "robust"), adapters[system]) if attack == "worst" else ():
            ref = rs.get(arm, "pgd", eps) if arm in rs.arms else None
            ref = _restrict(ref, c.images, arm) if ref is not None else None
            for quantity, mine, theirs in (
                    ("robust_accuracy", c.x["clean_correct"] & c.x["adv_correct"], None if ref is None else ref.robust),
                    ("clean_accuracy", c.x["clean_correct"], None if ref is None else ref.clean_correct)):
                rows.append({"system": system, "versus": arm, "role": role, "quantity": quantity, "eps": eps,
                             **_paired(mine, theirs, settings)})
    return _verdicts(rows, SWITCHING_COMPARISON_COLUMNS, settings)


# ----------------------------------------------------------------------------- trade-off figure

POINT_COLUMNS = ["label", "kind", "arm", "twin", "clean", "clean_lo", "clean_hi", "robust", "robust_lo", "robust_hi"]
_MARKERS = {"arm": ("o", True), "adversarial": ("s", True), "squeeze": ("D", False), "switching": ("*", True)}


def _key(v: Any) -> Any:
    """A lookup key: ε rounded (analysis.eps_key), NaN (ε that does not apply) as None."""
    if isinstance(v, (float, np.floating)):
        return eps_key(v) if np.isfinite(v) else None
    return v


def _index(table: pd.DataFrame | None, keys: Sequence[str]) -> dict[tuple, Any]:
    """Rows of `table` (namedtuples) by the values of `keys`; look up with ε as eps_key and NaN as None."""
    if table is None or table.empty:
        return {}
    return {tuple(_key(v) for v in k): r
            for k, r in zip(table[list(keys)].itertuples(index=False, name=None), table.itertuples())}


def tradeoff_points(adversarial: pd.DataFrame, eps: float, at_arms: Sequence[AdversarialArm] = (),
                    squeeze: pd.DataFrame | None = None, switching: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clean vs robust accuracy at ε of every arm (PGD), every arm + squeezing detector under the adaptive attack
    (detector clean vs detector robust accuracy) and every switching system (worst case); shares in [0, 1].
    twin: an adversarially trained arm's standard twin. Columns: POINT_COLUMNS."""
    e, at = eps_key(eps), {a.name: a for a in at_arms}
    adv = _index(adversarial, ["arm", "quantity", "eps"])
    sq = _index(squeeze, ["variant", "attack", "eps", "quantity"])
    sw = _index(switching, ["system", "attack", "eps", "quantity"])
    candidates = [(arm, "adversarial" if arm in at else "arm", arm, at[arm].standard if arm in at else None,
                   adv.get((arm, "clean_accuracy", None)), adv.get((arm, "pgd_robust_accuracy", e)))
                  for arm in dict.fromkeys(adversarial["arm"])]
    candidates += [(f"{v} + squeezing (adaptive)", "squeeze", v, None,
                    sq.get((v, "adaptive", e, "detector_clean_accuracy")),
                    sq.get((v, "adaptive", e, "detector_robust_accuracy")))
                   for v in (dict.fromkeys(squeeze["variant"]) if squeeze is not None else ())]
    candidates += [(f"{s} (switching, worst case)", "switching", s, None, sw.get((s, "worst", e, "clean_accuracy")),
                    sw.get((s, "worst", e, "robust_accuracy")))
                   for s in (dict.fromkeys(switching["system"]) if switching is not None else ())]
    rows = [{"label": label, "kind": kind, "arm": arm, "twin": twin, "clean": c.value, "clean_lo": c.ci_low,
             "clean_hi": c.ci_high, "robust": r.value, "robust_lo": r.ci_low, "robust_hi": r.ci_high}
            for label, kind, arm, twin, c, r in candidates if c is not None and r is not None]
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def tradeoff_figure(points: pd.DataFrame, eps: float) -> Figure:
    """Robust accuracy at ε vs clean accuracy (%), 95 % CI error bars on both axes; dashed: AT arm to its twin."""
    fig, (ax,) = new_figure(7.5, 5.0)
    colors = arm_colors(list(dict.fromkeys(points["arm"])))
    standard = {r.arm: r for r in points.itertuples() if r.kind == "arm"}
    for r in points.itertuples():
        if r.kind == "adversarial" and (twin := standard.get(r.twin)) is not None:
            ax.plot([100 * twin.clean, 100 * r.clean], [100 * twin.robust, 100 * r.robust], "--", color="grey", lw=1)
    for r in points.itertuples():
        marker, filled = _MARKERS[r.kind]
        ax.errorbar(100 * r.clean, 100 * r.robust, fmt=marker, color=colors[r.arm], capsize=2, label=r.label,
                    xerr=[[100 * max(r.clean - r.clean_lo, 0)], [100 * max(r.clean_hi - r.clean, 0)]],
                    yerr=[[100 * max(r.robust - r.robust_lo, 0)], [100 * max(r.robust_hi - r.robust, 0)]],
                    mfc=colors[r.arm] if filled else "white", markersize=10 if marker == "*" else 7)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy at ε = {format_eps(eps)} (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Clean vs robust accuracy at ε = {format_eps(eps)} (95% CI)\n● standard, ■ adversarially "
                 "trained, ◇ + squeezing (adaptive attack), ★ switching (worst case)", fontsize=8)
    if len(points):
        fig.legend(loc="outside lower center", ncols=2, fontsize=7)
    return fig


def write_defence_figures(out_dir: str | Path, points: pd.DataFrame, eps: float) -> dict[str, Path]:
    """The trade-off figure as `defences_tradeoff.png` under out_dir; {} when there is no point to draw."""
    if points.empty:
        return {}
    return {"defences_tradeoff": save_figure(tradeoff_figure(points, eps), Path(out_dir) / "defences_tradeoff.png")}


# ----------------------------------------------------------------------------- everything at once

@dataclass(frozen=True)
class Defences:
    """Every defence table of the report; empty tables where a defence did not run."""

    at_arms: tuple[AdversarialArm, ...]
    adversarial: pd.DataFrame
    differences: pd.DataFrame
    squeeze: pd.DataFrame
    squeeze_thresholds: pd.DataFrame
    squeeze_verdicts: pd.DataFrame
    switching: pd.DataFrame
    switching_comparisons: pd.DataFrame
    cost: Mapping[str, Any] | None
    points: pd.DataFrame


def analyse_defences(attack_results: pd.DataFrame | ResultSet, settings: Settings, *,
                     at_arms: Sequence[AdversarialArm] = (), arms: Sequence[str] | None = None,
                     train_metrics: Mapping[str, Any] | None = None, autoattack: pd.DataFrame | None = None,
                     squeeze: pd.DataFrame | None = None, switching: pd.DataFrame | None = None,
                     cost: Mapping[str, Any] | None = None) -> Defences:
    """All defence tables from the per-image inputs; None or empty inputs give empty tables."""
    rs = _results(attack_results)
    sq_on, sw_on = squeeze is not None and len(squeeze) > 0, switching is not None and len(switching) > 0
    adv = adversarial_table(rs, settings, at_arms=at_arms, arms=arms, train_metrics=train_metrics,
                            autoattack=autoattack)
    sq = squeeze_table(squeeze, settings) if sq_on else pd.DataFrame(columns=SQUEEZE_TABLE_COLUMNS)
    sw = switching_table(switching, settings) if sw_on else pd.DataFrame(columns=SWITCHING_TABLE_COLUMNS)
    return Defences(
        tuple(at_arms), adv, adversarial_differences(rs, settings, at_arms, autoattack), sq,
        squeeze_thresholds(squeeze) if sq_on else pd.DataFrame(columns=THRESHOLD_COLUMNS),
        squeeze_verdicts(squeeze, settings) if sq_on else pd.DataFrame(columns=SQUEEZE_VERDICT_COLUMNS), sw,
        switching_comparisons(switching, rs, settings) if sw_on else pd.DataFrame(columns=SWITCHING_COMPARISON_COLUMNS),
        cost, tradeoff_points(adv, settings.report_eps, at_arms, sq, sw))


# ----------------------------------------------------------------------------- markdown
# report.py imports this module, so its two table formatters are repeated here rather than imported (no cycle)

def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _ci(r: Any) -> str:
    """'89.5 [87.1, 91.6]' (%) from a row with value / ci_low / ci_high; '—' for none."""
    if r is None or not np.isfinite(r.value):
        return MISSING
    return f"{format_pct(r.value)} [{format_pct(r.ci_low)}, {format_pct(r.ci_high)}]"


def _diff(v: float, lo: float, hi: float) -> str:
    """'+12.3 [+8.0, +16.5]' in percentage points."""
    return MISSING if not np.isfinite(v) else f"{format_points(v)} [{format_points(lo)}, {format_points(hi)}]"


def _said(name: str, r: Any) -> str:
    """'<name> higher: +12.3 [+8.0, +16.5] points, Holm p < 0.001' for a row of a comparison table."""
    return f"{name} {r.verdict}: {_diff(r.diff, r.ci_low, r.ci_high)} points, {p_phrase('Holm p', r.p_holm)}"


def _gain(r: Any, name: str) -> str:
    """A squeeze verdict row's gain ('nonadaptive' / 'adaptive') in points with its CI."""
    return _diff(getattr(r, f"gain_{name}"), getattr(r, f"gain_{name}_lo"), getattr(r, f"gain_{name}_hi"))


def _quantity(q: str, eps: float) -> str:
    name = {"pgd_robust_accuracy": "PGD robust accuracy", "autoattack_robust_accuracy": "AutoAttack robust accuracy"}
    name = name.get(q, q.replace("_", " "))
    return name if not np.isfinite(eps) else f"{name} at ε = {format_eps(eps)}"


def _adversarial_md(d: Defences, settings: Settings) -> tuple[list[str], list[str]]:
    if not d.at_arms:
        return ["Not evaluated: no variant is adversarially trained. Add one with `variants.<name>.adversarial` in "
                "params.yaml (method pgd or trades, eps, steps, step size) and name its standard twin."], []
    t, at = d.adversarial, {a.name: a for a in d.at_arms}
    idx = _index(t, ["arm", "quantity", "attack", "eps"])
    cols = list(dict.fromkeys((q, a, e) for q, a, e in zip(t["quantity"], t["attack"], t["eps"])
                              if q in ("pgd_robust_accuracy", "autoattack_robust_accuracy")))
    cols.sort(key=lambda c: (c[0] != "pgd_robust_accuracy", c[2]))
    rows = []
    for arm in dict.fromkeys(t["arm"]):
        params, secs = idx.get((arm, "trainable_params", "", None)), idx.get((arm, "train_seconds", "", None))
        mark = eps_key(at[arm].eps) if arm in at else None
        rows.append([arm, at[arm].label if arm in at else "standard", f"{int(params.value):,}" if params else MISSING,
                     f"{secs.value:,.1f} [{secs.ci_low:,.1f}, {secs.ci_high:,.1f}]" if secs else MISSING,
                     _ci(idx.get((arm, "clean_accuracy", "", None)))]
                    + [_ci(idx.get((arm, q, a, _key(e)))) + (" †" if q.startswith("pgd") and e == mark else "")
                       for q, a, e in cols])
    header = (["Arm", "Training", "Trainable params", "Training time (s/seed) [min, max]", "Clean acc. (%)"]
              + [f"{'PGD' if q.startswith('pgd') else 'AutoAttack'} robust acc. (%), ε = {format_eps(e)}"
                 for q, _, e in cols])
    parts = ["Accuracies: mean over seeds [95% CI] on the attacked images (AutoAttack: its first images). † the "
             "arm's training ε. Training time: wall-clock seconds per run, mean over seeds [min, max over seeds].",
             _md_table(header, rows)]
    diffs = d.differences
    if diffs.empty:
        return parts + ["No adversarially trained arm names a standard twin, so no difference is tested."], []
    parts += [f"Adversarially trained minus standard twin, percentage points on the same images [95% paired CI]; "
              f"p: exact McNemar on per-image majority votes; Holm over the {len(diffs)} rows; 'higher'/'lower' "
              f"needs the CI to exclude 0 and Holm p < {settings.alpha:g}.",
              _md_table(["Arm", "Twin", "Quantity", "Difference (points) [95% CI]", "p", "Holm p", "n images",
                         "Verdict"],
                        [[r.arm, r.standard, _quantity(r.quantity, r.eps), _diff(r.diff, r.ci_low, r.ci_high),
                          format_p(r.p), format_p(r.p_holm), str(r.n_images), r.verdict] for r in diffs.itertuples()])]
    shows = []
    for arm, g in diffs.groupby("arm", sort=False):
        train_eps = eps_key(at[arm].eps)
        said = [_said(_quantity(r.quantity, r.eps), r) for r in g.itertuples() if r.verdict != "not evaluated"
                and (r.quantity != "pgd_robust_accuracy" or r.eps == train_eps)]
        shows.append(f"Adversarial fine-tuning, {arm} vs its standard twin {g['standard'].iloc[0]}: "
                     + ("; ".join(said) if said else "not evaluated (an arm has no attack results)") + ".")
    return parts, shows


def _squeeze_md(d: Defences, settings: Settings) -> tuple[list[str], list[str]]:
    if d.squeeze.empty:
        return ["Not evaluated: no squeezing results. Enable the detector with the `squeeze` section of params.yaml "
                "(squeezers, holdout FPR, attacks)."], []
    t, quantities = d.squeeze, ("clean_fpr", "detection_rate", "robust_accuracy", "detector_robust_accuracy",
                                "detector_clean_accuracy")
    idx = _index(t, ["variant", "attack", "eps", "quantity"])
    rows = [[v, SQUEEZE_ATTACKS.get(a, a), format_eps(e)] + [_ci(idx.get((v, a, _key(e), q))) for q in quantities]
            for v, a, e in dict.fromkeys(zip(t["variant"], t["attack"], t["eps"]))]
    parts = [_md_table(["Arm", "Attack", "ε", "Clean FPR (%)", "Detection rate (%)", "Robust acc. alone (%)",
                        "Robust acc. with detector (%)", "Clean acc. with detector (%)"], rows),
             "Mean over seeds [95% CI]. Detection rate: flagged among each seed's successful adversarial examples. "
             "With detector: an attacked input counts as defended when still correct or rejected; a rejected clean "
             "input counts as an error."]
    if len(th := d.squeeze_thresholds):
        fpr = "; ".join(f"{r.variant} {format_pct(r.holdout_fpr)} % (seeds {format_pct(r.holdout_fpr_min)}–"
                        f"{format_pct(r.holdout_fpr_max)} %)" for r in th.itertuples())
        parts.append(f"The threshold was fitted per seed on clean holdout images at the FPR stated above; FPR "
                     f"measured on that holdout: {fpr}; on the val images: the clean FPR column.")
    v = d.squeeze_verdicts
    if v.empty:
        return parts + ["No verdict: the adaptive attack did not run at any PGD ε (add 'adaptive' to the squeeze "
                        "attacks)."], []
    parts += [f"Gain of the detector in robust accuracy (points, same seeds and images, 95% CI) against PGD and "
              f"against the adaptive attack, both relative to the classifier alone under PGD. Holm over the "
              f"{2 * len(v)} gains; a gain counts when its CI lies above 0 and Holm p < {settings.alpha:g}. Verdict: "
              "'survives the adaptive attack' if the adaptive gain counts; 'only against non-adaptive attacks' if "
              "only the PGD gain counts; 'no gain' if neither gain is above 0 (the detector made no image robust; "
              "the CI still shows the gain these images cannot rule out); else 'inconclusive'.",
              _md_table(["Arm", "ε", "Gain vs PGD [95% CI]", "Holm p", "Gain vs adaptive [95% CI]", "Holm p",
                         "Verdict"],
                        [[r.variant, format_eps(r.eps), _gain(r, "nonadaptive"), format_p(r.p_holm_nonadaptive),
                          _gain(r, "adaptive"), format_p(r.p_holm_adaptive), f"**{r.verdict}**"]
                         for r in v.itertuples()])]
    shows = [f"Feature squeezing on {r.variant} at ε = {format_eps(r.eps)}: {r.verdict} — the detector adds "
             f"{_gain(r, 'nonadaptive')} points of robust accuracy against PGD "
             f"({p_phrase('Holm p', r.p_holm_nonadaptive)}) and {_gain(r, 'adaptive')} against the adaptive attack "
             f"({p_phrase('Holm p', r.p_holm_adaptive)})." for r in v.itertuples()]
    return parts, shows


def _ms(cost: Mapping[str, Any], key: str) -> str:
    """Seconds per batch as 'median [q05, q95]' in ms; a bare float (one mean, older outputs) says so."""
    s = cost[key]
    if not isinstance(s, Mapping):
        return f"{1000 * float(s):.2f} (mean, no spread measured)"
    return f"{1000 * s['median']:.2f} [{1000 * s['q05']:.2f}, {1000 * s['q95']:.2f}]"


def _bytes(n: float) -> str:
    """'42.7 MiB', '11.5 KiB' (an adapter is far below a MiB)."""
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _cost_md(cost: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    if not cost:
        return ["No serving-cost measurement (the switching stage's cost output is missing)."], []
    n, full = int(cost.get("n_adapters", 2)), cost.get("full_models_bytes")
    ways = {"switch_s": ("switch adapters on one backbone", cost.get("bank_bytes")),
            "merged_s": (f"hold {n} merged models", full),
            "reload_s": ("reload a full state_dict from memory", cost.get("reload_bytes", full)),
            "reload_disk_s": ("reload a full checkpoint from disk",
                              cost.get("reload_disk_bytes", None if full is None else full / n))}
    mib = {k: MISSING if b is None else _bytes(b) for k, (_, b) in ways.items()}
    one = f" One adapter: {_bytes(cost['adapter_bytes'])}." if cost.get("adapter_bytes") else ""
    parts = [f"Serving {n} adapters, batches of {cost.get('batch_size', '?')} on {cost.get('device', '?')}, "
             f"{cost.get('repeats', '?')} repeats: ms per batch, median [5 %, 95 % over repeats]. Memory: parameter "
             f"bytes resident (reload from memory: the {n} full state_dicts held; from disk: one model).{one}",
             _md_table(["Serving", "Time (ms/batch) [5 %, 95 %]", "Memory"],
                       [[name, _ms(cost, k), mib[k]] for k, (name, _) in ways.items() if k in cost])]
    shows = [f"Serving {n} adapters by switching takes {_ms(cost, 'switch_s')} ms per batch and {mib['switch_s']}, "
             f"against {_ms(cost, 'merged_s')} ms and {mib['merged_s']} with the merged models held in memory."
             ] if "switch_s" in cost and "merged_s" in cost else []
    return parts, shows


def _switching_md(d: Defences) -> tuple[list[str], list[str]]:
    if d.switching.empty:
        return ["Not evaluated: no switching results. Enable it with the `switching` section of params.yaml (the "
                "standard and the robust adapter, the detector that routes)."], []
    t, parts, shows = d.switching, [], []
    idx = _index(t, ["system", "attack", "eps", "quantity"])
    quantities = ("clean_accuracy", "robust_accuracy", "switch_rate_clean", "switch_rate_attacked")
    for system, g in t.groupby("system", sort=False):
        parts += [f"System {system}: standard adapter {g['standard'].iloc[0]}, robust adapter {g['robust'].iloc[0]}; "
                  "inputs the detector flags go to the robust adapter. Mean over seeds [95% CI], in %.",
                  _md_table(["Attack", "ε", "Clean acc.", "Robust acc.", "Switched, clean", "Switched, attacked"],
                            [[SWITCHING_ATTACKS.get(a, a), format_eps(e)]
                             + [_ci(idx.get((system, a, _key(e), q))) for q in quantities]
                             for a, e in dict.fromkeys(zip(g["attack"], g["eps"]))])]
    c = d.switching_comparisons
    if c.empty:
        parts.append("No comparison with the adapters alone: the switching results hold no 'worst' rows.")
    else:
        parts += [f"System minus each adapter alone on the switching images, points [95% paired CI]; robust "
                  f"accuracy: the system's worst case vs the adapter under PGD. Holm over the {len(c)} rows.",
                  _md_table(["System", "Versus", "Quantity", "ε", "Difference (points) [95% CI]", "p", "Holm p",
                             "n images", "Verdict"],
                            [[r.system, f"{r.versus} ({r.role})", r.quantity.replace("_", " "), format_eps(r.eps),
                              _diff(r.diff, r.ci_low, r.ci_high), format_p(r.p), format_p(r.p_holm),
                              str(r.n_images), r.verdict] for r in c.itertuples()])]
        for (system, eps), g in c.groupby(["system", "eps"], sort=False):
            said = [_said(f"{r.quantity.replace('_', ' ')} vs the {r.role} adapter {r.versus}", r)
                    for r in g.itertuples() if r.verdict != "not evaluated"]
            shows.append(f"Switching system {system} at ε = {format_eps(eps)}: worst-case robust accuracy "
                         f"{_ci(idx.get((system, 'worst', _key(eps), 'robust_accuracy')))} %"
                         + "".join(f"; {s}" for s in said) + ".")
    cost, cost_shows = _cost_md(d.cost)
    return parts + ["#### Serving cost"] + cost, shows + cost_shows


def defences_section(d: Defences, settings: Settings, figures: Mapping[str, str], *, squeeze_settings: str = "",
                     switching_settings: str = "") -> str:
    """The '## Defences' markdown: three subsections, the trade-off figure, and 'What this shows' from the verdicts.

    figures: figure key -> path relative to the report (key 'defences_tradeoff'); *_settings: a line each on how
    the defence ran (squeezers and target holdout FPR; adapters and router), written by the caller from params.
    """
    (adv, s1), (sq, s2), (sw, s3) = _adversarial_md(d, settings), _squeeze_md(d, settings), _switching_md(d)
    parts = ["## Defences",
             "Every share in %, mean over training seeds [95% hierarchical-bootstrap CI over seeds and images]; "
             "differences in percentage points on the same images. Each table is its own Holm family.",
             "### Adversarial fine-tuning", *adv,
             "### Feature squeezing", *([squeeze_settings] if not d.squeeze.empty else []), *sq,
             "### Dynamic adapter switching", *([switching_settings] if not d.switching.empty else []), *sw]
    if path := figures.get("defences_tradeoff"):
        caption = (f"Clean vs robust accuracy at ε = {format_eps(settings.report_eps)} (95% CIs); dashed: an "
                   "adversarially trained arm and its standard twin. Detector and switching points are on their own "
                   "image subsets.")
        parts.append(f"![{caption}]({path})\n\n*{caption}*")
    shows = s1 + s2 + s3
    parts.append("### What this shows\n\n" + ("\n".join(f"- {s}" for s in shows) if shows
                                              else "No defence produced a tested comparison."))
    return "\n\n".join(p.strip("\n") for p in parts if p)
