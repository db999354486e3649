"""AutoAttack (Croce & Hein 2020) through the official package ``pyautoattack``, as per-image rows.

Conventions (the same everywhere in robustlora):
- images are float NCHW in [0, 1] (uint8 NHWC as stored is converted); normalisation is inside the model, which
  returns logits; ε is in [0, 1] pixel units (8/255, not 8); the threat model is L∞;
- the model runs in eval mode with autocast off (float32); every module's mode, every parameter's requires_grad
  and the global torch RNG are restored afterwards (pyautoattack reseeds the global RNG; FAB would otherwise
  write into param.grad);
- deterministic for a given ``cfg.seed``: every component is seeded with it, at every ε.

The components run one at a time on the images still robust, exactly as ``run_standard_evaluation`` runs them
(same order, same batches, same seeds), so each fooled image's row names the component that fooled it first.
pyautoattack's log is silenced unless ``verbose``; the warnings of its checks (logits, randomness, zero gradients,
Square beating the white-box attacks) come back as Python warnings, each once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from robustlora.attacks.inputs import (check_eps_grid, check_image_ids, check_images, progress_bar, resolve_device,
                                       to_batch)
from robustlora.attacks.outcomes import LINF_TOL, attack_rows, batched_logits, image_outcomes, linf_distances
from robustlora.formatting import eps_label
from robustlora.models.resnet import autocast_off, eval_mode

if TYPE_CHECKING:
    from pyautoattack import AutoAttack

    from robustlora.config import AutoAttackConfig

__all__ = ["autoattack_suite", "build_autoattack", "run_components", "runnable_components",
           "STANDARD_COMPONENTS"]

STANDARD_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")  # what version='standard' runs, in this order
# the DLR losses read the 3rd (untargeted) and 4th (targeted) largest logit: fewer classes is an IndexError
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


def autoattack_suite(model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     cfg: AutoAttackConfig, *, eps: Sequence[float] | None = None,
                     image_ids: Sequence[int] | np.ndarray | None = None, device: str | torch.device | None = None,
                     progress: bool | None = None, verbose: bool = False) -> pd.DataFrame:
    """AutoAttack (L∞) at every ε ([0, 1] pixels; default ``cfg.eps`` + ``cfg.sanity_eps``): one row per ε·image.

    images: uint8 NHWC or float NCHW in [0, 1]; labels: int64 (N,); image_ids: the images' ids in their split
    (default 0..N-1). ``device`` defaults to ``cfg.device``; the model is moved there. Images misclassified before
    the attack are not attacked (their row's point is the clean image). Columns IMAGE_COLUMNS + EXTRA_COLUMNS
    (attack 'autoattack'; queries NaN: AutoAttack does not count them; detail: the component that first fooled the
    image, '' for the rest); rows ordered by ε as given, then image.
    """
    eps_list = _eps_list(cfg, eps)
    y = check_images(images, labels)
    ids = check_image_ids(image_ids, len(y))
    device = resolve_device(cfg.device if device is None else device, "autoattack.device")
    model.to(device)
    x, y = to_batch(images, 0, len(y), device), y.to(device)
    clean_logits = batched_logits(model, x, cfg.batch_size)
    n_classes = clean_logits.shape[1]
    components = runnable_components(_requested(cfg), n_classes)
    clean = image_outcomes(clean_logits, y)

    frames = []
    bar = progress_bar(len(eps_list) * len(components), "autoattack", "run", progress)
    with bar:
        for e in eps_list:
            aa = build_autoattack(model, e, cfg, n_classes=n_classes, device=device, verbose=verbose)
            x_adv, component = run_components(aa, x, y, batch_size=cfg.batch_size, bar=bar)
            linf = _linf(x_adv, x, e)
            adv = image_outcomes(batched_logits(model, x_adv, cfg.batch_size), y)
            detail = np.where(clean["correct"] & ~adv["correct"], component, "")
            frames.append(attack_rows("autoattack", e, ids, y, clean, adv, linf=linf, detail=detail))
    return pd.concat(frames, ignore_index=True)


def build_autoattack(model: nn.Module, eps: float, cfg: AutoAttackConfig, *, n_classes: int,
                     device: torch.device, verbose: bool = False) -> AutoAttack:
    """A configured ``pyautoattack.AutoAttack`` at ``eps`` ([0, 1] pixels), L∞, seeded with ``cfg.seed``.

    version 'standard': the package's own standard settings (APGD-CE, APGD-T, FAB-T, Square; 100 iterations,
    9 targets, 5000 queries, one restart each). 'custom': ``cfg.attacks`` with APGD / APGD-T / FAB n_iter =
    ``cfg.n_iter``, APGD-T / FAB-T targets = ``cfg.n_target_classes``, Square queries = ``cfg.square_queries``,
    APGD one restart (untargeted FAB keeps the package's 5). Both: targets capped at ``n_classes`` - 1, and
    ``attacks_to_run`` holds only the components this many classes allows (see :func:`runnable_components`).
    """
    from pyautoattack import AutoAttack

    if cfg.version == "standard":
        aa = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device=device, seed=cfg.seed)
    else:
        aa = AutoAttack(model, norm="Linf", eps=float(eps), version="custom", attacks=list(cfg.attacks),
                        device=device, seed=cfg.seed)
        for attack in (aa.apgd, aa.apgd_targeted):
            _set_apgd_iterations(attack, cfg.n_iter)
        aa.fab.n_iter = cfg.n_iter
        aa.apgd.n_restarts = 1
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = cfg.n_target_classes
        aa.square.n_queries = cfg.square_queries
    # more targets than other classes: the targeted attacks would index past the logits
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_classes - 1)
    aa.attacks_to_run = runnable_components(aa.attacks_to_run, n_classes, warn=False)
    aa.verbose = verbose
    return aa


def run_components(aa: AutoAttack, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                   bar: tqdm | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Run ``aa.attacks_to_run`` one at a time, each on the images still robust; returns (x_adv, component).

    Equals ``aa.run_standard_evaluation(x, y, batch_size=batch_size)`` (same order, batches and seeds: every
    component reseeds itself), and also says, per image, which component fooled it first ('' where none did or the
    image was misclassified to begin with). x: float NCHW in [0, 1] on aa.device; y: int64 (N,).
    """
    names = list(aa.attacks_to_run)
    x = x.contiguous()  # the zero-gradient check .view()s the gradient: channels-last input (NHWC) would crash it
    x_adv, component = x.detach().clone(), np.full(len(y), "", dtype=object)
    with _attack_context(aa):
        robust = batched_logits(aa.model, x, batch_size).argmax(1).to(y.device) == y
        robust_accuracy = {"clean": robust.float().mean().item()}
        for name in names:
            if bar is not None:
                bar.set_postfix_str(f"{name} {eps_label(aa.epsilon)}")
            idx = robust.nonzero()[:, 0]
            if len(idx):  # pyautoattack's checks fail on an empty batch
                aa.attacks_to_run = [name]
                adv, pred = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                fooled = idx[pred != y[idx]]
                x_adv[fooled] = adv[pred != y[idx]]
                component[fooled.cpu().numpy()] = name
                robust[fooled] = False
            robust_accuracy[name] = robust.float().mean().item()
            if bar is not None:
                bar.update()
        aa.attacks_to_run = names
        # one component per call hides Square's success from the check run_standard_evaluation makes at its end
        _square_check(robust_accuracy, aa.logger)
    return x_adv, component


def runnable_components(names: Sequence[str], n_classes: int, *, warn: bool = True) -> list[str]:
    """The components of ``names`` that work with ``n_classes`` classes (APGD-DLR needs 3, APGD-T 4: their DLR
    losses read the 3rd / 4th largest logit); with ``warn``, one warning names those left out."""
    left_out = [n for n in names if n_classes < _MIN_CLASSES.get(n, 2)]
    if warn and left_out:
        needs = ", ".join(f"{n} needs >= {_MIN_CLASSES[n]}" for n in left_out)
        warnings.warn(f"autoattack: left out {', '.join(left_out)} ({needs} classes; the model has {n_classes})",
                      stacklevel=2)
    return [n for n in names if n not in left_out]


# ----------------------------------------------------------------------------- helpers


def _requested(cfg: AutoAttackConfig) -> list[str]:
    return list(STANDARD_COMPONENTS if cfg.version == "standard" else cfg.attacks)


def _set_apgd_iterations(attack, n_iter: int) -> None:
    """Set APGD's iterations and the step-size checkpoints its __init__ derives from them (setting n_iter alone
    would keep the 100-iteration schedule: with 10 iterations the step size would never be halved)."""
    attack.n_iter = attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


@contextlib.contextmanager
def _attack_context(aa: AutoAttack) -> Iterator[None]:
    """Eval mode, float32, no parameter gradients, the caller's RNG state and debugger tracer kept, log silenced."""
    device = torch.device(aa.device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    tracer = sys.gettrace()  # the dynamic-defence check calls sys.settrace(None)
    with eval_mode(aa.model), autocast_off(device), _frozen(aa.model), torch.random.fork_rng(devices=cuda), \
            _quiet(aa.logger, enabled=not aa.verbose):
        try:
            yield
        finally:
            sys.settrace(tracer)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """requires_grad off for every parameter (FAB calls backward(), which would fill param.grad), then restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet(logger: logging.Logger, enabled: bool) -> Iterator[None]:
    """Silence ``logger``; afterwards re-raise its warnings (the checks' findings) as Python warnings, each once."""
    if not enabled:
        yield
        return
    collect, saved = _Collect(), (logger.handlers, logger.propagate)
    logger.handlers, logger.propagate = [collect], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved
        for message in dict.fromkeys(collect.messages):
            warnings.warn(f"pyautoattack: {message}", stacklevel=4)


def _square_check(robust_accuracy: dict[str, float], logger: logging.Logger) -> None:
    from pyautoattack import checks

    checks.check_square_sr(robust_accuracy, logger=logger)


def _linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> np.ndarray:
    """‖x_adv − x‖∞ per image; refuses points outside the ε-ball or [0, 1] (an attack bug, never a result)."""
    linf = linf_distances(x_adv, x)
    if (linf > eps + LINF_TOL).any() or (len(x) and (x_adv.min() < 0 or x_adv.max() > 1)):
        raise RuntimeError(f"autoattack returned points outside the ε-ball ∩ [0, 1] at ε = {eps:.6g}: "
                           f"max ‖δ‖∞ {linf.max():.6g}, range [{x_adv.min():.4g}, {x_adv.max():.4g}]")
    return linf


def _eps_list(cfg: AutoAttackConfig, eps: Sequence[float] | None) -> list[float]:
    """The ε to run: ``eps`` if given, else cfg.eps plus cfg.sanity_eps (when set and not already there)."""
    if eps is None:
        grid = [float(e) for e in cfg.eps]
        return grid + ([float(cfg.sanity_eps)] if cfg.sanity_eps is not None and cfg.sanity_eps not in grid else [])
    return check_eps_grid(eps, "autoattack")
