"""What the pretrain and train stages compute, as plain functions of configs and paths (attacks: robustlora.evaluation.suite).

The stage commands only read params, call these and log to MLflow; a notebook can call them the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from robustlora import layout
from robustlora.config import ModelConfig, TrainConfig, VariantSpec, to_dict
from robustlora.data.dataset import load_classes, load_split
from robustlora.errors import ModelError
from robustlora.io import file_digest
from robustlora.models import adaptation
from robustlora.models.lora import count_parameters
from robustlora.models.resnet import (
    accuracy, build_model, load_backbone, load_checkpoint, load_imagenet_backbone, pick_device, save_checkpoint,
)
from robustlora.training.loop import fit

EpochCallback = Callable[[dict[str, float]], None]


def resume_fingerprint(*parts: Any) -> str:
    """The resume key of a training run: a hash of everything that defines it (configs, and the content of the input
    files named by path), so a checkpoint is resumed only by the run that wrote it (robustlora.training.loop.fit)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, os.PathLike)) and Path(part).is_file():
            part = file_digest(part)  # content, not mtime: a `dvc checkout` of the same file still matches
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# the stages' resume points: at most one a minute (each costs ~0.4 s on 2 CPU cores, one per epoch was ~40 s of the
# default run), so a killed stage loses at most a minute of training; ROBUSTLORA_RESUME_EVERY_S sets another spacing
# (0: after every epoch, as the end-to-end kill test uses)
# metrics that measure the machine, not the model: kept out of the model files
TIMINGS = ("train_seconds", "images_per_second", "wall_seconds")

RESUME_EVERY_S = float(os.environ.get("ROBUSTLORA_RESUME_EVERY_S", "60"))


