"""The paper-scale study's cost on one GPU, through the library: s/epoch of every arm, attack throughput, and a
projected wall time per training seed. Ends with one summary table (markdown), also written as JSON to --out.

    PYTHONPATH=src python benchmarks/paper_scale.py --device cuda                 # a GPU: ~1-2 min on an H100 (est.)
    PYTHONPATH=src python benchmarks/paper_scale.py --device cuda --out "$OUT/paper_scale.json"   # via the device tool
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/paper_scale.py --quick --device cpu   # smoke test, < 60 s

The runtime is an estimate from the H200 figures in benchmarks/README.md (not yet run on a GPU). --budget-s (default
240 s) bounds it: a part or arm that would start later is skipped and named in the table, so the run stays under ~5
minutes even on a slower card (lower it if the device time left is short). --quick (tiny sizes, every code path) writes its
JSON to the temp folder unless --out is given, so a smoke run never overwrites the GPU figures.

Needs only torch (+ the repo's src, put on sys.path by the script, as benchmarks/bench_attacks.py does).
The library modules used directly import nothing else: robustlora.models.resnet (build_model, prepare_input, to_pixels,
predict, pick_device), robustlora.models.lora (apply_lora, count_parameters), robustlora.attacks.gradient (pgd, fgsm, input_gradient),
robustlora.io (atomic_path). What needs pydantic / pandas / pillow / tqdm is used only when it imports, else the table
says what was replaced:
- robustlora.models.adaptation.TARGET_SETS (pydantic): else a verbatim copy below;
- robustlora.training.loop (pydantic, pandas, pillow via config/data): its per-batch helpers (draw_augmentation, augment,
  _autocast, _set_batchnorm_eval), else verbatim copies below; and the cross-check through train.fit itself;
- robustlora.evaluation.suite.attack_suite (pydantic, pandas, tqdm): the cross-check of one attack-stage batch.

THE DATA ARE SYNTHETIC. This is a throughput measurement: 200 classes x 500 training images + 200 x 50 val images,
64x64 RGB uint8 NHWC (Tiny ImageNet's shape and storage), each a class's random coarse colour pattern plus per-image
noise, made directly on the device (as fit keeps the uint8 dataset there). Weights are random (build_model): the
cost of a training step or of FGSM/PGD (fixed steps, one restart, no early stop) does not depend on the weights or
on what the images show. No accuracy figure here means anything, and none is printed.

Parts, in order, each timed with the device synchronised before and after:
1. Training, per arm (baseline = full fine-tuning with BatchNorm trained, lr 0.02 / wd 5e-4; lora_fc, lora_fc_conv1,
   lora_layer4, lora_all_convs = apply_lora(rank 4, alpha 1) on TARGET_SETS fc, fc+conv1, layer4, all_convs, lr 0.1 /
   wd 0; lr does not change the cost). A minimal loop that mirrors train.fit's per-batch work, because fit itself
   needs a pydantic TrainConfig and a pandas-importing Split and runs whole epochs: model on the device, channels_last
   on CUDA, SGD (momentum 0.9) over the parameters that require grad, model.train() (+ BatchNorm kept in eval for
   the LoRA arms, as apply_lora and fit's train_batchnorm=False do); per epoch a randperm and draw_augmentation on
   the CPU generator moved to the device once; per batch of 256: index the uint8 images on the device, augment
   (crop padding 4, flip), prepare_input, forward under bf16 autocast on CUDA (none on CPU), cross-entropy on
   float32 logits, zero_grad(set_to_none), backward, step, loss/correct sums kept on the device. --warmup batches,
   then --rounds rounds of --batches batches; the median s/batch gives img/s, extrapolated to an epoch of 100,000
   images (+ the per-epoch randperm/augmentation draw, timed separately). Also per arm: the float32 holdout
   evaluation fit runs after each epoch (models.predict, batch 256) and the float32 input gradient at the attack
   batch (attacks.input_gradient), which scales the attack cost per arm (LoRA layers merge W+dW in every forward).
2. Attacks on the baseline model, float32 as the attack stage runs them (evaluate.attack_suite: autocast off, the
   model's weights in the default memory format as load_variant returns it, the images from models.to_pixels as
   evaluate._to_batch makes them, which leaves them with channels_last strides): batch 500 at 64 px, FGSM (attacks.fgsm, eps 8/255) and PGD-20
   (attacks.pgd, eps 8/255, step 2/255, random start, keep='best'; the step size does not change the cost), and the
   clean forward pass; images/s.
3. Cross-checks through the library when it imports: train.fit for 2 epochs on 35 batches (epoch 2's own
   epoch_seconds vs the mirror loop), and evaluate.attack_suite on one batch of 500 with the paper's attack settings
   (FGSM + PGD-20 at 2, 4, 8/255 + the unbounded sanity run; the convergence check off) vs the sum of part 2's pieces.
4. A PROJECTION (arithmetic on the measured rates, not a measurement) of the paper command of README.md
   ("The paper's configuration"): train.max_epochs=50, patience 5, batch 256, data.holdout 0.2 (so 80,000 training
   and 20,000 holdout images per epoch), 5 training arms (pretrained trains nothing; it is evaluated and attacked
   once, not per seed), attack.n_images=10000 in batches of 500, FGSM + PGD-20 over eps [2/255, 4/255, 8/255] + the
   unbounded sanity PGD; at 50 epochs and at ~20 (a typical early stop); per training seed and for 5 seeds. Left
   out: download/preprocess (bench_preprocess.py: ~10 s for 110,000 images on 2 cores), fit's per-epoch bookkeeping
   (lr scheduler step, copying the best weights to the CPU), process start-up and model loading per stage, MLflow logging, the report, the default convergence check (6 images, first seed), and every
   attack of the `paper-attacks` experiment (AutoAttack, the ART black-box attacks, transfer): their throughput at
   64 px is what benchmarks/gpu_attacks.py part 3 measures (bench_attacks.py rows).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustlora.attacks.gradient import fgsm, input_gradient, pgd  # noqa: E402
from robustlora.io import atomic_path  # noqa: E402
from robustlora.models.lora import apply_lora, count_parameters  # noqa: E402
from robustlora.models.resnet import build_model, pick_device, predict, prepare_input, to_pixels  # noqa: E402

START = time.perf_counter()

# The paper's configuration (README.md, "The paper's configuration"; params.yaml for what it does not override).
PAPER = {
    "classes": 200, "train_per_class": 500, "val_per_class": 50, "size": 64, "input_size": 64,
    "holdout": 0.2,                     # data.holdout: 80,000 images trained on per epoch, 20,000 evaluated
    "batch_size": 256, "eval_batch_size": 256, "crop_padding": 4, "momentum": 0.9,
    "max_epochs": 50, "typical_epochs": 20, "patience": 5, "seeds": 5,
    "attack_images": 10_000, "attack_batch": 500, "pgd_steps": 20,
    "eps": [2 / 255, 4 / 255, 8 / 255], "sanity_eps": 1.0, "rel_step_size": 0.5,
}
LORA_RANK, LORA_ALPHA = 4, 1.0           # params.yaml lora.rank / lora.alpha
FULL_LR, FULL_WD, LORA_LR, LORA_WD = 0.02, 5e-4, 0.1, 0.0   # params.yaml full / lora (the cost does not depend on them)

# A verbatim copy of robustlora.models.adaptation.TARGET_SETS, used only where that module cannot import (no pydantic).
_TARGET_SETS_COPY: dict[str, tuple[str, ...]] = {
    "fc": ("fc",),
    "fc+conv1": ("fc", "conv1"),
    "layer4": ("fc", "layer4.*.conv*", "layer4.*.downsample.0"),
    "all_convs": ("fc", "conv1", "layer*.*.conv*", "layer*.*.downsample.0"),
}
ARMS = {  # arm -> (kind, target set); the study's variant names where params.yaml has them
    "baseline": ("full", None),
    "lora_fc": ("lora", "fc"),
    "lora_fc_conv1": ("lora", "fc+conv1"),
    "lora_layer4": ("lora", "layer4"),
    "lora_all_convs": ("lora", "all_convs"),
}


def elapsed() -> float:
    return time.perf_counter() - START


def why_not(module: str) -> str | None:
    """None if ``module`` imports, else the one-line reason."""
    try:
        importlib.import_module(module)
    except Exception as e:  # an ImportError, or a broken install of it
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, from an idle device to an idle device."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- fit's per-batch helpers
# Verbatim copies of robustlora.training.loop's helpers, used only where robustlora.training.loop cannot import.


def _draw_augmentation_copy(n: int, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    return torch.cat([offsets, flips.long()[:, None]], dim=1)


def _augment_copy(images: torch.Tensor, padding: int, params: torch.Tensor) -> torch.Tensor:
    n, h, w, _ = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (0, 0, padding, padding, padding, padding))
        rows = (params[:, 0, None] + torch.arange(h, device=device))[:, :, None]
        cols = (params[:, 1, None] + torch.arange(w, device=device))[:, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None], rows, cols]
    return torch.where(params[:, 2, None, None, None].bool(), images.flip(2), images)


def _autocast_copy(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _set_batchnorm_eval_copy(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Helpers:
    """fit's per-batch helpers: robustlora.training.loop's own when it imports, else the verbatim copies above."""

    def __init__(self) -> None:
        self.why = why_not("robustlora.training.loop")
        if self.why is None:
            from robustlora.training import loop as train

            self.draw_augmentation, self.augment = train.draw_augmentation, train.augment
            self.autocast, self.set_batchnorm_eval = train._autocast, train._set_batchnorm_eval
            self.source = "robustlora.training.loop"
        else:
            self.draw_augmentation, self.augment = _draw_augmentation_copy, _augment_copy
            self.autocast, self.set_batchnorm_eval = _autocast_copy, _set_batchnorm_eval_copy
            self.source = f"verbatim copies (robustlora.training.loop: {self.why.split(':')[0]})"


def target_sets() -> tuple[dict[str, tuple[str, ...]], str]:
    why = why_not("robustlora.models.adaptation")
    if why is None:
        from robustlora.models.adaptation import TARGET_SETS

        return dict(TARGET_SETS), "robustlora.models.adaptation.TARGET_SETS"
    return dict(_TARGET_SETS_COPY), f"a verbatim copy (robustlora.models.adaptation: {why.split(':')[0]})"


# ----------------------------------------------------------------------------- data and models


def synthetic_split(classes: int, per_class: int, size: int, device: torch.device,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x size x size x 3 images on ``device`` (a class's coarse random colour pattern + per-image noise) and
    int64 labels; made in chunks so no float copy of the whole set is ever held."""
    g = torch.Generator(device=device).manual_seed(seed)
    coarse = torch.rand(classes, 3, 8, 8, generator=g, device=device)
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.arange(classes, device=device).repeat_interleave(per_class)
    n = len(labels)
    images = torch.empty(n, size, size, 3, dtype=torch.uint8, device=device)
    for i in range(0, n, 10_000):
        lab = labels[i:i + 10_000]
        noise = torch.rand(len(lab), 3, size, size, generator=g, device=device)
        x = (0.7 * patterns[lab] + 0.3 * noise).mul_(255).round_()
        images[i:i + len(lab)] = x.to(torch.uint8).permute(0, 2, 3, 1)
    return images, labels


