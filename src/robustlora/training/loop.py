"""The training loop: SGD with momentum, lr schedule, early stopping on holdout accuracy, resumable checkpoints.

The uint8 dataset lives on the training device and is augmented there (random crop with padding, horizontal flip),
so a GPU epoch is not input-bound. All randomness of the loop comes from one seeded generator whose state is saved
in every checkpoint: a killed run resumed from its last epoch ends with the same weights as an uninterrupted one.
Training steps run under bfloat16 autocast on CUDA; the holdout accuracy that selects the best epoch is
evaluated in float32 on every device (robustlora.models.resnet.accuracy).

The optimizer is robustlora.training.optim.SGD (torch.optim.SGD's arithmetic) and the lr is set per epoch from
:func:`lr_factor`: constructing a torch.optim optimizer imports torch._dynamo, seconds of every stage's start-up.
Schedules: ``cosine`` (to 0 at max_epochs: the cap, not convergence, ends the run), ``step``, and ``plateau``
(constant after warm-up, ×gamma after ``decay_patience`` epochs without a better holdout score): early stopping after
``patience`` such epochs ends the run, and :attr:`FitResult.stop_reason` says which ended it.

Adversarial fine-tuning (``cfg.adversarial``): every batch is replaced by its PGD examples (Madry) or gets the
TRADES loss (robustlora.training.adversarial), crafted in eval mode. The best epoch is chosen (``select: robust``,
Rice et al. 2020) by the holdout accuracy under multi-step PGD (``select_steps``, step ``select_rel_step_size``·ε,
random start, each image's strongest iterate, a fixed seed): not under the training attack, whose accuracy rises
during catastrophic overfitting while PGD accuracy collapses (Wong et al. 2020). Both are in the history:
``holdout_robust_accuracy`` (the selection PGD) and ``holdout_train_attack_accuracy``. The training attack's random
starts come from a generator seeded once per epoch from the loop's generator, so resumption stays exact.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlora.attacks.gradient import pgd
from robustlora.data.dataset import Split
from robustlora.io import atomic_path
from robustlora.models.resnet import accuracy, eval_mode, prepare_input
from robustlora.training.adversarial import AdversarialConfig, adversarial_loss, pgd_examples
from robustlora.training.optim import SGD

if TYPE_CHECKING:
    from robustlora.config import TrainConfig


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_holdout_accuracy: float  # what selected the best epoch: clean, or PGD accuracy (adversarial, select robust)
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    resumed_from_epoch: int = 0
    # what ended the run: "patience" (early stopping), "max_epochs" (the cap) or "interrupted" (stop_after_epochs)
    stop_reason: str = "max_epochs"

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "patience"


def draw_augmentation(n: int, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop offsets (dy, dx in [0, 2·padding]) and flip flags for ``n`` images, as an n x 3 tensor.

    Drawn on the CPU from the loop's generator, so CPU and GPU runs draw the same numbers; the caller moves them to
    the device once per epoch instead of once per batch (each host-to-device copy of pageable memory is a sync).
    """
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    return torch.cat([offsets, flips.long()[:, None]], dim=1)


