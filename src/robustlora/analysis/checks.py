"""Sanity checks that guard the evaluation, computed once and returned as data (after fra31/auto-attack's checks.py).

Attack checks follow Carlini et al. 2019, "On Evaluating Adversarial Robustness", per arm x training seed and paired
on the same images: an iterative attack (PGD) is never weaker than a single step (FGSM); success never falls as ε
grows; PGD at a huge ε (attack.pgd.sanity_eps, default 1: unbounded, any image in [0,1] is reachable) succeeds on
essentially every image; the clean prediction of an image is the same in every attack row (the same model); after
the attack no more images are right than before; the correct flags agree with the predictions. Tolerance: one image.
Training checks read metrics/train/<arm>.json: no trained arm's best epoch is its first (it never learned), and a
best epoch at max_epochs is a warning (still improving when the budget ran out). `overfitting_checks` reads the
per-epoch histories of the adversarially trained arms for catastrophic overfitting (Wong et al. 2020): holdout PGD
accuracy collapsing while the training attack's accuracy rises (`catastrophic_overfitting`).

Statuses: 'passed', 'failed', 'warning', 'not informative' (the check ran on too few informative pairs to detect
anything — never a pass), 'not evaluated' (the inputs for the check are absent — never a pass).
The gradient-masking checks (their titles are in TITLES too) are robustlora.analysis.masking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from robustlora.analysis.names import ATTACK_NAMES, convergence_title
from robustlora.analysis.tables import validate_results
from robustlora.errors import DataError
from robustlora.formatting import eps_key, format_eps, format_pct

__all__ = ["STATUSES", "TITLES", "MIN_SANITY_SUCCESS", "SLACK_IMAGES", "MAX_ZERO_GRADIENT_SHARE", "LARGE_EPS",
           "COLLAPSE_POINTS", "Check", "attack_checks", "training_checks", "Collapse", "catastrophic_overfitting",
           "overfitting_checks", "run_checks", "count"]

STATUSES = ("passed", "failed", "warning", "not informative", "not evaluated")
MIN_SANITY_SUCCESS = 0.99
SLACK_IMAGES = 1
MAX_ZERO_GRADIENT_SHARE = 0.01  # more clean images with an all-zero input gradient than this fails the check
LARGE_EPS = 0.5  # an ε at which every attack must (almost) always succeed
COLLAPSE_POINTS = 0.20  # catastrophic overfitting: holdout PGD accuracy this far below its best (or below half of it)
TITLES = {  # check name -> what it asserts, for the report
    "pgd_vs_fgsm": "PGD success ≥ FGSM success at every ε",
    "monotone_fgsm": "FGSM success non-decreasing in ε",
    "monotone_pgd": "PGD success non-decreasing in ε",
    "pgd_sanity_eps": f"PGD success ≥ {100 * MIN_SANITY_SUCCESS:.0f} % at the sanity ε",
    "clean_consistent": "clean prediction identical in every attack row of an image",
    "adv_not_above_clean": "accuracy after the attack ≤ clean accuracy",
    "flags_match_predictions": "correct flags agree with predictions and labels",
    "best_epoch": "best epoch neither the first nor max_epochs",
    "catastrophic_overfitting": (f"holdout PGD accuracy never falls {100 * COLLAPSE_POINTS:.0f} points below its best "
                                 "(or below half of it) while the training attack's accuracy rises"),
    # gradient masking (Carlini et al. 2019, section 5; fra31/auto-attack's checks.py)
    "blackbox_vs_pgd": "black-box success ≤ PGD success on the same images (paired, within the noise)",
    "transfer_vs_pgd": "transfer success ≤ the target's PGD success on the same images (paired, within the noise)",
    "autoattack_vs_pgd": "AutoAttack robust accuracy ≤ PGD robust accuracy on the same images (within the noise)",
    "pgd_vs_autoattack": ("AutoAttack fools no more images than PGD on the same images: PGD converged (within the "
                          "noise)"),
    "convergence": convergence_title(),  # with params' default attack.convergence
    "zero_gradients": "the input gradient at the clean input is non-zero",
    "outputs_are_logits": "the model returns logits, not probabilities",
    "large_eps": (f"success ≥ {100 * MIN_SANITY_SUCCESS:.0f} % at a large ε (≥ {LARGE_EPS:g}, i.e. unbounded in "
                  "practice)"),
}


@dataclass(frozen=True)
class Check:
    """One check of one arm (and seed): `status` in STATUSES, `detail` says what was measured."""

    name: str  # a key of TITLES
    arm: str
    seed: int | None
    status: str
    detail: str
    about: str | None = None  # what it asserts, where its params make that differ from TITLES[name]

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def title(self) -> str:
        return self.about or TITLES.get(self.name, self.name)

    @property
    def flagged(self) -> bool:
        """Anything but a pass: a failure, a warning, a check without enough data or one that could not run."""
        return self.status != "passed"


# ----------------------------------------------------------------------------- attack checks

def attack_checks(results: pd.DataFrame, *, eps_grid: Sequence[float], sanity_eps: float | None,
                  slack_images: int = SLACK_IMAGES, min_sanity_success: float = MIN_SANITY_SUCCESS) -> list[Check]:
    """Carlini-style checks per arm x seed on the per-image results (ε in [0,1] pixels)."""
    table = validate_results(results)
    table["success"] = table["clean_correct"] & ~table["adv_correct"]
    cells = (table.groupby(["variant", "seed", "attack", "eps_key"], sort=False)
             .agg(n=("image", "size"), correct=("clean_correct", "sum"), success=("success", "sum"),
                  adv=("adv_correct", "sum")).reset_index())
    grid = sorted(eps_key(e) for e in eps_grid)
    checks: list[Check] = []
    for (arm, seed), rows in table.groupby(["variant", "seed"], sort=False):
        arm, seed = str(arm), int(seed)
        agg = cells[(cells["variant"] == arm) & (cells["seed"] == seed)]
        checks.append(_pgd_vs_fgsm(arm, seed, agg, grid, slack_images))
        for attack in ("fgsm", "pgd"):
            checks.append(_monotone(arm, seed, attack, agg[agg["attack"] == attack], slack_images))
        checks.append(_sanity(arm, seed, agg, sanity_eps, min_sanity_success))
        checks.append(_clean_consistent(arm, seed, rows))
        checks.append(_adv_not_above_clean(arm, seed, agg, slack_images))
        checks.append(_flags_match(arm, seed, rows))
    return checks


def _rate(row: pd.Series) -> float:
    """Success rate of one aggregated cell; NaN with no correct image."""
    return row["success"] / row["correct"] if row["correct"] > 0 else math.nan


def _slack(slack_images: int, *counts: float) -> float:
    """One image as a share of the smaller of the counts."""
    n = min(counts)
    return slack_images / n if n > 0 else math.inf


def _pgd_vs_fgsm(arm: str, seed: int, agg: pd.DataFrame, grid: Sequence[float], slack_images: int) -> Check:
    fgsm = agg[agg["attack"] == "fgsm"].set_index("eps_key")
    pgd = agg[agg["attack"] == "pgd"].set_index("eps_key")
    pairs = [(e, fgsm.loc[e], pgd.loc[e]) for e in grid if e in fgsm.index and e in pgd.index]
    pairs = [(e, f, p) for e, f, p in pairs if f["correct"] > 0 and p["correct"] > 0]
    if not pairs:
        return Check("pgd_vs_fgsm", arm, seed, "not evaluated", "no grid ε with a success rate for both attacks")
    failures = []
    for eps, f, p in pairs:
        tol = _slack(slack_images, f["correct"], p["correct"])
        if _rate(p) < _rate(f) - tol:
            failures.append(f"ε = {format_eps(eps)}: PGD {format_pct(_rate(p))} % < FGSM {format_pct(_rate(f))} %")
    if failures:
        return Check("pgd_vs_fgsm", arm, seed, "failed", "; ".join(failures) + f" (tolerance {slack_images} image)"
                     " — PGD weaker than FGSM points to a bug or gradient masking")
    margin = min(_rate(p) - _rate(f) for _, f, p in pairs)
    return Check("pgd_vs_fgsm", arm, seed, "passed",
                 f"{len(pairs)} ε; smallest PGD − FGSM = {100 * margin:+.1f} points")


def _monotone(arm: str, seed: int, attack: str, rows: pd.DataFrame, slack_images: int) -> Check:
    name = f"monotone_{attack}"
    rows = rows[rows["correct"] > 0].sort_values("eps_key")
    if len(rows) < 2:
        return Check(name, arm, seed, "not evaluated",
                     f"needs two ε with a {ATTACK_NAMES.get(attack, attack)} success rate, got {len(rows)}")
    records = list(rows.itertuples(index=False))
    failures = []
    for j in range(1, len(records)):
        # against every smaller ε, so a slow drift below the slack per step is still caught
        for i in range(j):
            a, b = records[i], records[j]
            if b.success / b.correct < a.success / a.correct - _slack(slack_images, a.correct, b.correct):
                failures.append(f"{format_pct(a.success / a.correct)} % at ε = {format_eps(a.eps_key)} → "
                                f"{format_pct(b.success / b.correct)} % at ε = {format_eps(b.eps_key)}")
                break
    if failures:
        return Check(name, arm, seed, "failed", "success falls as ε grows: " + "; ".join(failures)
                     + f" (tolerance {slack_images} image)")
    first, last = records[0], records[-1]
    return Check(name, arm, seed, "passed",
                 f"{len(records)} ε from {format_eps(first.eps_key)} to {format_eps(last.eps_key)}: "
                 f"{format_pct(first.success / first.correct)} % → {format_pct(last.success / last.correct)} %")


def _sanity(arm: str, seed: int, agg: pd.DataFrame, sanity_eps: float | None, min_success: float) -> Check:
    if sanity_eps is None:
        return Check("pgd_sanity_eps", arm, seed, "not evaluated",
                     "attack.pgd.sanity_eps is null; set it (e.g. 1.0) to run this check")
    row = agg[(agg["attack"] == "pgd") & (agg["eps_key"] == eps_key(sanity_eps))]
    if row.empty:
        return Check("pgd_sanity_eps", arm, seed, "not evaluated",
                     f"no PGD results at ε = {format_eps(sanity_eps)}; rerun the attack stage")
    row = row.iloc[0]
    if row["correct"] == 0:
        return Check("pgd_sanity_eps", arm, seed, "not evaluated", "no image was classified correctly")
    rate = _rate(row)
    detail = (f"PGD success {format_pct(rate)} % ({int(row['success'])}/{int(row['correct'])}) at "
              f"ε = {format_eps(sanity_eps)}")
    if rate >= min_success:
        return Check("pgd_sanity_eps", arm, seed, "passed", detail)
    return Check("pgd_sanity_eps", arm, seed, "failed",
                 detail + " — an unbounded attack that fails points to a bug or gradient masking")


def _clean_consistent(arm: str, seed: int, rows: pd.DataFrame) -> Check:
    per_image = rows.groupby("image")["clean_pred"].nunique()
    differing = int((per_image > 1).sum())
    if differing:
        return Check("clean_consistent", arm, seed, "failed",
                     f"{differing} of {len(per_image)} images have different clean predictions across attack rows; "
                     "the attacks did not see the same model or images")
    return Check("clean_consistent", arm, seed, "passed",
                 f"{len(per_image)} images, {len(rows) // max(len(per_image), 1)} attack rows each")


def _adv_not_above_clean(arm: str, seed: int, agg: pd.DataFrame, slack_images: int) -> Check:
    # robust accuracy (correct before AND after) is <= clean by construction; accuracy after alone is not
    gain = agg["adv"] - agg["correct"]  # images right after the attack minus images right before
    worst, row = gain.max(), agg.loc[gain.idxmax()]
    if worst > slack_images:
        return Check("adv_not_above_clean", arm, seed, "failed",
                     f"{ATTACK_NAMES.get(row['attack'], row['attack'])} at ε = {format_eps(row['eps_key'])}: "
                     f"{int(row['adv'])} images right after the attack vs {int(row['correct'])} before; the attack "
                     "helps the model, which points to a sign or label bug")
    return Check("adv_not_above_clean", arm, seed, "passed",
                 f"{len(agg)} attack x ε cells; at most {int(max(worst, 0))} more image(s) right after than before")


def _flags_match(arm: str, seed: int, rows: pd.DataFrame) -> Check:
    clean_bad = int((rows["clean_correct"] != (rows["clean_pred"] == rows["label"])).sum())
    adv_bad = int((rows["adv_correct"] != (rows["adv_pred"] == rows["label"])).sum())
    if clean_bad or adv_bad:
        return Check("flags_match_predictions", arm, seed, "failed",
                     f"{clean_bad} clean and {adv_bad} adversarial rows whose correct flag disagrees with "
                     "prediction == label")
    return Check("flags_match_predictions", arm, seed, "passed", f"{len(rows)} rows")


# ----------------------------------------------------------------------------- training checks

def training_checks(train_metrics: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    """Per trained arm x seed: best epoch > 1 (else failed), best epoch < max_epochs (else warning).

    An arm whose every seed ran 0 epochs (adaptation `none`) is not trained and gets no check.
    """
    checks = []
    for arm, metrics in train_metrics.items():
        seeds = metrics.get("seeds") or {}
        if not seeds:
            checks.append(Check("best_epoch", arm, None, "not evaluated",
                                f"metrics/train/{arm}.json has no per-seed entries"))
            continue
        if all(s.get("epochs_run") == 0 for s in seeds.values()):
            continue
        for key in sorted(seeds, key=int):
            checks.append(_best_epoch(arm, int(key), seeds[key]))
    return checks


def _best_epoch(arm: str, seed: int, metrics: Mapping[str, Any]) -> Check:
    best, run, budget = metrics.get("best_epoch"), metrics.get("epochs_run"), metrics.get("max_epochs")
    if best is None:
        return Check("best_epoch", arm, seed, "not evaluated", "the train metrics have no best_epoch")
    of = f"best epoch {best} of {run if run is not None else '?'} run"
    if best <= 1:
        return Check("best_epoch", arm, seed, "failed",
                     f"{of}: holdout accuracy never improved on the first epoch; the arm is not trained (tune its "
                     "lr on the holdout)")
    if budget is None:
        return Check("best_epoch", arm, seed, "not evaluated", f"{of}; the train metrics have no max_epochs")
    if best >= budget:
        return Check("best_epoch", arm, seed, "warning",
                     f"{of} = max_epochs {budget}: still improving when the budget ran out (raise train.max_epochs)")
    return Check("best_epoch", arm, seed, "passed", f"{of} (max_epochs {budget})")


# ----------------------------------------------------------------------------- catastrophic overfitting

_HISTORY_COLUMNS = ("epoch", "train_accuracy", "holdout_robust_accuracy")


@dataclass(frozen=True)
class Collapse:
    """The sharpest fall of holdout PGD accuracy below its best so far while the training attack's accuracy rose;
    accuracies in [0, 1]. `flagged`: a fall of at least min(COLLAPSE_POINTS, half the best) — catastrophic."""

    flagged: bool
    epoch: int | None  # the epoch of the fall (None: no fall with the training accuracy rising)
    best_epoch: int | None  # the epoch of the best holdout PGD accuracy before it
    best: float
    robust: float  # holdout PGD accuracy at `epoch`
    train_before: float  # the training attack's accuracy at `best_epoch` ...
    train_after: float  # ... and at `epoch`


def catastrophic_overfitting(history: pd.DataFrame, *, points: float = COLLAPSE_POINTS) -> Collapse:
    """Catastrophic overfitting (Wong et al. 2020) in one run's per-epoch history.

    ``history``: columns epoch, train_accuracy (the training attack's accuracy on its adversarial examples) and
    holdout_robust_accuracy (holdout PGD accuracy), in [0, 1]; epochs with a NaN robust accuracy are skipped. At
    each epoch t the fall is the best holdout PGD accuracy of the epochs before t minus its value at t; it counts
    only if the training accuracy at t is above its value at that best epoch (the training attack got easier while
    PGD got harder). Flagged when a counted fall is at least min(``points``, best / 2): ``points`` (20) below the
    best, or below half of a best under 2·``points``. Returns the flagged fall (else the largest counted one; the
    largest of several flagged). A DataError names a missing column.
    """
    missing = [c for c in _HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise DataError(f"training history lacks column(s) {', '.join(missing)}; expected "
                        f"{', '.join(_HISTORY_COLUMNS)} (rerun the train stage)")
    h = history.dropna(subset=["holdout_robust_accuracy"]).sort_values("epoch")
    epochs = h["epoch"].astype(int).to_numpy()
    robust, train = h["holdout_robust_accuracy"].to_numpy(float), h["train_accuracy"].to_numpy(float)
    worst, worst_key = Collapse(False, None, None, math.nan, math.nan, math.nan, math.nan), (False, 0.0)
    for t in range(1, len(h)):
        b = int(robust[:t].argmax())
        drop = float(robust[b] - robust[t])
        flagged = bool(drop >= min(points, robust[b] / 2) - 1e-12)
        if drop > 0 and train[t] > train[b] and (flagged, drop) > worst_key:  # a flagged fall first, then the largest
            worst_key = (flagged, drop)
            worst = Collapse(flagged, int(epochs[t]), int(epochs[b]), float(robust[b]), float(robust[t]),
                             float(train[b]), float(train[t]))
    return worst


def overfitting_checks(histories: Mapping[str, Mapping[int, pd.DataFrame]], arms: Iterable[str],
                       train_metrics: Mapping[str, Mapping[str, Any]] | None = None, *,
                       points: float = COLLAPSE_POINTS) -> list[Check]:
    """Per adversarially trained arm (``arms``) x seed: `catastrophic_overfitting` of its per-epoch history.

    ``histories``: arm -> seed -> plots/train/<arm>/seed_<s>.csv as a DataFrame. 'failed' when flagged and the
    selected epoch (train metrics' best_epoch; unknown: assumed the last) is at or after the fall, 'warning' when
    flagged but model selection picked an epoch before it, 'passed' otherwise; 'not evaluated' when an arm has no
    history or a history has fewer than two epochs with holdout PGD accuracy.
    """
    checks = []
    for arm in arms:
        runs = histories.get(arm) or {}
        if not runs:
            checks.append(Check("catastrophic_overfitting", arm, None, "not evaluated",
                                f"no per-epoch history of {arm}; rerun train@{arm}"))
            continue
        seeds = ((train_metrics or {}).get(arm) or {}).get("seeds") or {}
        for seed in sorted(runs):
            history = runs[seed]
            n = int(history["holdout_robust_accuracy"].notna().sum()) if "holdout_robust_accuracy" in history else 0
            if n < 2:
                checks.append(Check("catastrophic_overfitting", arm, int(seed), "not evaluated",
                                    f"{n} epoch(s) with holdout PGD accuracy; the check needs two"))
                continue
            c = catastrophic_overfitting(history, points=points)
            if not c.flagged:
                worst = ("no fall" if c.epoch is None else
                         f"largest fall {100 * (c.best - c.robust):.1f} points (epoch {c.best_epoch} → {c.epoch})")
                checks.append(Check("catastrophic_overfitting", arm, int(seed), "passed",
                                    f"{n} epochs; {worst} with the training attack's accuracy rising"))
                continue
            selected = (seeds.get(str(seed)) or seeds.get(seed) or {}).get("best_epoch")
            detail = (f"holdout PGD accuracy {format_pct(c.best)} % at epoch {c.best_epoch} → {format_pct(c.robust)} "
                      f"% at epoch {c.epoch} while the training attack's accuracy rose {format_pct(c.train_before)} "
                      f"→ {format_pct(c.train_after)} %")
            if selected is not None and int(selected) < c.epoch:
                checks.append(Check("catastrophic_overfitting", arm, int(seed), "warning",
                                    f"{detail}; the selected epoch {selected} precedes the collapse"))
            else:
                chosen = "the last epoch" if selected is None else f"the selected epoch {selected}"
                checks.append(Check("catastrophic_overfitting", arm, int(seed), "failed",
                                    f"{detail}: catastrophic overfitting, and {chosen} is not before it — use "
                                    "more attack steps (or a smaller step) in training, or select on holdout PGD"))
    return checks


# ----------------------------------------------------------------------------- all checks

def run_checks(results: pd.DataFrame, train_metrics: Mapping[str, Mapping[str, Any]], *,
               eps_grid: Sequence[float], sanity_eps: float | None) -> list[Check]:
    """Training checks, then attack checks."""
    return training_checks(train_metrics) + attack_checks(results, eps_grid=eps_grid, sanity_eps=sanity_eps)


def count(checks: Iterable[Check]) -> dict[str, int]:
    """Checks per status, every status present (0 when none)."""
    statuses = [c.status for c in checks]
    return {s: statuses.count(s) for s in STATUSES}