def make_arm(arm: str, sets: dict[str, tuple[str, ...]], classes: int, input_size: int) -> tuple[nn.Module, dict]:
    """A fresh Classifier prepared as the arm's kind prepares it (adaptation.Full / Lora.prepare)."""
    kind, target_set = ARMS[arm]
    torch.manual_seed(0)
    model = build_model(classes, input_size)
    if kind == "full":
        model.requires_grad_(True)
        setting = {"lr": FULL_LR, "weight_decay": FULL_WD, "train_batchnorm": True}
    else:
        apply_lora(model, list(sets[target_set]), rank=LORA_RANK, alpha=LORA_ALPHA)
        setting = {"lr": LORA_LR, "weight_decay": LORA_WD, "train_batchnorm": False, "targets": list(sets[target_set])}
    trainable, total = count_parameters(model)
    return model, setting | {"trainable_params": trainable, "total_params": total}


# ----------------------------------------------------------------------------- part 1: training


def train_rates(arm: str, sets, images, labels, val_images, val_labels, args, device, h: Helpers) -> dict[str, Any]:
    """The mirror of fit's per-batch work on one arm: s/batch, img/s, the per-epoch draw; + eval and attack-grad."""
    model, setting = make_arm(arm, sets, args.classes, args.input_size)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=setting["lr"], momentum=PAPER["momentum"],
                                weight_decay=setting["weight_decay"])
    generator = torch.Generator().manual_seed(0)
    n, bs, pad = len(labels), args.batch, PAPER["crop_padding"]
    model.train()
    if not setting["train_batchnorm"]:
        h.set_batchnorm_eval(model)
    state: dict[str, Any] = {}

    def draw() -> None:  # fit's per-epoch work before the first batch
        state["perm"] = torch.randperm(n, generator=generator).to(device)
        state["aug"] = h.draw_augmentation(n, pad, True, generator).to(device)
        state["loss_sum"] = torch.zeros((), device=device)
        state["correct"] = torch.zeros((), dtype=torch.long, device=device)
        state["i"] = 0

    def step() -> None:
        i = state["i"]
        if i + bs > n:
            i = 0
        idx = state["perm"][i:i + bs]
        x = prepare_input(h.augment(images[idx], pad, state["aug"][i:i + bs]), device)
        y = labels[idx]
        with h.autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["loss_sum"] += loss.detach() * len(idx)
        state["correct"] += (logits.argmax(1) == y).sum()
        state["i"] = i + bs

    def batches(k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                step()
            state["loss_sum"].item()  # fit reads its sums once per epoch: that read waits for the device too
        return run

    draw_s = [time_it(draw, device) for _ in range(args.rounds)]
    time_it(batches(args.warmup), device)
    per_batch = [time_it(batches(args.batches), device) / args.batches for _ in range(args.rounds)]
    s_batch = statistics.median(per_batch)
    out = {"arm": arm, **setting, "batch": bs, "timed_batches": args.batches * args.rounds,
           "s_per_batch_median": s_batch, "s_per_batch_best": min(per_batch),
           "train_img_per_s": bs / s_batch, "epoch_draw_s": statistics.median(draw_s), "draw_images": n}
    out["s_per_epoch_100k"] = 100_000 / out["train_img_per_s"] + out["epoch_draw_s"] * 100_000 / n

    # fit's holdout evaluation after every epoch: models.predict (float32, eval mode, batch eval_batch_size)
    k = min(len(val_images), args.eval_batch * args.eval_batches)
    predict(model, val_images[:args.eval_batch], args.eval_batch, device)  # warm-up
    t = statistics.median(time_it(lambda: predict(model, val_images[:k], args.eval_batch, device), device)
                          for _ in range(args.rounds))
    out["eval_img_per_s"] = k / t

    # the attack stage's unit of work on this arm: a float32 input gradient at the attack batch (attack_suite runs with
    # autocast off, on load_variant's model, whose weights are in the default memory format)
    model.to(memory_format=torch.contiguous_format)
    xa = to_pixels(val_images[:args.attack_batch])  # as evaluate._to_batch makes it (channels_last strides from NHWC)
    ya = val_labels[:args.attack_batch].clone()
    input_gradient(model, xa, ya)  # warm-up
    out["attack_grad_s"] = statistics.median(time_it(lambda: input_gradient(model, xa, ya), device)
                                             for _ in range(args.rounds))
    return out  # the model and optimizer go with this frame; main empties the CUDA cache between arms


# ----------------------------------------------------------------------------- part 2: attacks


def attack_rates(sets, val_images, val_labels, args, device) -> dict[str, Any]:
    """FGSM, PGD and the clean forward pass on the baseline model at the attack batch, float32, as attack_suite."""
    model, _ = make_arm("baseline", sets, args.classes, args.input_size)
    model.to(device).eval()
    b = args.attack_batch
    x = to_pixels(val_images[:b])  # as evaluate._to_batch makes it: float in [0, 1], channels_last strides from NHWC
    y = val_labels[:b].clone()
    gen = torch.Generator(device=device).manual_seed(0)
    eps, step = 8 / 255, 2 / 255

    def forward() -> None:
        with torch.no_grad():
            model(x)

    runners = {
        "forward": forward,
        "fgsm": lambda: fgsm(model, x, y, eps),
        "pgd": lambda: pgd(model, x, y, eps, step, args.pgd_steps, random_start=True, generator=gen),
    }
    out: dict[str, Any] = {"batch": b, "pgd_steps": args.pgd_steps, "eps": eps, "step_size": step}
    for name, fn in runners.items():
        fn()  # warm-up
        times = [time_it(fn, device) for _ in range(args.attack_rounds)]
        out[f"{name}_s_median"], out[f"{name}_s_best"] = statistics.median(times), min(times)
        out[f"{name}_img_per_s"] = b / statistics.median(times)
    return out


def stage_batch_estimate(att: dict[str, Any], n_pgd: int, steps: int) -> float:
    """Seconds of one attack-stage batch on the baseline, from part 2's pieces: clean forward, FGSM's gradient,
    3 FGSM outcome forwards, then per PGD ε one PGD run (scaled to ``steps``) and its outcome forward."""
    pgd_s = att["pgd_s_median"] * steps / att["pgd_steps"]
    return 4 * att["forward_s_median"] + att["fgsm_s_median"] + n_pgd * (pgd_s + att["forward_s_median"])


# ----------------------------------------------------------------------------- part 3: library cross-checks


def fit_check(arm: str, sets, images, labels, args, device) -> dict[str, Any]:
    """train.fit itself: 2 epochs on (warmup + batches) batches, empty holdout; epoch 2's own epoch_seconds."""
    from robustlora.config import TrainConfig
    from robustlora.data.dataset import Split
    from robustlora.training.loop import fit

    model, setting = make_arm(arm, sets, args.classes, args.input_size)
    n = min(len(labels), (args.warmup + args.batches) * args.batch)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))[:n].to(labels.device)
    cfg = TrainConfig(lr=setting["lr"], weight_decay=setting["weight_decay"], momentum=PAPER["momentum"],
                      batch_size=args.batch, max_epochs=2, warmup_epochs=1, patience=5,
                      crop_padding=PAPER["crop_padding"], flip=True, eval_batch_size=args.eval_batch, seed=0)
    empty = Split(images[:0], labels[:0])
    result = fit(model, Split(images[perm], labels[perm]), empty, cfg, device=device,
                 train_batchnorm=setting["train_batchnorm"], progress=False)
    last = result.history[-1]
    return {"images": n, "epoch_seconds": last["epoch_seconds"], "img_per_s": last["images_per_second"]}


