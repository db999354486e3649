"""The per-image tables the analysis reads, checked once and split into (seeds, images) arrays per cell.

Every attack, cross-check and defence stage writes one row per arm (or switching system) x training seed x attack x
ε x image, ε in [0,1] pixel units. `validate_table` is the one check of such a table (columns, ε range, one row per
key); `pivot_seeds` turns the rows of one arm x attack x ε into (S, N) arrays, seeds and images ascending, and refuses
a seed that lacks an image. `ResultSet` holds the attack stage's table (`RESULT_COLUMNS`) as `Outcomes` cells, all on
the same images, so every comparison of arms is paired on images. `worst_case_rows` / `with_worst_case` add attack
`worst_case`: per image the worst outcome over every attack that ran on it (RobustBench's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora.analysis.names import ATTACK_ORDER
from robustlora.errors import DataError
from robustlora.formatting import EPS_DECIMALS, eps_key, format_eps

__all__ = ["RESULT_COLUMNS", "with_eps_key", "validate_table", "validate_results", "pivot_seeds", "Cell",
           "table_cells", "Outcomes", "ResultSet", "result_set", "lookup_key",
           "row_index", "WORST_CASE", "WORST_CASE_NAME", "worst_case_rows", "with_worst_case",
           "beyond_pgd"]

RESULT_COLUMNS = ("variant", "seed", "attack", "eps", "image", "label", "clean_pred", "adv_pred", "clean_correct",
                  "adv_correct", "clean_max_prob", "adv_max_prob")


def with_eps_key(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with an `eps_key` column: ε rounded (formatting.EPS_DECIMALS) so 8/255 from params and files match."""
    return frame.assign(eps_key=frame["eps"].astype(float).round(EPS_DECIMALS))


def validate_table(frame: pd.DataFrame, columns: Sequence[str], *, what: str, stage: str,
                   name: str = "variant") -> pd.DataFrame:
    """A copy of a per-image table with an `eps_key` column, or a one-line DataError naming a missing column, an ε
    outside [0, 1] or a row repeated for one `name` (variant or system) x seed x attack x ε x image."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what} lack column(s) {', '.join(missing)}; expected the {stage} stage's columns "
                        f"{', '.join(columns)}")
    if frame.empty:
        raise DataError(f"{what} are empty; run the {stage} stage for at least one {name}")
    table = frame.copy()
    table[name] = table[name].astype(str)
    table["attack"] = table["attack"].astype(str)
    table["eps"] = table["eps"].astype(float)
    bad = table[(table["eps"] < 0) | (table["eps"] > 1)]
    if not bad.empty:
        raise DataError(f"{what}: eps must be in [0,1] pixel units, got {bad['eps'].iloc[0]:g} for {name} "
                        f"{bad[name].iloc[0]!r}")
    table = with_eps_key(table)
    dupes = table[table.duplicated([name, "seed", "attack", "eps_key", "image"])]
    if not dupes.empty:
        d = dupes.iloc[0]
        raise DataError(f"{what} hold image {d['image']} twice for {name} {d[name]!r}, seed {d['seed']}, "
                        f"{d['attack']} ε = {format_eps(d['eps'])}; expected one row per key")
    return table


def validate_results(results: pd.DataFrame) -> pd.DataFrame:
    """The attack stage's per-image table checked (`validate_table` with RESULT_COLUMNS), with an `eps_key` column."""
    return validate_table(results, RESULT_COLUMNS, what="per-image results", stage="attack")


