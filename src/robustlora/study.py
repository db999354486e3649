"""What the pretrain, train and attack stages compute, as plain functions of configs and paths.

The stage commands only read params, call these and log to MLflow; a notebook can call them the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustlora.config import AttackConfig, FullConfig, ModelConfig, TrainConfig, VariantSpec
from robustlora.data import load_classes, load_split
from robustlora.models import (
    ModelError, build_model, load_backbone, load_checkpoint, load_imagenet_backbone, load_variant, pick_device,
    save_checkpoint, sha256_file,
)
from robustlora.lora import count_parameters
from robustlora.train import accuracy, fit

EpochCallback = Callable[[dict[str, float]], None]

def fingerprint(*parts: Any) -> str:
    """A hash of everything that defines a run (configs, data info, input files' stats), for safe resumption."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, os.PathLike)) and Path(part).is_file():
            part = sha256_file(part)  # content, not mtime: a `dvc checkout` of the same file still matches
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def pretrain_backbone(model_cfg: ModelConfig, cfg: TrainConfig, source_dir: Path | None, out_path: Path, *,
                      checkpoint_path: Path | None = None, progress: bool | None = None,
                      on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Resolve ``model.weights`` into ``out_path`` (weights + the wnids of the head) and return its metrics.

    ``pretrain``: train ResNet18 from scratch on the synthetic source domain; ``imagenet``: torchvision's weights;
    a path: a local checkpoint written by robustlora (``{'state_dict', 'wnids'}``).
    """
    if model_cfg.weights == "imagenet":
        state, wnids = load_imagenet_backbone()
        save_checkpoint(out_path, state, wnids, source="imagenet")
        return {"source": "imagenet", "classes": len(wnids)}
    if model_cfg.weights != "pretrain":
        if not Path(model_cfg.weights).is_file():
            raise ModelError(f"params.yaml: model.weights {model_cfg.weights!r} is neither pretrain, imagenet nor an "
                             "existing checkpoint file")
        ckpt = load_checkpoint(model_cfg.weights)
        save_checkpoint(out_path, ckpt["state_dict"], ckpt["wnids"], source=str(model_cfg.weights))
        return {"source": "checkpoint", "classes": len(ckpt["wnids"])}
    if source_dir is None:
        raise ModelError("model.weights 'pretrain' needs the prepared source domain (data/prepared/source)")
    device = pick_device(cfg.device, "pretrain.device")
    wnids = load_classes(source_dir)
    train, holdout, val = (load_split(source_dir, s) for s in ("train", "holdout", "val"))
    torch.manual_seed(cfg.seed)
    model = build_model(len(wnids), model_cfg.input_size)
    result = fit(model, train, holdout, cfg, device=device, checkpoint_path=checkpoint_path,
                 fingerprint=fingerprint(asdict(model_cfg), asdict(cfg), str(source_dir / "manifest.csv")),
                 progress=progress, on_epoch=on_epoch, desc="pretrain")
    model.load_state_dict(result.best_state)
    metrics = {"source": "pretrain", "classes": len(wnids), "val_accuracy": accuracy(model, val, cfg.eval_batch_size, device),
               "holdout_accuracy": result.best_holdout_accuracy, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 2),
               "images_per_second": round(result.images_per_second, 1)}
    save_checkpoint(out_path, result.best_state, wnids, source="pretrain", input_size=model_cfg.input_size)
    return metrics


def adapt(model: nn.Module, spec: VariantSpec, train_head: bool = False) -> nn.Module:
    """Make the parameters that ``spec`` trains trainable: all (full), the LoRA factors only (lora), none (none).

    ``train_head``: a freshly initialised head (model.head: new) is trained in every variant, in full.
    """
    if spec.adaptation == "full":
        model.requires_grad_(True)
    elif spec.adaptation == "lora":
        from robustlora.lora import apply_lora

        apply_lora(model, list(spec.targets), rank=int(spec.rank), alpha=float(spec.alpha))  # type: ignore[arg-type]
    else:
        model.requires_grad_(False)
    if train_head:
        model.fc.requires_grad_(True)
    return model


def train_variant(spec: VariantSpec, *, backbone_path: Path, prepared_dir: Path, model_cfg: ModelConfig,
                  cfg: TrainConfig, full_cfg: FullConfig, out_path: Path, checkpoint_path: Path | None = None,
                  progress: bool | None = None, on_epoch: EpochCallback | None = None,
                  extra_meta: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Adapt the pretrained backbone to the target domain as ``spec`` says; save the best weights to ``out_path``.

    Returns (metrics, per-epoch history). ``adaptation: none`` trains nothing and evaluates the pretrained model
    with its head sliced to the target classes.
    """
    device = pick_device(cfg.device)
    wnids = load_classes(prepared_dir)
    train, holdout, val = (load_split(prepared_dir, s) for s in ("train", "holdout", "val"))
    torch.manual_seed(cfg.seed)
    new_head = model_cfg.head == "new"
    model = adapt(load_backbone(backbone_path, wnids, model_cfg.input_size, model_cfg.head, cfg.seed), spec, new_head)
    trainable, total = count_parameters(model)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if trainable == 0:
        model.to(device)
        best_epoch, epochs_run, train_seconds, ips, holdout_acc = 0, 0, 0.0, 0.0, None
    else:
        result = fit(model, train, holdout, cfg, device=device, checkpoint_path=checkpoint_path,
                     train_batchnorm=full_cfg.train_batchnorm if spec.adaptation == "full" else False,
                     fingerprint=fingerprint(asdict(spec), asdict(model_cfg), asdict(cfg), asdict(full_cfg),
                                             str(backbone_path), str(prepared_dir / "manifest.csv")),
                     progress=progress, on_epoch=on_epoch, desc=f"train {spec.name}")
        model.load_state_dict(result.best_state)
        history = result.history
        best_epoch, epochs_run, train_seconds, ips = (result.best_epoch, result.epochs_run, result.train_seconds,
                                                      result.images_per_second)
        holdout_acc = result.best_holdout_accuracy
    metrics = {
        "val_accuracy": accuracy(model, val, cfg.eval_batch_size, device),
        "holdout_accuracy": holdout_acc if holdout_acc is not None else accuracy(model, holdout, cfg.eval_batch_size, device),
        "train_accuracy": accuracy(model, train, cfg.eval_batch_size, device),
        "trainable_params": trainable,
        "total_params": total,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(ips, 1),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    save_checkpoint(out_path, model.state_dict(), wnids, input_size=model_cfg.input_size,
                    variant={"adaptation": spec.adaptation, "targets": list(spec.targets), "rank": spec.rank,
                             "alpha": spec.alpha, "name": spec.name},
                    metrics=metrics, **(extra_meta or {}))
    return metrics, history


def attack_subset(n_val: int, n_images: int, seed: int) -> np.ndarray:
    """A fixed, deterministic subset of the val split: the same images for every variant."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_val)[: min(n_images, n_val)])


def attack_variant(model_path: Path, prepared_dir: Path, cfg: AttackConfig, *, device: str = "auto",
                   progress: bool | None = None) -> pd.DataFrame:
    """FGSM and PGD over ε on the val subset; the tidy table of robustness metrics."""
    from robustlora.evaluate import attack_suite

    model, _ = load_variant(model_path)
    dev = pick_device(device, "attack.device")
    val = load_split(prepared_dir, "val")
    idx = torch.from_numpy(attack_subset(len(val), cfg.n_images, cfg.seed))
    return attack_suite(
        model.to(dev), val.images[idx], val.labels[idx], fgsm_eps=list(cfg.fgsm_eps), pgd_eps=list(cfg.pgd_eps),
        pgd_steps=cfg.pgd_steps, pgd_rel_step_size=cfg.pgd_rel_step_size, pgd_step_size=cfg.pgd_step_size,
        pgd_random_start=cfg.pgd_random_start, pgd_restarts=cfg.pgd_restarts, batch_size=cfg.batch_size,
        device=dev, seed=cfg.seed, n_boot=cfg.n_boot, progress=progress,
    )


def success_curves(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ε (in [0,1] and in /255): success rate and robust accuracy per attack — for DVC plots."""
    rows = table[table["metric"].isin(["attack_success_rate", "robust_accuracy"])]
    from robustlora.evaluate import SHORT_NAMES  # the same short names as the metrics JSON and MLflow

    short = rows["metric"].map(SHORT_NAMES)
    wide = rows.assign(column=rows["attack"] + "_" + short).pivot_table(index="eps", columns="column", values="value")
    wide = wide.reset_index().sort_values("eps")
    wide.insert(1, "eps_255", (wide["eps"] * 255).round(3))
    wide.columns.name = None
    return wide