def attack_suite_check(sets, val_images, val_labels, args, device) -> dict[str, Any]:
    """evaluate.attack_suite on one batch with the paper's attack settings (convergence check off)."""
    from robustlora.config import AttackConfig, ConvergenceConfig, PgdConfig
    from robustlora.evaluation.suite import attack_suite

    model, _ = make_arm("baseline", sets, args.classes, args.input_size)
    model.eval()
    b = args.attack_batch
    cfg = AttackConfig(n_images=b, batch_size=b, seed=0, eps=tuple(PAPER["eps"]),
                       pgd=PgdConfig(steps=args.pgd_steps, rel_step_size=PAPER["rel_step_size"],
                                     sanity_eps=PAPER["sanity_eps"]),
                       convergence=ConvergenceConfig(n_images=0))
    imgs, labs = val_images[:b].cpu(), val_labels[:b].cpu()  # the stage reads its images from the host
    attack_suite(model, imgs[: min(b, 2)], labs[: min(b, 2)], cfg, device=device, progress=False)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    rows = attack_suite(model, imgs, labs, cfg, device=device, progress=False)
    sync(device)
    return {"batch": b, "seconds": time.perf_counter() - t0, "rows": len(rows)}


# ----------------------------------------------------------------------------- part 4: projection


def project(train: dict[str, dict], att: dict[str, Any]) -> dict[str, Any]:
    """Wall time of the paper command per training seed and for 5 seeds, from the measured rates (arithmetic)."""
    p = PAPER
    n_total = p["classes"] * p["train_per_class"]
    n_hold = round(n_total * p["holdout"])
    n_train, n_val = n_total - n_hold, p["classes"] * p["val_per_class"]
    n_pgd = len(p["eps"]) + (1 if p["sanity_eps"] not in p["eps"] else 0)
    batches = math.ceil(p["attack_images"] / p["attack_batch"])
    base_batch = stage_batch_estimate(att, n_pgd, p["pgd_steps"])
    grad_base = train["baseline"]["attack_grad_s"]
    arms: dict[str, Any] = {}
    for arm, r in train.items():
        epoch = n_train / r["train_img_per_s"] + r["epoch_draw_s"] * n_train / r["draw_images"] \
            + n_hold / r["eval_img_per_s"]
        final_eval = (n_val + n_train) / r["eval_img_per_s"]  # train_variant: val + train accuracy (holdout from fit)
        attack = batches * base_batch * r["attack_grad_s"] / grad_base
        arms[arm] = {"epoch_s": epoch, "final_eval_s": final_eval, "attack_s": attack,
                     **{f"train_{e}ep_s": e * epoch for e in (p["max_epochs"], p["typical_epochs"])}}
    per_seed = {e: sum(a[f"train_{e}ep_s"] + a["final_eval_s"] + a["attack_s"] for a in arms.values())
                for e in (p["max_epochs"], p["typical_epochs"])}
    b = train["baseline"]
    pretrained = (n_val + n_hold + n_train) / b["eval_img_per_s"] + batches * base_batch  # once per study
    return {
        "arms": arms, "per_seed_s": per_seed, "pretrained_once_s": pretrained,
        "five_seeds_s": {e: p["seeds"] * s + pretrained for e, s in per_seed.items()},
        "attack_batch_estimate_s": base_batch, "pgd_runs_per_batch": n_pgd, "attack_batches": batches,
        "train_images_per_epoch": n_train, "holdout_images_per_epoch": n_hold,
    }