def pivot_seeds(group: pd.DataFrame, columns: Mapping[str, Any], where: str,
                stage: str) -> tuple[tuple[int, ...], np.ndarray, dict[str, np.ndarray]]:
    """(seeds, images, {column: (S, N) array of that dtype}) of one cell's rows, seeds and images ascending; a
    DataError (naming `where` and the `stage` to rerun) when a seed lacks an image another seed has."""
    # one scatter per column into an (S, N) grid (a pandas pivot per column cost ~2 ms: seconds per report)
    seeds, seed_at = np.unique(group["seed"].to_numpy(), return_inverse=True)
    images, image_at = np.unique(group["image"].to_numpy(), return_inverse=True)
    held = np.zeros((len(seeds), len(images)), dtype=np.int64)
    np.add.at(held, (seed_at, image_at), 1)
    if (held > 1).any():
        raise ValueError(f"{where}: an image appears twice for one seed")  # validate_table rules this out
    arrays = {}
    for column, dtype in columns.items():
        values = group[column]
        missing = held == 0
        if values.isna().to_numpy().any():
            missing = missing.copy()
            missing[seed_at[values.isna().to_numpy()], image_at[values.isna().to_numpy()]] = True
        if missing.any():
            row = int(np.flatnonzero(missing.any(axis=1))[0])
            raise DataError(f"{where}: seed {seeds[row]} lacks {int(missing[row].sum())} of the {len(images)} "
                            f"images the other seeds attacked; rerun its {stage} stage")
        grid = np.empty((len(seeds), len(images)), dtype=dtype)
        grid[seed_at, image_at] = values.to_numpy(dtype=dtype)
        arrays[column] = grid
    return tuple(int(s) for s in seeds), images, arrays


@dataclass(frozen=True)
class Cell:
    """(S, N) arrays of one arm (or system) x attack x ε, by column; seeds and images ascending."""

    seeds: tuple[int, ...]
    images: np.ndarray
    x: dict[str, np.ndarray]


def table_cells(table: pd.DataFrame, name: str, bools: Sequence[str], first: Sequence[str], *, what: str,
                stage: str) -> dict[tuple[str, str, float], Cell]:
    """{(name, attack, ε key): Cell of the `bools` columns} of a validated table, in report order: `name` as first
    seen, the attacks of `first` first (in that order, then the others as first seen), ε ascending."""
    names = {v: i for i, v in enumerate(dict.fromkeys(table[name]))}
    present = list(dict.fromkeys(table["attack"]))
    order = {a: i for i, a in enumerate([a for a in first if a in present] + [a for a in present if a not in first])}
    out = {}
    for (who, attack, key), group in table.groupby([name, "attack", "eps_key"], sort=False):
        seeds, images, arrays = pivot_seeds(group, dict.fromkeys(bools, bool),
                                            f"{what}: {who} {attack} ε = {format_eps(key)}", stage)
        out[(who, attack, float(key))] = Cell(seeds, images, arrays)
    return dict(sorted(out.items(), key=lambda kv: (names[kv[0][0]], order[kv[0][1]], kv[0][2])))


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


_OUTCOME_COLUMNS = {"clean_correct": bool, "adv_correct": bool, "clean_max_prob": np.float64,
                    "adv_max_prob": np.float64}


