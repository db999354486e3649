"""The defences stage's work: the feature-squeezing detector on one arm, and the detector-driven switching system.

Both are evaluated as the literature asks (Carlini & Wagner 2017; Athalye et al. 2018; Tramèr et al. 2020): against
the attacks the arms already face (FGSM, PGD with the attack section's settings) and against an adaptive attack that
knows the defence. An adaptive row is, per image, the stronger of the adaptive attack's point and PGD's (an informed
attacker would try both), so it never reports less success than PGD against the same defence.

Per-image rows (one per arm or system x seed x attack x ε x image), images in [0, 1] pixel space, ε in [0, 1]
pixels, models in eval mode. Pure functions of models and tensors: the stage reads params, files and MLflow.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustlora.attacks.gradient import fgsm, pgd
from robustlora.attacks.inputs import to_batch
from robustlora.config import AttackConfig, SqueezeConfig, SwitchingConfig
from robustlora.defences.columns import SQUEEZE_COLUMNS, SWITCHING_ATTACKS, SWITCHING_COLUMNS, SYSTEM_COLUMNS
from robustlora.defences.squeeze import Squeezer, adaptive_pgd, detect, detector_scores, fit_threshold
from robustlora.defences.switching import AdapterBank, SwitchingClassifier, adapter_from_state_dict, switch_cost
from robustlora.evaluation.rowcache import FINGERPRINT
from robustlora.formatting import eps_label
from robustlora.models.resnet import eval_mode, load_variant

__all__ = ["SQUEEZE_COLUMNS", "SWITCHING_COLUMNS", "SWITCHING_ATTACKS", "SYSTEM_COLUMNS", "squeezers", "fit_detector",
           "squeeze_rows", "switching_bank", "switching_rows", "system_rows", "switching_table", "switching_cost"]



def squeezers(cfg: SqueezeConfig) -> list[Squeezer]:
    """The detector's squeezers from params (bit-depth reduction, median smoothing)."""
    out = []
    if cfg.bit_depth is not None:
        out.append(Squeezer("bit_depth", cfg.bit_depth))
    if cfg.median is not None:
        out.append(Squeezer("median", cfg.median))
    return out


def _pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return to_batch(images, 0, len(images), device)


def _rows(attack: str, eps: float, image_ids: np.ndarray, labels: torch.Tensor, clean_correct: np.ndarray,
          adv_correct: np.ndarray, **columns: Any) -> pd.DataFrame:
    """One attack's per-image rows at ε: the columns every defence table starts with, then ``columns``."""
    return pd.DataFrame({"attack": attack, "eps": np.float64(eps), "eps_label": eps_label(eps),
                         "image": np.asarray(image_ids, np.int32), "label": labels.cpu().numpy().astype(np.int16),
                         "clean_correct": clean_correct, "adv_correct": adv_correct, **columns})


def fit_detector(model: nn.Module, holdout_images: torch.Tensor, cfg: SqueezeConfig, device: torch.device,
                 batch_size: int = 256) -> tuple[float, float]:
    """(threshold, its empirical false positive rate) on the clean holdout images (uint8 NHWC or float NCHW)."""
    scores = detector_scores(model, _pixels(holdout_images, device), squeezers(cfg), batch_size)
    threshold = fit_threshold(scores, cfg.fpr)
    return threshold, float(detect(scores, threshold).double().mean())  # float32 would make 4/40 > 0.1


