"""The report's inputs on disk: where each stage's results lie and how they are read, one table per kind.

`read_inputs(p, paths)` reads what the attack, AutoAttack, black-box, transfer, defences, train and preprocess
stages wrote (the folders dvc.yaml passes, named in `InputPaths`; the files inside them: `<variant>.parquet`,
`<variant>.json`, robustlora.layout) into one `StudyData`; the prepared data's info gives the image size, the
classes and the val split's size. A missing file is a one-line DataError naming the stage that writes it and the
`dvc repro` that does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from robustlora import layout
from robustlora.config import BLACKBOX_ATTACKS
from robustlora.errors import DataError
from robustlora.io import read_json

__all__ = ["InputPaths", "StudyData", "need", "read_inputs"]


@dataclass(frozen=True)
class InputPaths:
    """The folders and files the report reads (dvc.yaml's deps of the report stage)."""

    results_dir: Path  # <variant>.parquet per-image results of the attack stage
    autoattack: Path  # AutoAttack's per-image results
    blackbox_dir: Path  # <attack>.parquet per black-box attack
    transfer: Path  # the transfer stage's per-image results
    defences_dir: Path  # layout.SQUEEZE_RESULTS and layout.SWITCHING_RESULTS
    defences_metrics: Path  # the defences stage's metrics (its switching cost)
    train_metrics_dir: Path  # <variant>.json train metrics
    histories_dir: Path  # <variant>/ folders of layout.seed_history curves
    prepared: Path  # the prepared target domain (its info.json gives the attacked image size)
    show: Callable[[Path], str] = field(default=str, compare=False)  # how an error names a missing file


@dataclass(frozen=True)
class StudyData:
    """Every input of the report, read. Per-image tables as the stages wrote them; shares in [0,1]."""

    attack_rows: pd.DataFrame  # every variant's attack-stage rows (fgsm, pgd, pgd_strong)
    extra: pd.DataFrame  # AutoAttack, the black-box attacks and transfer, stacked
    autoattack: pd.DataFrame  # AutoAttack's rows alone (the adversarial-training table reads them)
    squeeze: pd.DataFrame  # the defences stage's feature-squeezing rows
    switching: pd.DataFrame  # the defences stage's adapter-switching rows
    switching_cost: Mapping[str, Any] | None  # the defences stage's metrics' switching_cost
    train_metrics: dict[str, Any]  # variant -> its train metrics JSON
    histories: dict[str, dict[int, pd.DataFrame]]  # variant -> seed -> per-epoch curves (trained seeds only)
    image_size: int  # H of the attacked H x H images
    results: pd.DataFrame  # FGSM and PGD rows of attack_rows: the findings' inputs (pgd_strong: a check on a subset)
    classes: int | None = None  # classes of the prepared target domain (its info.json); None when not recorded
    n_val: int | None = None  # images in its val split


def need(path: Path, stage: str, show: Callable[[Path], str] = str) -> Path:
    """`path`, or a one-line DataError naming the stage that writes it."""
    if not path.exists():
        raise DataError(f"{show(path)} is missing; stage {stage} writes it (run `dvc repro {stage}`)")
    return path


def read_inputs(p: Any, paths: InputPaths) -> StudyData:
    """Read every input of the report for the variants of `p` (robustlora.config.Params), in params order."""
    def read_table(path: Path, stage: str) -> pd.DataFrame:
        return pd.read_parquet(need(path, stage, paths.show))

    def read_metrics(path: Path, stage: str) -> Any:
        return read_json(need(path, stage, paths.show))

    frames, train_metrics, histories = [], {}, {}
    for name in p.variants:
        frames.append(read_table(layout.per_name(paths.results_dir, name, ".parquet"), f"attack@{name}"))
        train_metrics[name] = read_metrics(layout.per_name(paths.train_metrics_dir, name, ".json"), f"train@{name}")
        histories[name] = {}
        for seed, seed_metrics in (train_metrics[name].get("seeds") or {}).items():
            if (seed_metrics.get("epochs_run") or 0) > 0:  # an untrained arm (`none`) has no history
                history = need(layout.seed_history(paths.histories_dir / name, seed), f"train@{name}", paths.show)
                histories[name][int(seed)] = pd.read_csv(history)
    autoattack = read_table(paths.autoattack, "autoattack")
    extra = pd.concat([autoattack, *(read_table(layout.per_name(paths.blackbox_dir, a, ".parquet"), f"blackbox@{a}")
                                     for a in BLACKBOX_ATTACKS),
                       read_table(paths.transfer, "transfer")], ignore_index=True)
    info = read_metrics(paths.prepared / layout.DATA_INFO, "preprocess")
    n_val = (info.get("counts") or {}).get("val")
    attack_rows = pd.concat(frames, ignore_index=True)
    return StudyData(
        attack_rows=attack_rows, extra=extra, autoattack=autoattack,
        squeeze=read_table(paths.defences_dir / layout.SQUEEZE_RESULTS, "defences"),
        switching=read_table(paths.defences_dir / layout.SWITCHING_RESULTS, "defences"),
        switching_cost=read_metrics(paths.defences_metrics, "defences").get("switching_cost"),
        train_metrics=train_metrics, histories=histories, image_size=info["image_size"],
        results=attack_rows[attack_rows["attack"].isin(["fgsm", "pgd"])], classes=info.get("classes"),
        n_val=None if n_val is None else int(n_val))