class ResultSet:
    """The per-image results split into `Outcomes` cells, one per arm x attack x ε; at one attack x ε every arm
    covers the same images, a subset of `images` (the largest cell's: PGD off attack.full_eps covers fewer)."""

    def __init__(self, results: pd.DataFrame) -> None:
        table = validate_results(results)
        self.arms: list[str] = list(dict.fromkeys(table["variant"]))  # first-seen order = params order
        self._cells: dict[tuple[str, str, float], Outcomes] = {}
        for (arm, attack, key), group in table.groupby(["variant", "attack", "eps_key"], sort=False):
            where = f"{arm} {attack} ε = {format_eps(float(key))}"
            seeds, images, x = pivot_seeds(group, _OUTCOME_COLUMNS, where, "attack")
            self._cells[(arm, attack, key)] = Outcomes(str(arm), str(attack), float(key), seeds, images,
                                                       *x.values())
        # every arm and seed attacked the same images at one attack x ε (so comparisons are paired); PGD may cover
        # only the first images of the subset at some ε (attack.grid_images), so the cells may differ in size
        first = max(self._cells.values(), key=lambda c: len(c.images))
        same: dict[tuple[str, float], Outcomes] = {}
        for cell in self._cells.values():
            other = same.setdefault((cell.attack, cell.eps), cell)
            if not np.array_equal(cell.images, other.images) or not np.isin(cell.images, first.images).all():
                raise DataError(f"{cell.arm} {cell.attack} ε = {format_eps(cell.eps)} covers other images than "
                                f"{other.arm} {other.attack} ε = {format_eps(other.eps)}; every arm and seed must "
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


def result_set(results: pd.DataFrame | ResultSet) -> ResultSet:
    """`results` as a ResultSet (built once when given a table)."""
    return results if isinstance(results, ResultSet) else ResultSet(results)


def lookup_key(value: Any) -> Any:
    """A lookup key of a table cell: ε rounded (formatting.eps_key), NaN (an ε that does not apply) as None."""
    if isinstance(value, (float, np.floating)):
        return eps_key(value) if np.isfinite(value) else None
    return value


def row_index(table: pd.DataFrame | None, keys: Sequence[str]) -> dict[tuple, Any]:
    """Rows of `table` (namedtuples) by the values of `keys`; look up with ε as eps_key and NaN as None."""
    if table is None or table.empty:
        return {}
    return {tuple(lookup_key(v) for v in k): r
            for k, r in zip(table[list(keys)].itertuples(index=False, name=None), table.itertuples())}


# ----------------------------------------------------------------------------- the worst case over attacks

WORST_CASE = "worst_case"  # the attack name of the per-image worst case
WORST_CASE_NAME = "Worst case over attacks"
_WORST_KEY = ["variant", "seed", "eps_key", "image"]
_EXTRA_NEEDS = ("variant", "seed", "attack", "eps", "image", "adv_correct")


def _attack_rank(attack: str) -> int:
    """Tie-break order of the attacks: PGD, FGSM, PGD with more effort, AutoAttack, then the rest."""
    order = ("pgd", "fgsm", "pgd_strong", "autoattack")
    return order.index(attack) if attack in order else len(order)


def worst_case_rows(results: pd.DataFrame, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of attack `worst_case`: per arm x seed x ε x image, the worst outcome over every attack that ran there.

    ``results``: the attack stage's rows (fgsm, pgd, pgd_strong: RESULT_COLUMNS and the probability, margin and
    diagnostic columns); ``extra``: AutoAttack's, the black-box attacks' and transfer's rows (attack names as
    robustlora.analysis.names; at least variant, seed, attack, eps, image, adv_correct). The ε grid is PGD's: every ε
    at which PGD ran (attack.eps and its sanity ε), on PGD's images and seeds, so the rows form one more attack of a
    ResultSet; another attack's rows count where their (variant, seed, ε, image) match one of PGD's (AutoAttack,
    the black-box attacks and transfer run on the first images and some on the first seed only: elsewhere the worst
    case is over the attacks that did run, at least FGSM and PGD; an ε where PGD did not run is left out).

    Per row: the clean columns are PGD's (the same model); `adv_correct` is True only if every attack left the
    image correct; the other `adv_*` columns come from the `decisive` attack: PGD when PGD fooled the image, else
    the attack that fooled it with the lowest true-class probability, else (no attack fooled it) the attack that
    left the lowest true-class probability (ties: PGD, FGSM, pgd_strong, AutoAttack, then by name).
    `n_attacks`: how many attacks ran on that image. Columns: those of ``results`` plus decisive, n_attacks.
    Earlier worst-case rows in either input are ignored.
    """
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise DataError(f"per-image results lack column(s) {', '.join(missing)}; the worst case needs the attack "
                        "stage's columns")
    base = with_eps_key(results[results["attack"].astype(str) == "pgd"])
    if base.empty:
        raise DataError("per-image results have no PGD rows; the worst case covers the ε where PGD ran (rerun the "
                        "attack stage)")
    frames = [results[results["attack"].astype(str) != WORST_CASE]]
    if extra is not None and len(extra):
        missing = [c for c in _EXTRA_NEEDS if c not in extra.columns]
        if missing:
            raise DataError(f"the cross-check rows lack column(s) {', '.join(missing)}; the worst case needs "
                            f"{', '.join(_EXTRA_NEEDS)}")
        frames.append(extra[extra["attack"].astype(str) != WORST_CASE])
    adv_columns = [c for c in base.columns if c.startswith("adv_")]
    candidates = with_eps_key(pd.concat([f[[c for c in ["variant", "seed", "attack", "eps", "image", *adv_columns]
                                            if c in f.columns]] for f in frames], ignore_index=True))
    candidates["variant"], candidates["attack"] = candidates["variant"].astype(str), candidates["attack"].astype(str)
    candidates["seed"], candidates["image"] = candidates["seed"].astype(int), candidates["image"].astype(int)
    keys = base[_WORST_KEY].assign(variant=base["variant"].astype(str), seed=base["seed"].astype(int),
                                   image=base["image"].astype(int))
    candidates = candidates.merge(keys, on=_WORST_KEY, how="inner")
    fooled = ~candidates["adv_correct"].astype(bool)
    # 0: PGD fooled it; 1: another attack fooled it; 2: not fooled
    candidates["_class"] = np.where(fooled, np.where(candidates["attack"] == "pgd", 0, 1), 2)
    candidates["_prob"] = (candidates["adv_true_prob"].astype(float).fillna(np.inf)
                           if "adv_true_prob" in candidates.columns else 0.0)
    candidates["_rank"] = candidates["attack"].map(_attack_rank)
    ordered = candidates.sort_values([*_WORST_KEY, "_class", "_prob", "_rank", "attack"], kind="mergesort")
    grouped = ordered.groupby(_WORST_KEY, sort=False)
    decisive = grouped.head(1).set_index(_WORST_KEY)
    n_attacks = grouped["attack"].nunique()
    out = base.assign(variant=keys["variant"], seed=keys["seed"], image=keys["image"]).set_index(_WORST_KEY)
    for column in adv_columns:
        values = decisive[column].reindex(out.index)
        out[column] = values.astype(out[column].dtype) if values.notna().all() else values
    out["adv_correct"] = decisive["_class"].reindex(out.index).to_numpy() == 2
    out["decisive"] = decisive["attack"].reindex(out.index)
    out["n_attacks"] = n_attacks.reindex(out.index).astype(int)
    out["attack"] = WORST_CASE
    out = out.reset_index()
    for column in ("seed", "image"):
        out[column] = out[column].astype(results[column].dtype)
    kept = [c for c in results.columns if c not in ("decisive", "n_attacks")]
    return out[[*kept, "decisive", "n_attacks"]].reset_index(drop=True)


def with_worst_case(results: pd.DataFrame, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """``results`` (without any earlier worst-case rows) followed by `worst_case_rows(results, extra)`."""
    kept = results[results["attack"].astype(str) != WORST_CASE]
    return pd.concat([kept, worst_case_rows(results, extra)], ignore_index=True)


def beyond_pgd(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm x ε x attack: the clean-correct seed·image pairs PGD left correct that the worst case counts as fooled,
    by the decisive attack (`worst_case_rows`' rows, other attacks' rows ignored). Columns: variant, eps, attack,
    pairs, of (the arm's clean-correct pairs at that ε); ε ascending, most pairs first."""
    columns = ["variant", "eps", "attack", "pairs", "of"]
    worst = rows[rows["attack"].astype(str) == WORST_CASE] if "decisive" in rows.columns else rows.iloc[:0]
    if worst.empty:
        return pd.DataFrame(columns=columns)
    worst = with_eps_key(worst)
    correct = worst[worst["clean_correct"].astype(bool)]
    of = correct.groupby(["variant", "eps_key"], sort=False).size()
    beyond = correct[~correct["adv_correct"].astype(bool) & (correct["decisive"].astype(str) != "pgd")]
    counts = beyond.groupby(["variant", "eps_key", "decisive"], sort=False).size().rename("pairs").reset_index()
    counts["of"] = [int(of[(v, e)]) for v, e in zip(counts["variant"], counts["eps_key"])]
    counts = counts.rename(columns={"eps_key": "eps", "decisive": "attack"})
    counts["variant"] = counts["variant"].astype(str)
    order = {v: i for i, v in enumerate(dict.fromkeys(worst["variant"].astype(str)))}
    counts = counts.assign(_o=counts["variant"].map(order)).sort_values(["_o", "eps", "pairs"],
                                                                        ascending=[True, True, False])
    return counts[columns].reset_index(drop=True)