@torch.no_grad()
def _judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sq: Sequence[Squeezer], threshold: float,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct, detector score, flagged) per image."""
    correct, scores = [], []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            correct.append((model(xb).float().argmax(1) == y[i:i + batch_size]).cpu())
            scores.append(detector_scores(model, xb, sq, batch_size).cpu())
    c, s = torch.cat(correct).numpy(), torch.cat(scores).numpy()
    return c, s, s > threshold


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def squeeze_rows(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, image_ids: np.ndarray,
                 holdout_images: torch.Tensor, cfg: SqueezeConfig, attack: AttackConfig,
                 device: torch.device | str) -> pd.DataFrame:
    """The squeezing detector on one model: threshold on the holdout at ``cfg.fpr``, then per ε of ``cfg.eps``
    FGSM, PGD (``attack.pgd``'s settings, seeded by ``attack.seed``) and the adaptive attack (BPDA; per image the
    stronger of it and PGD against classifier + detector). One row per attack x ε x image (SQUEEZE_COLUMNS)."""
    device = torch.device(device)
    model.to(device).eval()
    sq = squeezers(cfg)
    bs = attack.batch_size
    threshold, holdout_fpr = fit_detector(model, holdout_images, cfg, device, bs)
    x, y = _pixels(images, device), labels.to(device)
    clean_correct, clean_score, clean_flagged = _judge(model, x, y, sq, threshold, bs)
    generator = torch.Generator(device=device).manual_seed(attack.seed)
    frames = []
    for eps in cfg.eps:
        step = attack.pgd.step_for(eps)
        x_pgd = _batched(lambda a, b: pgd(model, a, b, eps, step, attack.pgd.steps,
                                          random_start=attack.pgd.random_start, restarts=attack.pgd.restarts,
                                          generator=generator), x, y, bs)
        ad = cfg.adaptive
        x_ada = _batched(lambda a, b: adaptive_pgd(model, a, b, eps, ad.rel_step_size * eps, ad.steps, sq, threshold,
                                                   lam=ad.lam, ce_cap=ad.ce_cap, generator=generator), x, y, bs)
        outcomes = {"fgsm": _judge(model, _batched(lambda a, b: fgsm(model, a, b, eps), x, y, bs), y, sq, threshold,
                                   bs),
                    "pgd": _judge(model, x_pgd, y, sq, threshold, bs)}
        ada = _judge(model, x_ada, y, sq, threshold, bs)
        # the stronger point per image against classifier + detector: fooled and unflagged beats anything else
        evades_pgd = ~outcomes["pgd"][0] & ~outcomes["pgd"][2]
        evades_ada = ~ada[0] & ~ada[2]
        take_pgd = evades_pgd & ~evades_ada
        outcomes["adaptive"] = tuple(np.where(take_pgd, p, a) for p, a in zip(outcomes["pgd"], ada))
        for name, (adv_correct, adv_score, adv_flagged) in outcomes.items():
            frames.append(_rows(name, eps, image_ids, labels, clean_correct, adv_correct,
                                 clean_score=clean_score.astype(np.float32), adv_score=adv_score.astype(np.float32),
                                 clean_flagged=clean_flagged, adv_flagged=adv_flagged,
                                 threshold=np.float64(threshold), holdout_fpr=np.float64(holdout_fpr)))
    return pd.concat(frames, ignore_index=True)[SQUEEZE_COLUMNS]


# ----------------------------------------------------------------------------- switching


def switching_bank(standard_path, robust_path, names: tuple[str, str],
                   modules_to_save: Sequence[str] = ()) -> AdapterBank:
    """One backbone (the standard model itself) holding both adapters, in eval mode.

    ``modules_to_save``: modules every adapter trained itself and carries (``("fc",)`` under ``model.head: new``).
    Refuses (ModelError naming the key) a robust model whose other weights differ from the standard one's.
    """
    backbone, _ = load_variant(standard_path)
    robust, _ = load_variant(robust_path)
    adapters = {names[0]: adapter_from_state_dict(backbone.state_dict(), backbone, str(standard_path),
                                                  modules_to_save),
                names[1]: adapter_from_state_dict(robust.state_dict(), backbone, str(robust_path), modules_to_save)}
    return AdapterBank(backbone.eval(), adapters, modules_to_save)


class _Router:
    """The detector on the standard adapter: a flagged input (score > threshold) goes to the robust adapter (1)."""

    def __init__(self, bank: AdapterBank, sq: Sequence[Squeezer], threshold: float, batch_size: int) -> None:
        self.bank, self.sq, self.threshold, self.batch_size = bank, list(sq), threshold, batch_size
        self.standard = _Fixed(bank, 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return detect(detector_scores(self.standard, x, self.sq, self.batch_size), self.threshold).long()


class _Fixed(nn.Module):
    """The bank with one adapter for every input, as a plain classifier (differentiable w.r.t. x)."""

    def __init__(self, bank: AdapterBank, index: int) -> None:
        super().__init__()
        self.bank, self.index = bank, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bank(x, self.bank.names[self.index])


def switching_rows(bank: AdapterBank, images: torch.Tensor, labels: torch.Tensor, image_ids: np.ndarray,
                   holdout_images: torch.Tensor, squeeze_cfg: SqueezeConfig, cfg: SwitchingConfig,
                   attack: AttackConfig, device: torch.device | str) -> tuple[pd.DataFrame, float]:
    """The switching system (adapter 0 standard, 1 robust; the squeezing detector of the standard adapter routes)
    under each of SWITCHING_ATTACKS at every ε of ``cfg.eps``; (rows with SWITCHING_COLUMNS, the threshold)."""
    device = torch.device(device)
    bank.to(device).eval()
    sq = squeezers(squeeze_cfg)
    bs = attack.batch_size
    standard, robust = _Fixed(bank, 0).eval(), _Fixed(bank, 1).eval()
    threshold, _ = fit_detector(standard, holdout_images, squeeze_cfg, device, bs)
    router = _Router(bank, sq, threshold, bs)
    system = SwitchingClassifier(bank, router).eval()
    x, y = _pixels(images, device), labels.to(device)

    @torch.no_grad()
    def judge(points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        correct, switched = [], []
        for i in range(0, len(points), bs):
            correct.append((system(points[i:i + bs]).float().argmax(1) == y[i:i + bs]).cpu())
            switched.append((system.last_route == 1).cpu())
        return torch.cat(correct).numpy(), torch.cat(switched).numpy()

    clean_correct, clean_switched = judge(x)
    generator = torch.Generator(device=device).manual_seed(attack.seed)
    ad, frames = squeeze_cfg.adaptive, []
    for eps in cfg.eps:
        step, steps = attack.pgd.step_for(eps), attack.pgd.steps
        kw = dict(random_start=attack.pgd.random_start, restarts=attack.pgd.restarts, generator=generator)
        points = {
            "pgd_standard": _batched(lambda a, b: pgd(standard, a, b, eps, step, steps, **kw), x, y, bs),
            "pgd_robust": _batched(lambda a, b: pgd(robust, a, b, eps, step, steps, **kw), x, y, bs),
            "adaptive_evade": _batched(lambda a, b: adaptive_pgd(standard, a, b, eps, ad.rel_step_size * eps, ad.steps,
                                                                 sq, threshold, lam=ad.lam, ce_cap=ad.ce_cap,
                                                                 generator=generator), x, y, bs),
            "pgd_system": _batched(lambda a, b: pgd(system, a, b, eps, step, steps, **kw), x, y, bs),
        }
        outcomes = {name: judge(p) for name, p in points.items()}
        worst_correct = np.logical_and.reduce([c for c, _ in outcomes.values()])
        # the route of the attack that won (the first that fooled the system), else that of pgd_system
        won = [next((name for name in points if not outcomes[name][0][i]), "pgd_system") for i in range(len(y))]
        outcomes["worst"] = (worst_correct, np.array([outcomes[w][1][i] for i, w in enumerate(won)], dtype=bool))
        for name, (adv_correct, adv_switched) in outcomes.items():
            frames.append(_rows(name, eps, image_ids, labels, clean_correct, adv_correct,
                                 clean_switched=clean_switched, adv_switched=adv_switched))
    return pd.concat(frames, ignore_index=True)[SWITCHING_COLUMNS], threshold


def system_rows(rows: pd.DataFrame, standard: str, robust: str, seed: int) -> pd.DataFrame:
    """:func:`switching_rows`' rows of one seed with SYSTEM_COLUMNS in front (system '<standard>+<robust>');
    in place."""
    for column, value in zip(SYSTEM_COLUMNS[::-1], (seed, robust, standard, f"{standard}+{robust}")):
        rows.insert(0, column, value)
    return rows


def switching_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The switching table: every seed's :func:`system_rows` (tagged by the row cache) one after another; without
    any (no switching system configured) the empty table of its columns."""
    if not frames:
        return pd.DataFrame(columns=[*SYSTEM_COLUMNS, *SWITCHING_COLUMNS, FINGERPRINT])
    return pd.concat(frames, ignore_index=True)