def augment(images: torch.Tensor, padding: int, params: torch.Tensor) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip of a uint8 N x H x W x C batch, on its device.

    ``params``: N x 3 (dy, dx, flip) from :func:`draw_augmentation`, on the images' device.
    """
    n, h, w, _ = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (0, 0, padding, padding, padding, padding))
        rows = (params[:, 0, None] + torch.arange(h, device=device))[:, :, None]
        cols = (params[:, 1, None] + torch.arange(w, device=device))[:, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None], rows, cols]
    return torch.where(params[:, 2, None, None, None].bool(), images.flip(2), images)


def _autocast(device: torch.device):
    """bf16 autocast for training steps on CUDA; evaluation (models.predict) always runs in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _set_batchnorm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def lr_factor(epoch: int, cfg: TrainConfig, decay: float = 1.0) -> float:
    """The lr of ``epoch`` (0-based) as a fraction of ``cfg.lr``: linear warm-up over ``cfg.warmup_epochs``
    (epoch e < w gets (e+1)/(w+1)), then cosine decay to 0 at ``max_epochs``, step decay by ``gamma``, or (plateau)
    ``decay``: the product of the plateau decays so far, which the loop keeps in its state."""
    warm = cfg.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    e = epoch - warm
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / max(cfg.max_epochs - warm, 1)))
    if cfg.schedule == "step":
        return cfg.gamma ** (e // cfg.step_size)
    return decay


def adversarial_config(settings: Any) -> AdversarialConfig | None:
    """params' AdversarialSettings -> robustlora.training.adversarial.AdversarialConfig (None stays None)."""
    if settings is None:
        return None
    return AdversarialConfig(method=settings.method, eps=settings.eps, steps=settings.steps,
                             step_size=settings.step_size, random_start=settings.random_start, beta=settings.beta)


def selection_attack(settings: Any) -> AdversarialConfig:
    """The holdout attack that selects an adversarially trained arm's best epoch: PGD of ``select_steps`` steps of
    ``select_rel_step_size``·ε from a random start at the training ε (params' AdversarialSettings)."""
    return AdversarialConfig(method="pgd", eps=settings.eps, steps=settings.select_steps,
                             step_size=settings.select_rel_step_size * settings.eps, random_start=True)


def robust_accuracy(model: nn.Module, split: Split, at: AdversarialConfig, batch_size: int, device: torch.device,
                    seed: int = 0, keep: str = "last") -> float:
    """Share of ``split`` still classified correctly after PGD with ``at``'s settings (``keep='last'``: the last
    iterate, as in training; ``'best'``: each image's strongest iterate, as the attack stage), in float32 and eval
    mode; the random starts are seeded by ``seed``. NaN if empty."""
    if len(split) == 0:
        return float("nan")
    generator = torch.Generator(device).manual_seed(seed)
    correct = 0
    for i in range(0, len(split), batch_size):
        x = prepare_input(split.images[i:i + batch_size].to(device), device)
        y = split.labels[i:i + batch_size].to(device)
        if keep == "last":
            x_adv = pgd_examples(model, x, y, at, generator)
        else:
            x_adv = pgd(model, x, y, at.eps, at.step, at.steps, random_start=at.random_start, generator=generator,
                        keep="best").detach()
        with torch.no_grad(), eval_mode(model):
            correct += int((model(x_adv).float().argmax(1) == y).sum())
    return correct / len(split)


def fit(
    model: nn.Module,
    train: Split,
    holdout: Split,
    cfg: TrainConfig,
    *,
    device: torch.device,
    train_batchnorm: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    fingerprint: str = "",
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
    stop_after_epochs: int | None = None,
    resume_every_s: float = 0.0,
) -> FitResult:
    """Train the parameters of ``model`` that require grad; return the weights with the best holdout accuracy.

    ``checkpoint_path``: written atomically after every epoch (the epoch before kept beside it, ``*.prev.pt``) and
    resumed from when its ``fingerprint`` matches (the caller passes a hash of everything that defines the run); a
    damaged one is discarded with one line on stderr and the run goes on from the one before, else from scratch. ``on_epoch`` receives each epoch's metrics;
    epochs before a resume are not replayed to it (the run that trained them reported them).
    ``stop_after_epochs`` ends the call early (as a kill would), for tests of resumption. ``resume_every_s``: write
    the resume point after an epoch only once this many seconds passed since the last one (0: every epoch), and never
    after the last epoch: a resume point costs ~0.4 s for ResNet18 (~90 MB with the optimizer's momentum), a tenth of
    a CPU epoch; a kill then loses at most this much work. A finished run writes its final state (the caller removes
    it once its outputs are written), so resuming it only reads it back.
    """
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit: the model has no trainable parameters")
    optimizer = SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    holdout_dev = Split(holdout.images.to(device), holdout.labels)
    at = adversarial_config(cfg.adversarial)
    select_at = selection_attack(cfg.adversarial) if at is not None else None
    select_robust = at is not None and cfg.adversarial.select == "robust"

    # lr_decay / since_decay: schedule plateau's decays so far and the epochs since the last better score or decay
    state: dict[str, Any] = {"epoch": 0, "best_state": None, "best_acc": -1.0, "best_epoch": 0, "bad_epochs": 0,
                             "history": [], "train_seconds": 0.0, "images_seen": 0, "lr_decay": 1.0,
                             "since_decay": 0}
    start_epoch = 0
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    saved, source = _load_resume_point(ckpt, fingerprint, desc) if ckpt is not None else (None, None)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        state = saved["loop"]
        start_epoch = state["epoch"]
        tqdm.write(f"{desc}: resuming from {source} after epoch {start_epoch}")
    resumed_from = start_epoch
    saved_at = time.monotonic()

    epochs = tqdm(range(start_epoch, cfg.max_epochs), desc=desc, unit="epoch", initial=start_epoch,
                  total=cfg.max_epochs, disable=disable)
    n = len(labels)
    for epoch in epochs:
        if state["bad_epochs"] >= cfg.patience:
            break
        model.train()
        if not train_batchnorm:
            _set_batchnorm_eval(model)
        optimizer.lr = lr = cfg.lr * lr_factor(epoch, cfg, state["lr_decay"])
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator).to(device)
        aug = draw_augmentation(n, cfg.crop_padding, cfg.flip, generator).to(device)
        if at is not None:  # one draw per epoch from the loop's generator: a resumed run crafts the same examples
            at_generator = torch.Generator(device).manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        # running sums stay on the device: no host sync per batch
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        batches = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=disable)
        for i in batches:
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single image
                continue
            x = prepare_input(augment(images[idx], cfg.crop_padding, aug[i:i + cfg.batch_size]), device)
            y = labels[idx]
            with _autocast(device):
                if at is None:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                else:  # the logits of the inputs trained on: PGD examples (pgd) or clean (trades)
                    loss, logits = adversarial_loss(model, x, y, at, at_generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
        loss_sum, correct = loss_sum.item(), correct.item()  # also waits for the device
        seconds = time.perf_counter() - t0
        holdout_acc = accuracy(model, holdout_dev, cfg.eval_batch_size, device)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "holdout_accuracy": holdout_acc, "lr": lr, "epoch_seconds": seconds,
                   "images_per_second": seen / seconds if seconds > 0 else 0.0}
        if at is not None:  # the selection PGD (each image's strongest iterate) and the training attack
            t1 = time.perf_counter()
            metrics["holdout_robust_accuracy"] = robust_accuracy(model, holdout_dev, select_at, cfg.eval_batch_size,
                                                                 device, seed=cfg.seed, keep="best")
            metrics["holdout_train_attack_accuracy"] = robust_accuracy(model, holdout_dev, at, cfg.eval_batch_size,
                                                                       device, seed=cfg.seed)
            metrics["holdout_attack_seconds"] = time.perf_counter() - t1
            holdout_acc = metrics["holdout_robust_accuracy"] if select_robust else holdout_acc
        state["history"].append(metrics)
        state["train_seconds"] += seconds
        state["images_seen"] += seen
        # strict '>' keeps the earliest best epoch; NaN (empty holdout) always counts as "no worse"
        if holdout_acc > state["best_acc"] or math.isnan(holdout_acc) or state["best_state"] is None:
            state.update(best_acc=holdout_acc, best_epoch=epoch + 1, bad_epochs=0, since_decay=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
            state["since_decay"] += 1
            if cfg.schedule == "plateau" and epoch + 1 >= cfg.warmup_epochs and \
                    state["since_decay"] >= cfg.decay_patience:
                state.update(lr_decay=state["lr_decay"] * cfg.gamma, since_decay=0)
        state["epoch"] = epoch + 1
        epochs.set_postfix(loss=f"{metrics['train_loss']:.3f}", holdout=f"{metrics['holdout_accuracy']:.3f}",
                           **({"robust": f"{metrics['holdout_robust_accuracy']:.3f}"} if at is not None else {}))
        if on_epoch is not None:
            on_epoch(metrics)
        last = state["bad_epochs"] >= cfg.patience or epoch + 1 >= cfg.max_epochs
        if ckpt is not None and not last and time.monotonic() - saved_at >= resume_every_s:
            _save_resume_point(ckpt, fingerprint, model, optimizer, generator, state)
            saved_at = time.monotonic()
        if state["bad_epochs"] >= cfg.patience:
            break
        if stop_after_epochs is not None and epoch + 1 - resumed_from >= stop_after_epochs:
            break
    epochs.close()
    if ckpt is not None and state["epoch"] > resumed_from and stop_after_epochs is None:
        # the finished state: a stage killed after this run (while training its next seed) skips it when resumed
        _save_resume_point(ckpt, fingerprint, model, optimizer, generator, state)
    stop_reason = ("patience" if state["bad_epochs"] >= cfg.patience else
                   "max_epochs" if state["epoch"] >= cfg.max_epochs else "interrupted")
    return FitResult(
        best_state=state["best_state"],
        best_epoch=state["best_epoch"],
        best_holdout_accuracy=state["best_acc"],
        epochs_run=state["epoch"],
        history=state["history"],
        train_seconds=state["train_seconds"],
        images_per_second=state["images_seen"] / state["train_seconds"] if state["train_seconds"] > 0 else 0.0,
        resumed_from_epoch=resumed_from,
        stop_reason=stop_reason,
    )


# --- resume points ---------------------------------------------------------------------------------------------------
# <name>.pt is the last epoch's state, <name>.prev.pt the one before (the last good state should the newer one be
# damaged). Each carries a digest of its content: torch.load reads a file with flipped bytes without complaint.


def previous_resume_point(path: str | os.PathLike) -> Path:
    """Where the resume point before ``path``'s is kept: ``seed_0.pt`` -> ``seed_0.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def discard_resume_point(path: str | os.PathLike) -> None:
    """Remove a finished run's resume points (``path`` and :func:`previous_resume_point`)."""
    Path(path).unlink(missing_ok=True)
    previous_resume_point(path).unlink(missing_ok=True)


def _save_resume_point(path: Path, fingerprint: str, model: nn.Module, optimizer: SGD, generator, state) -> None:
    payload = {
        "fingerprint": fingerprint,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "generator": generator.get_state(),
        "loop": state,
    }
    payload["digest"] = _content_digest(payload)
    with atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:  # same bytes for the same state (see models.save_checkpoint)
            torch.save(payload, f)
        if path.exists():  # the complete new file is in place before the old one steps back
            os.replace(path, previous_resume_point(path))


def _load_resume_point(path: Path, fingerprint: str, desc: str) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest intact resume point of ``path`` (itself, else :func:`previous_resume_point`) that belongs to
    ``fingerprint``, and the file it came from; (None, None) to start from scratch. A damaged file is deleted and
    said so in one line on stderr, with what happens instead."""
    from tqdm.auto import tqdm

    damaged = []
    for candidate in (path, previous_resume_point(path)):
        if not candidate.exists():
            continue
        saved, why = _read_resume_point(candidate)
        if saved is None:
            damaged.append(f"{candidate}: {why}")
            candidate.unlink(missing_ok=True)
            continue
        if saved.get("fingerprint") != fingerprint:
            _say_damaged(desc, damaged, "training from scratch")
            tqdm.write(f"{desc}: ignoring {candidate}: it belongs to another configuration")
            return None, None
        _say_damaged(desc, damaged, f"resuming from {candidate} after epoch {saved['loop']['epoch']}")
        return saved, candidate
    _say_damaged(desc, damaged, "training from scratch")
    return None, None


def _read_resume_point(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the saved state, '') or (None, why it cannot be used)."""
    from robustlora.models.resnet import load_failure

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, not a torch file: torch raises many types
        return None, f"truncated or not a checkpoint ({load_failure(e)})"
    if not isinstance(saved, dict) or not {"fingerprint", "model", "optimizer", "generator", "loop"} <= set(saved):
        return None, "not a resume point (expected fingerprint, model, optimizer, generator, loop)"
    digest = saved.pop("digest", None)
    if digest != _content_digest(saved):
        return None, "corrupt (its content does not match its digest)"
    return saved, ""


def _say_damaged(desc: str, damaged: list[str], instead: str) -> None:
    if damaged:
        print(f"{desc}: discarded {'; '.join(damaged)}; {instead}", file=sys.stderr, flush=True)


def _content_digest(obj: Any) -> str:
    """A digest of a resume point's content: every tensor's dtype, shape and bytes, every other value's repr, the
    keys and their order."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k, v in o.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                walk(v)
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def _to_cpu(obj: Any) -> Any:
    """Optimizer state moved to CPU, so a checkpoint written on a GPU loads on a CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
