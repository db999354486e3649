"""The attack suite the `attack` stage runs, its per-image results, and the summaries made from them.

Per batch: clean logits once, one gradient for every FGSM ε, one PGD run per ε (strongest iterate, see
robustlora.attacks.gradient.pgd). Everything runs in float32 in eval mode. The suite keeps one row per (attack, ε,
image) (robustlora.attacks.outcomes); every summary (tidy table, DVC metrics JSON, MLflow metrics, ε curves) is
computed from those rows, so paired statistics across arms and seeds stay possible afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustlora.attacks.gradient import fgsm_sweep, input_gradient, pgd
from robustlora.attacks.inputs import check_image_ids, check_images, progress_bar, resolve_device, to_batch
from robustlora.attacks.outcomes import (IMAGE_COLUMNS, concat_outcomes, image_outcomes, model_outcomes,
                                         outcome_columns, output_kind)
from robustlora.data.dataset import load_split
from robustlora.evaluation.metrics import outcome_metrics
from robustlora.formatting import eps_label
from robustlora.models.resnet import autocast_off, eval_mode, load_variant
from robustlora.stats import seed_summary

if TYPE_CHECKING:
    from robustlora.config import AttackConfig  # pydantic; the suite only reads its attributes

__all__ = ["attack_suite", "attack_variant", "attacked_images", "attack_subset", "pgd_eps", "summarize_images",
           "metrics_json", "flat_metrics", "mean_metrics", "success_curves", "DIAGNOSTIC_COLUMNS", "SUMMARY_COLUMNS",
           "SHORT_NAMES"]


# attack_suite adds two per-image diagnostics of gradient masking at the clean input: the L1 norm of the input
# gradient of the cross-entropy (0 = no signal for a gradient attack) and what the model returns (outcomes.output_kind)
DIAGNOSTIC_COLUMNS = ["clean_grad_norm", "clean_output"]
# summarize_images' columns after the variant / seed columns the rows carry
SUMMARY_COLUMNS = ["attack", "eps", "eps_label", "metric", "value", "ci_low", "ci_high", "n"]
# metric -> key in the DVC metrics JSON and MLflow names (clean_accuracy is a key of its own, once per seed)
SHORT_NAMES = {
    "attack_success_rate": "asr",
    "robust_accuracy": "robust_accuracy",
    "certainty_clean": "certainty_clean",
    "certainty_adv": "certainty_adv",
    "certainty_clean_correct": "certainty_clean_correct",
    "certainty_adv_correct": "certainty_adv_correct",
    "true_class_prob_clean": "true_class_prob_clean",
    "true_class_prob_adv": "true_class_prob_adv",
}
_GROUPS = ("variant", "seed")  # the columns a summary groups by when the rows carry them


def pgd_eps(cfg: AttackConfig) -> list[float]:
    """PGD's ε: the grid, plus the sanity ε when it is set and not already on the grid."""
    grid = [float(e) for e in cfg.eps]
    sanity = cfg.pgd.sanity_eps
    return grid + ([float(sanity)] if sanity is not None and float(sanity) not in grid else [])