def pretrain_backbone(model_cfg: ModelConfig, cfg: TrainConfig, source_dir: Path | None, out_path: Path, *,
                      checkpoint_path: Path | None = None, progress: bool | None = None,
                      on_epoch: EpochCallback | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Resolve ``model.weights`` into ``out_path`` (weights + the wnids of the head); return (metrics, history).

    ``pretrain``: train ResNet18 from scratch on the synthetic source domain; ``imagenet``: torchvision's weights;
    a path: a local checkpoint written by robustlora (``{'state_dict', 'wnids'}``).
    """
    if model_cfg.weights == "imagenet":
        state, wnids = load_imagenet_backbone()
        save_checkpoint(out_path, state, wnids, source="imagenet")
        return {"source": "imagenet", "classes": len(wnids)}, []
    if model_cfg.weights != "pretrain":
        if not Path(model_cfg.weights).is_file():
            raise ModelError(f"params.yaml: model.weights {model_cfg.weights!r} is neither pretrain, imagenet nor an "
                             "existing checkpoint file")
        ckpt = load_checkpoint(model_cfg.weights)
        save_checkpoint(out_path, ckpt["state_dict"], ckpt["wnids"], source=str(model_cfg.weights))
        return {"source": "checkpoint", "classes": len(ckpt["wnids"])}, []
    if source_dir is None:
        raise ModelError("model.weights 'pretrain' needs the prepared source domain (data/prepared/source)")
    device = pick_device(cfg.device, "pretrain.device")
    wnids = load_classes(source_dir)
    train, holdout, val = (load_split(source_dir, s) for s in ("train", "holdout", "val"))
    torch.manual_seed(cfg.seed)
    model = build_model(len(wnids), model_cfg.input_size)
    result = fit(model, train, holdout, cfg, device=device, checkpoint_path=checkpoint_path,
                 fingerprint=resume_fingerprint(to_dict(model_cfg), to_dict(cfg), str(source_dir / layout.MANIFEST)),
                 progress=progress, on_epoch=on_epoch, desc="pretrain", resume_every_s=RESUME_EVERY_S)
    model.load_state_dict(result.best_state)
    metrics = {"source": "pretrain", "classes": len(wnids),
               "val_accuracy": accuracy(model, val, cfg.eval_batch_size, device),
               "holdout_accuracy": result.best_holdout_accuracy, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "max_epochs": cfg.max_epochs,
               "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
               "train_seconds": round(result.train_seconds, 2), "images_per_second": round(result.images_per_second, 1)}
    save_checkpoint(out_path, result.best_state, wnids, source="pretrain", input_size=model_cfg.input_size)
    return metrics, result.history


def train_variant(spec: VariantSpec, cfg: TrainConfig | None, *, backbone_path: Path, prepared_dir: Path,
                  model_cfg: ModelConfig, out_path: Path, seed: int, device: str = "auto",
                  eval_batch_size: int = 256, checkpoint_path: Path | None = None, progress: bool | None = None,
                  on_epoch: EpochCallback | None = None,
                  extra_meta: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Adapt the pretrained backbone to the target domain as ``spec`` says, with training seed ``seed``.

    ``cfg``: the training loop of this variant and seed (``Params.fit_config``); None for a kind that trains
    nothing (``none``), which evaluates the pretrained model with its head sliced to the target classes.
    The best weights (by holdout accuracy) go to ``out_path``. Returns (metrics, per-epoch history).
    """
    dev = pick_device(cfg.device if cfg is not None else device)
    eval_bs = cfg.eval_batch_size if cfg is not None else eval_batch_size
    wnids = load_classes(prepared_dir)
    train, holdout, val = (load_split(prepared_dir, s) for s in ("train", "holdout", "val"))
    torch.manual_seed(seed)
    backbone = load_backbone(backbone_path, wnids, model_cfg.input_size, model_cfg.head, seed)
    model = adaptation.prepare(backbone, spec, train_head=model_cfg.head == "new")
    trainable, total = count_parameters(model)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    best_epoch, epochs_run, train_seconds, ips, holdout_acc, robust_acc = 0, 0, 0.0, 0.0, None, None
    train_attack_acc, stop_reason = None, None
    if trainable and cfg is not None:
        result = fit(model, train, holdout, cfg, device=dev, checkpoint_path=checkpoint_path,
                     train_batchnorm=adaptation.trains_batchnorm(spec),
                     fingerprint=resume_fingerprint(to_dict(spec), to_dict(model_cfg), to_dict(cfg),
                                                    str(backbone_path), str(prepared_dir / layout.MANIFEST)),
                     progress=progress, on_epoch=on_epoch, desc=f"train {spec.name} seed {seed}",
                     resume_every_s=RESUME_EVERY_S)
        model.load_state_dict(result.best_state)
        history = result.history
        best_epoch, epochs_run, train_seconds, ips = (result.best_epoch, result.epochs_run, result.train_seconds,
                                                      result.images_per_second)
        best = result.history[result.best_epoch - 1] if result.history else {}
        holdout_acc = best.get("holdout_accuracy")
        robust_acc = best.get("holdout_robust_accuracy")  # adversarial training: the selection PGD's accuracy
        train_attack_acc = best.get("holdout_train_attack_accuracy")
        stop_reason = result.stop_reason
    model.to(dev)
    metrics = {
        "val_accuracy": accuracy(model, val, eval_bs, dev),
        "holdout_accuracy": holdout_acc if holdout_acc is not None else accuracy(model, holdout, eval_bs, dev),
        **({"holdout_robust_accuracy": robust_acc} if robust_acc is not None else {}),
        **({"holdout_train_attack_accuracy": train_attack_acc} if train_attack_acc is not None else {}),
        "train_accuracy": accuracy(model, train, eval_bs, dev),
        "trainable_params": trainable,
        "total_params": total,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "max_epochs": cfg.max_epochs if cfg is not None else 0,
        # what ended training: "patience" (early stopping), "max_epochs" (the cap); absent for an untrained arm
        **({"stopped_early": stop_reason == "patience", "stop_reason": stop_reason} if stop_reason else {}),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(ips, 1),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    # the model file carries the metrics without the timings (those are in metrics/train): the same weights give the
    # same bytes, so the attack stages' row cache (which fingerprints model files) reuses the rows of a retrained or
    # resumed seed that ends with the weights it had
    kept = {k: v for k, v in metrics.items() if k not in TIMINGS}
    save_checkpoint(out_path, model.state_dict(), wnids, input_size=model_cfg.input_size,
                    variant=adaptation.checkpoint_meta(spec), seed=seed, metrics=kept, **(extra_meta or {}))
    return metrics, history


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """``{"seeds": {...}, "mean": {...}, "std": {...}}`` over the numeric metrics of each seed (std: ddof=1, 0 for one)."""
    from robustlora.stats import seed_summary

    keys = [k for k, v in next(iter(per_seed.values())).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict[str, Any] = {"seeds": {str(s): m for s, m in sorted(per_seed.items())}, "mean": {}, "std": {}}
    for k in keys:
        s = seed_summary([m[k] for m in per_seed.values()])
        out["mean"][k], out["std"][k] = float(s["mean"]), float(s["std"])
    return out