def _spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "q05": float(np.quantile(v, 0.05)), "q95": float(np.quantile(v, 0.95))}


def switching_cost(bank: AdapterBank, standard_path, robust_path, images: torch.Tensor, cfg: SwitchingConfig,
                   device: torch.device) -> dict[str, Any]:
    """Seconds per batch of serving both adapters four ways, each timed ``cfg.cost_repeats`` times (median, 5-95 %):
    switching in place (``bank.use`` + forward), picking one of two held merged models, ``load_state_dict`` of a
    full state from memory, and reloading the model file from disk; plus the parameter bytes held. The bank is
    moved to ``device``."""
    bank.to(device)
    x = _pixels(images[: cfg.cost_batch_size], device)
    cost = switch_cost(bank, x, repeats=cfg.cost_repeats)
    paths = [standard_path, robust_path]
    disk = []
    for r in range(cfg.cost_repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            model, _ = load_variant(paths[r % 2])
            model.to(device)(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        disk.append(time.perf_counter() - t0)
    adapter_bytes = sum(t.numel() * t.element_size() for t in bank.adapter(bank.names[0]).values())
    return {"device": str(device), "batch_size": int(x.shape[0]), "n_adapters": len(bank.names),
            "repeats": cfg.cost_repeats,
            **{key: _spread(cost[f"{key}_runs"]) for key in ("switch_s", "merged_s", "reload_s")},
            "reload_disk_s": _spread(disk), "bank_bytes": int(cost["bank_bytes"]),
            "full_models_bytes": int(cost["full_models_bytes"]), "adapter_bytes": int(adapter_bytes)}