def attack_suite(model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                 cfg: AttackConfig, *, image_ids: Sequence[int] | np.ndarray | None = None,
                 device: str | torch.device | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Attack ``model`` with FGSM and PGD at every ε of ``cfg.eps`` ([0, 1] pixels); one row per attack·ε·image.

    cfg: the attack section of params.yaml (batch_size, seed, device, eps, pgd.steps / random_start / restarts /
    sanity_eps / step_for(ε), convergence); PGD also runs at ``cfg.pgd.sanity_eps`` when set. images: uint8 NHWC
    (as stored by the data stages) or float NCHW in [0, 1]; labels: int64 (N,); image_ids: the images' indices in
    their split (default 0..N-1). ``device`` defaults to ``cfg.device``; the model is moved there. Evaluated in
    float32, eval mode; deterministic given ``cfg.seed`` (PGD random starts).

    The convergence check adds attack ``pgd_strong`` at ``cfg.convergence_eps`` on the first
    ``cfg.convergence.n_images`` images: PGD with ``steps_factor`` x the steps and ``restarts`` restarts (own random
    stream, so the other rows do not depend on it), run on the images PGD left correct; an image PGD fooled keeps
    PGD's row, so ``pgd_strong`` is never weaker than ``pgd`` and the difference is what more effort finds.

    Columns: IMAGE_COLUMNS + DIAGNOSTIC_COLUMNS, rows ordered by attack (fgsm, pgd, pgd_strong), ε (as given),
    image.
    """
    fgsm_grid, pgd_grid = [float(e) for e in cfg.eps], pgd_eps(cfg)  # AttackConfig has checked them
    y_all = check_images(images, labels)
    n = len(y_all)
    ids = check_image_ids(image_ids, n)
    device = resolve_device(cfg.device if device is None else device, "attack.device")
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    strong_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    conv = cfg.convergence
    n_conv = min(conv.n_images, n)
    conv_eps = [float(e) for e in cfg.convergence_eps] if n_conv else []

    clean: list[dict[str, np.ndarray]] = []
    diagnostics: dict[str, list[np.ndarray]] = {c: [] for c in DIAGNOSTIC_COLUMNS}
    adv: dict[tuple[str, float], list[dict[str, np.ndarray]]] = {("fgsm", e): [] for e in fgsm_grid}
    adv.update({("pgd", e): [] for e in pgd_grid})
    adv.update({("pgd_strong", e): [] for e in conv_eps})
    n_runs = math.ceil(n / cfg.batch_size) * (1 + len(pgd_grid)) + math.ceil(n_conv / cfg.batch_size) * len(conv_eps)
    bar = progress_bar(n_runs, "attack", "run", progress)
    with eval_mode(model), autocast_off(device), bar:
        for start in range(0, n, cfg.batch_size):
            x = to_batch(images, start, start + cfg.batch_size, device)
            y = y_all[start:start + cfg.batch_size].to(device)
            with torch.no_grad():
                logits = model(x)
            clean.append(image_outcomes(logits, y))
            diagnostics["clean_output"].append(output_kind(logits))
            bar.set_postfix_str(f"fgsm x{len(fgsm_grid)}")
            grad = input_gradient(model, x, y)
            diagnostics["clean_grad_norm"].append(grad.abs().flatten(1).sum(1).float().cpu().numpy())
            for e, x_adv in zip(fgsm_grid, fgsm_sweep(model, x, y, fgsm_grid, grad=grad)):
                adv["fgsm", e].append(model_outcomes(model, x_adv, y))
            bar.update()
            in_conv = max(0, min(len(y), n_conv - start))  # this batch's images in the convergence subset
            for e in pgd_grid:
                m = max(0, min(len(y), cfg.pgd_images(e, n) - start))  # this batch's images PGD covers at e
                if not m:
                    bar.update()
                    continue
                bar.set_postfix_str(f"pgd {eps_label(e)}")
                xs, ys = (x, y) if m == len(y) else (x[:m], y[:m])
                x_adv = pgd(model, xs, ys, e, cfg.pgd.step_for(e), cfg.pgd.steps, random_start=cfg.pgd.random_start,
                            restarts=cfg.pgd.restarts, generator=generator, targets=cfg.pgd.targets,
                            target_steps=cfg.pgd.target_steps)
                out = model_outcomes(model, x_adv, ys)
                adv["pgd", e].append(out)
                bar.update()
                in_conv_e = min(in_conv, m)
                if e in conv_eps and in_conv_e:
                    bar.set_postfix_str(f"pgd x{conv.steps_factor} steps x{conv.restarts} restarts {eps_label(e)}")
                    robust = clean[-1]["correct"][:in_conv_e] & out["correct"][:in_conv_e]
                    adv["pgd_strong", e].append(_strong_pgd(model, x[:in_conv_e], y[:in_conv_e],
                                                            x_adv[:in_conv_e], robust, e, cfg, strong_generator))
                    bar.update()

    before = concat_outcomes(clean)
    extra = {c: np.concatenate(parts) for c, parts in diagnostics.items()}
    frames = []
    for (attack, e), parts in adv.items():
        after = concat_outcomes(parts)
        m = len(after["pred"])  # pgd_strong and PGD off full_eps cover the first images only
        first = {k: v[:m] for k, v in before.items()}
        frames.append(pd.DataFrame({**outcome_columns(attack, e, ids[:m], y_all[:m], first, after),
                                    **{k: v[:m] for k, v in extra.items()}}))
    return pd.concat(frames, ignore_index=True)[IMAGE_COLUMNS + DIAGNOSTIC_COLUMNS]


def _strong_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_pgd: torch.Tensor, robust: np.ndarray,
                eps: float, cfg: AttackConfig, generator: torch.Generator) -> dict[str, np.ndarray]:
    """Outcomes of the convergence check's PGD on (x, y): PGD's point where PGD fooled the image (or it was wrong
    to begin with), the strong run's strongest iterate on the ``robust`` images (correct before and after PGD)."""
    x_out = x_pgd.clone()
    todo = torch.as_tensor(robust, device=y.device)
    if bool(todo.any()):
        conv = cfg.convergence
        target_steps = (cfg.pgd.target_steps or cfg.pgd.steps) * conv.steps_factor
        x_out[todo] = pgd(model, x[todo], y[todo], eps, cfg.pgd.step_for(eps), cfg.pgd.steps * conv.steps_factor,
                          random_start=cfg.pgd.random_start, restarts=conv.restarts, generator=generator,
                          targets=cfg.pgd.targets, target_steps=target_steps)
    return model_outcomes(model, x_out, y)


def summarize_images(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Tidy metrics table from per-image rows: one row per (variant, seed, attack, ε, metric), metrics as defined in
    robustlora.evaluation.metrics, with Wilson intervals for proportions and normal intervals for mean probabilities.

    Groups by whichever of variant / seed the rows carry. Columns: those, then SUMMARY_COLUMNS.
    """
    by = [c for c in _GROUPS if c in df.columns] + ["attack", "eps", "eps_label"]
    return outcome_metrics(df, by, confidence)


def _value(v: float) -> float | None:
    """NaN (e.g. success rate with no correct image) -> None, which JSON can store."""
    return None if v is None or math.isnan(v) else float(v)


def _leaves(summary: pd.DataFrame) -> dict[tuple[str, ...], float]:
    """One seed's figures keyed by path: ('clean_accuracy',) and (attack, eps_label, short name)."""
    clean = summary.loc[summary["metric"] == "clean_accuracy", "value"]
    out = {("clean_accuracy",): float(clean.iloc[0])}  # the same clean columns under every attack and ε
    for row in summary[summary["metric"].isin(SHORT_NAMES)].itertuples(index=False):
        out[row.attack, row.eps_label, SHORT_NAMES[row.metric]] = float(row.value)
    return out


def _nest(leaves: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in leaves.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = v
    return out


def _one(df: pd.DataFrame, column: str, what: str) -> None:
    if column in df.columns and df[column].nunique() > 1:
        raise ValueError(f"{what} takes the rows of one {column}, got {sorted(df[column].unique().tolist())}")


def metrics_json(df: pd.DataFrame) -> dict:
    """The DVC metrics file of one variant from its per-image rows (a ``seed`` column is required).

    {"clean_accuracy": {"mean", "std"}, "fgsm": {"eps_8": {"asr": {"mean", "std"}, ...}}, "pgd": {...},
     "seeds": {"0": {"clean_accuracy": v, "fgsm": {"eps_8": {"asr": v, ...}}, ...}}}: mean and sample std (ddof=1,
    0 for one seed) across seeds of each seed's figure; NaN becomes None (valid JSON).
    """
    _one(df, "variant", "metrics_json")
    if "seed" not in df.columns:
        raise ValueError("metrics_json needs a 'seed' column (the training seed of each row's model)")
    summary = summarize_images(df)
    per_seed = {str(int(s)): _leaves(part) for s, part in summary.groupby("seed", sort=True)}
    paths = list(dict.fromkeys(p for leaves in per_seed.values() for p in leaves))
    across = {}
    for path in paths:
        # over the seeds that have the figure (the convergence check may run on the first seed only)
        stats = seed_summary([leaves[path] for leaves in per_seed.values() if path in leaves])
        mean = _value(stats["mean"])
        across[path] = {"mean": mean, "std": None if mean is None else _value(stats["std"])}
    out = _nest(across)
    out["seeds"] = {s: _nest({p: _value(v) for p, v in leaves.items()}) for s, leaves in per_seed.items()}
    return out


def flat_metrics(df: pd.DataFrame) -> dict[str, float]:
    """MLflow metrics of one model (one variant and seed) from its per-image rows: 'clean_accuracy', 'pgd/eps_8/asr',
    'fgsm/eps_2/robust_accuracy', ... (NaN kept)."""
    _one(df, "variant", "flat_metrics")
    _one(df, "seed", "flat_metrics")
    return {"/".join(path): v for path, v in _leaves(summarize_images(df)).items()}


def mean_metrics(summary: dict) -> dict[str, float]:
    """The across-seed means of a :func:`metrics_json` summary under flat MLflow names ('clean_accuracy',
    'pgd/eps_8/asr', ...); per-seed figures and undefined (None) means are left out."""
    out: dict[str, float] = {}

    def walk(node: dict, path: list[str]) -> None:
        if "mean" in node and not isinstance(node["mean"], dict):
            if node["mean"] is not None:
                out["/".join(path)] = float(node["mean"])
            return
        for key, value in node.items():
            if isinstance(value, dict) and key != "seeds":
                walk(value, path + [key])

    walk(summary, [])
    return out


def success_curves(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ε (in [0, 1] and in /255) of one variant's per-image rows: each attack's success rate and robust
    accuracy, averaged over seeds (for DVC plots). Columns eps, eps_255, <attack>_asr, <attack>_robust_accuracy."""
    _one(df, "variant", "success_curves")
    summary = summarize_images(df)
    rows = summary[summary["metric"].isin(["attack_success_rate", "robust_accuracy"])]
    column = rows["attack"] + "_" + rows["metric"].map(SHORT_NAMES)
    wide = rows.assign(column=column).pivot_table(index="eps", columns="column", values="value", aggfunc="mean")
    wide = wide.reset_index().sort_values("eps", ignore_index=True)
    wide.insert(1, "eps_255", (wide["eps"] * 255).round(3))
    wide.columns.name = None
    return wide


def attack_subset(n_val: int, n_images: int, seed: int) -> np.ndarray:
    """A fixed, deterministic subset of the val split: the same images for every variant and seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_val)[: min(n_images, n_val)])


def attacked_images(prepared_dir: Path, cfg: AttackConfig,
                    first: int | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The attack stage's val subset (uint8 NHWC images, int64 labels, their ids in the val split); ``first``: only
    its first N images, so every other attack (AutoAttack, black-box, transfer) is paired with PGD's rows."""
    val = load_split(prepared_dir, "val")
    idx = attack_subset(len(val), cfg.n_images, cfg.seed)
    if first is not None:
        idx = idx[:first]
    t = torch.from_numpy(idx)
    return val.images[t], val.labels[t], idx


def attack_variant(model_path: Path, prepared_dir: Path, cfg: AttackConfig, *,
                   progress: bool | None = None) -> pd.DataFrame:
    """FGSM and PGD over ε on the val subset: one row per attack x ε x image (IMAGE_COLUMNS + DIAGNOSTIC_COLUMNS)."""
    model, _ = load_variant(model_path)
    images, labels, idx = attacked_images(prepared_dir, cfg)
    return attack_suite(model, images, labels, cfg, image_ids=idx, progress=progress)