# ----------------------------------------------------------------------------- output


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h ({s:,.0f} s)"
    if s >= 60:
        return f"{s / 60:.1f} min ({s:,.0f} s)"
    return f"{s:.3g} s"


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("part", "setting", "figure", "source")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]

    def line(r) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every code path: a smoke test on a CPU")
    parser.add_argument("--out", default=None, help="the JSON (default benchmarks/paper_scale.json; --quick: the "
                                                    "temp folder's paper_scale.quick.json)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no part (or arm) after this many seconds of the run; skipped ones are named")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--warmup", type=int, default=5, help="untimed training batches per arm")
    parser.add_argument("--batches", type=int, default=30, help="timed training batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per arm (median reported)")
    parser.add_argument("--attack-rounds", type=int, default=3, help="timed calls of each attack (median reported)")
    parser.add_argument("--no-checks", dest="checks", action="store_false", help="skip part 3 (library cross-checks)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    p = PAPER
    args.classes, args.size, args.input_size = p["classes"], p["size"], p["input_size"]
    args.train_per_class, args.val_per_class = p["train_per_class"], p["val_per_class"]
    args.batch, args.eval_batch, args.eval_batches = p["batch_size"], p["eval_batch_size"], 20
    args.attack_batch, args.pgd_steps = p["attack_batch"], p["pgd_steps"]
    if args.quick:  # 64 px as in the paper, everything else tiny: ~30 s on one CPU thread
        args.classes, args.train_per_class, args.val_per_class = 10, 20, 5
        args.batch, args.eval_batch, args.eval_batches = 8, 8, 2
        args.warmup, args.batches, args.rounds, args.attack_rounds = 1, 2, 1, 1
        args.attack_batch, args.pgd_steps = 8, 2
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "paper_scale.quick.json" if args.quick else ROOT / "benchmarks" / "paper_scale.json")

    device = pick_device(args.device, "--device")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    print(f"device={device} ({gpu}) torch={torch.__version__} python={sys.version.split()[0]} "
          f"cudnn.allow_tf32={tf32[0]} matmul.allow_tf32={tf32[1]} quick={args.quick} budget={args.budget_s:.0f}s")
    if device.type != "cuda":
        print("note: not a GPU: every figure below is a smoke test of this script, not a result")
    helpers = Helpers()
    sets, sets_source = target_sets()
    print(f"fit's per-batch helpers: {helpers.source}; target sets: {sets_source}")
    for module in ("robustlora.training.loop", "robustlora.models.adaptation", "robustlora.evaluation.suite"):
        why = why_not(module)
        if why:
            print(f"  {module} does not import here: {why}")

    rows: list[tuple[str, str, str, str]] = [
        ("environment", "device", f"{device} ({gpu})", "info"),
        ("environment", "torch / python", f"{torch.__version__} / {sys.version.split()[0]}", "info"),
        ("environment", "TF32 (cudnn, matmul)", f"{tf32[0]}, {tf32[1]}", "info"),
        ("environment", "mode", "--quick smoke test (tiny sizes)" if args.quick else "paper scale", "info"),
        ("environment", "fit helpers / target sets", f"{helpers.source} / {sets_source}", "info"),
    ]
    report: dict[str, Any] = {"device": str(device), "device_name": gpu, "torch": torch.__version__,
                              "python": sys.version.split()[0], "tf32": {"cudnn": tf32[0], "matmul": tf32[1]},
                              "quick": args.quick, "budget_s": args.budget_s, "paper": p,
                              "helpers": helpers.source, "target_sets": sets_source, "skipped": [], "notes": []}

    def src(kind: str) -> str:  # the table's source column; a --quick run is a smoke test, not a result
        return f"smoke test, {kind}" if args.quick else kind

    def skip(what: str, why: str) -> None:
        print(f"skipped {what}: {why}")
        report["skipped"].append(f"{what}: {why}")
        rows.append(("skipped", what, why, "-"))

    # data
    t0 = time.perf_counter()
    images, labels = synthetic_split(args.classes, args.train_per_class, args.size, device, seed=0)
    val_images, val_labels = synthetic_split(args.classes, args.val_per_class, args.size, device, seed=1)
    sync(device)
    t_data = time.perf_counter() - t0
    data = f"{len(labels):,} train + {len(val_labels):,} val, {args.size}x{args.size} RGB uint8, {args.classes} classes"
    print(f"\n[0] synthetic data on {device} (throughput only): {data}, made in {t_data:.2f} s")
    rows.append(("data", "synthetic, on the device", data, "info"))
    report["data"] = {"train": len(labels), "val": len(val_labels), "size": args.size, "classes": args.classes,
                      "seconds": t_data}

    # part 1
    train: dict[str, dict] = {}
    levers = "bf16 autocast + channels_last" if device.type == "cuda" else "float32"
    setting = f"batch {args.batch}, {args.input_size} px, {levers}, {args.warmup} warm-up + {args.rounds}x{args.batches} timed"
    print(f"\n[1] training, mirror of fit's per-batch work: {setting}")
    for arm in args.arms:
        if elapsed() > args.budget_s:
            skip(f"training {arm}", f"past the {args.budget_s:.0f} s budget")
            continue
        try:
            r = train_rates(arm, sets, images, labels, val_images, val_labels, args, device, helpers)
        except Exception as e:  # one broken arm must not cost the rest of the table
            traceback.print_exc()
            skip(f"training {arm}", f"error: {type(e).__name__}: {e}"[:160])
            continue
        train[arm] = r
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{arm:>15}: {r['train_img_per_s']:9.1f} img/s ({r['s_per_batch_median'] * 1e3:.1f} ms/batch median, "
              f"best {r['s_per_batch_best'] * 1e3:.1f}), epoch of 100,000: {r['s_per_epoch_100k']:.2f} s; "
              f"trainable {r['trainable_params']:,}; holdout eval {r['eval_img_per_s']:.0f} img/s; attack grad "
              f"b{args.attack_batch} {r['attack_grad_s'] * 1e3:.1f} ms")
        rows.append(("train s/epoch", f"{arm} ({r['trainable_params']:,} trainable), {setting}",
                     f"{r['s_per_epoch_100k']:.2f} s per 100,000-image epoch ({r['train_img_per_s']:,.0f} img/s)",
                     src("measured (extrapolated from timed batches)")))
        rows.append(("holdout eval", f"{arm}, models.predict float32, batch {args.eval_batch}",
                     f"{r['eval_img_per_s']:,.0f} img/s", src("measured")))
        rows.append(("attack gradient", f"{arm}, attacks.input_gradient float32, batch {args.attack_batch}",
                     f"{r['attack_grad_s'] * 1e3:.1f} ms ({args.attack_batch / r['attack_grad_s']:,.0f} img/s)",
                     src("measured")))
    report["train"] = train

    # part 2
    att: dict[str, Any] | None = None
    if elapsed() > args.budget_s:
        skip("attack throughput", f"past the {args.budget_s:.0f} s budget")
    else:
        print(f"\n[2] attacks on the baseline, float32, batch {args.attack_batch}, {args.size} px, "
              f"eps 8/255, {args.attack_rounds} timed calls each")
        try:
            att = attack_rates(sets, val_images, val_labels, args, device)
        except Exception as e:
            traceback.print_exc()
            skip("attack throughput", f"error: {type(e).__name__}: {e}"[:160])
    if att is not None:
        for name, label in (("forward", "clean forward (no grad)"), ("fgsm", "FGSM (attacks.fgsm)"),
                            ("pgd", f"PGD-{args.pgd_steps} (attacks.pgd, step 2/255, random start)")):
            print(f"{label:>45}: {att[f'{name}_img_per_s']:10.1f} img/s ({att[f'{name}_s_median']:.3f} s per batch, "
                  f"best {att[f'{name}_s_best']:.3f})")
            rows.append(("attack throughput", f"baseline, {label}, batch {args.attack_batch}, float32",
                         f"{att[f'{name}_img_per_s']:,.1f} img/s", src("measured")))
    report["attacks"] = att

    # part 3
    checks: dict[str, Any] = {}
    if args.checks:
        print("\n[3] cross-checks through the library")
        why = next((w for w in (why_not("robustlora.training.loop"), why_not("robustlora.config"), why_not("tqdm"))
                    if w), None)
        for arm in train:
            if why:
                skip(f"fit cross-check {arm}", f"train.fit cannot run here ({why})")
                break
            if elapsed() > args.budget_s:
                skip(f"fit cross-check {arm}", f"past the {args.budget_s:.0f} s budget")
                continue
            try:
                c = fit_check(arm, sets, images, labels, args, device)
            except Exception as e:
                traceback.print_exc()
                skip(f"fit cross-check {arm}", f"error: {type(e).__name__}: {e}"[:160])
                continue
            ratio = c["img_per_s"] / train[arm]["train_img_per_s"]
            checks[f"fit_{arm}"] = c | {"ratio_to_mirror": ratio}
            print(f"{arm:>15}: train.fit epoch 2 of 2 on {c['images']:,} images: {c['img_per_s']:9.1f} img/s "
                  f"(fit's epoch_seconds {c['epoch_seconds']:.3f}); fit / mirror loop {ratio:.3f}")
            rows.append(("fit cross-check", f"{arm}: train.fit epoch 2 of 2, {c['images']:,} images",
                         f"{c['img_per_s']:,.0f} img/s, fit / mirror {ratio:.3f}", src("measured (library)")))
        why = next((w for w in (why_not("robustlora.evaluation.suite"), why_not("robustlora.config")) if w), None)
        if why:
            skip("attack_suite cross-check", f"robustlora.evaluation.suite cannot run here ({why})")
        elif att is None or elapsed() > args.budget_s:
            skip("attack_suite cross-check", "no part-2 figures" if att is None else
                 f"past the {args.budget_s:.0f} s budget")
        else:
            try:
                c = attack_suite_check(sets, val_images, val_labels, args, device)
                n_pgd = len(p["eps"]) + (1 if p["sanity_eps"] not in p["eps"] else 0)
                est = stage_batch_estimate(att, n_pgd, args.pgd_steps)
                checks["attack_suite"] = c | {"estimate_s": est, "ratio_to_estimate": c["seconds"] / est}
                print(f"attack_suite, one batch of {c['batch']} (FGSM x3 + PGD-{args.pgd_steps} x{n_pgd}): "
                      f"{c['seconds']:.3f} s vs {est:.3f} s from part 2's pieces (ratio {c['seconds'] / est:.3f})")
                rows.append(("attack_suite cross-check", f"evaluate.attack_suite, batch {c['batch']}, FGSM x3 + "
                             f"PGD-{args.pgd_steps} x{n_pgd}", f"{c['seconds']:.3f} s vs {est:.3f} s estimated "
                             f"(ratio {c['seconds'] / est:.3f})", src("measured (library)")))
            except Exception as e:
                traceback.print_exc()
                skip("attack_suite cross-check", f"error: {type(e).__name__}: {e}"[:160])
    report["checks"] = checks

    # part 4
    missing = [a for a in ARMS if a not in train] + ([] if att is not None else ["attack throughput"])
    if missing:
        skip("projection", f"needs every arm and the attack figures; missing: {', '.join(missing)}")
        report["projection"] = None
    else:
        proj = project(train, att)
        report["projection"] = proj
        label = "PROJECTION from measured rates" + (" (quick: CPU rates at tiny sizes, meaningless)"
                                                    if args.quick else "")
        scale = "" if args.pgd_steps == p["pgd_steps"] else f" (PGD time scaled x{p['pgd_steps'] / args.pgd_steps:g})"
        print(f"\n[4] {label}: paper command, {proj['train_images_per_epoch']:,} train + "
              f"{proj['holdout_images_per_epoch']:,} holdout images per epoch, attacks on {p['attack_images']:,} "
              f"images in {proj['attack_batches']} batches, one batch ~{proj['attack_batch_estimate_s']:.2f} s on the "
              f"baseline{scale}")
        for arm, a in proj["arms"].items():
            print(f"{arm:>15}: epoch {a['epoch_s']:.1f} s, 50 epochs {fmt_s(a['train_50ep_s'])}, 20 epochs "
                  f"{fmt_s(a['train_20ep_s'])}, final eval {fmt_s(a['final_eval_s'])}, attacks "
                  f"{fmt_s(a['attack_s'])}")
            rows.append(("projection: per arm", f"{arm}: epoch (train + holdout eval) / attack stage per model",
                         f"{a['epoch_s']:.1f} s / {fmt_s(a['attack_s'])}", src("projection")))
        for e in (p["max_epochs"], p["typical_epochs"]):
            print(f"{'per seed':>15}, {e} epochs: {fmt_s(proj['per_seed_s'][e])}; {p['seeds']} seeds "
                  f"(+ pretrained once, {fmt_s(proj['pretrained_once_s'])}): {fmt_s(proj['five_seeds_s'][e])}")
            rows.append(("projection: study", f"{e} epochs, 5 arms, per training seed",
                         fmt_s(proj["per_seed_s"][e]), src("projection")))
            rows.append(("projection: study", f"{e} epochs, 5 arms x {p['seeds']} seeds + pretrained once",
                         fmt_s(proj["five_seeds_s"][e]), src("projection")))

    notes = [
        "Synthetic images, random weights: a throughput measurement; no accuracy here means anything.",
        "Every figure is measured on this device except the rows marked projection (arithmetic on measured rates).",
        "Training runs a mirror of train.fit's per-batch work (fit needs a pydantic TrainConfig); part 3 checks it "
        "against fit itself where fit imports.",
        "The projection leaves out: download/preprocess, process start-up and model loading per stage, MLflow, the "
        "report, the default convergence check (6 images, first seed) and the paper-attacks experiment.",
        "AutoAttack (standard/custom) and ART Square throughput at 64 px: benchmarks/gpu_attacks.py part 3 "
        "(bench_attacks.py rows); not duplicated here.",
    ]
    report["notes"] = notes
    report["elapsed_s"] = elapsed()
    rows.append(("run", "wall time of this script", f"{elapsed():.1f} s", src("measured")))
    report["table"] = [dict(zip(("part", "setting", "figure", "source"), r)) for r in rows]
    with atomic_path(out_path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"\nSUMMARY ({gpu}, torch {torch.__version__}, {elapsed():.0f} s; JSON: {out_path})\n")
    print(markdown(rows))
    print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
