"""The paper-scale study's cost on one GPU, timed through the library itself: s/epoch of every arm with
robustlora.training.loop.fit, the holdout evaluation, one attack-stage batch with
robustlora.evaluation.suite.attack_suite, and a projected wall time per training seed. Ends with one summary table
(markdown), also written as JSON to --out.

    PYTHONPATH=src python benchmarks/paper_scale.py --device cuda                 # a GPU: ~1-2 min on an H100 (est.)
    PYTHONPATH=src python benchmarks/paper_scale.py --device cuda --out "$OUT/paper_scale.json"   # via the device tool
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/paper_scale.py --quick --device cpu   # smoke test, < 60 s

The runtime is an estimate (not yet run on a GPU). --budget-s (default 240 s) bounds it: an arm that would start
later is skipped and named in the table, so the run stays under ~5 minutes even on a slower card (lower it if the
device time left is short). --quick (tiny sizes, every code path) writes its JSON to the temp folder unless --out is
given, so a smoke run never overwrites the GPU figures. Needs the library's own dependencies (torch, numpy, pandas,
pydantic, tqdm, pillow); not dvc, mlflow or typer.

THE DATA ARE SYNTHETIC. This is a throughput measurement: 200 classes x 500 training images + 200 x 50 val images,
64x64 RGB uint8 NHWC (Tiny ImageNet's shape and storage), each a class's random coarse colour pattern plus per-image
noise, made directly on the device (as fit keeps the uint8 dataset there). Weights are random (build_model): the
cost of a training step or of FGSM/PGD (fixed steps, one restart, no early stop) does not depend on the weights or
on what the images show. No accuracy figure here means anything, and none is printed.

Per arm (baseline = full fine-tuning with BatchNorm trained, lr 0.02 / wd 5e-4; lora_fc, lora_fc_conv1, lora_layer4,
lora_all_convs = LoRA rank 4, alpha 1 on robustlora.config.TARGET_SETS fc, fc+conv1, layer4, all_convs,
lr 0.1 / wd 0; lr does not change the cost), each arm prepared by robustlora.models.adaptation.prepare:
1. Training: fit itself (bf16 autocast + channels_last on CUDA, as always) for 1 + --rounds epochs of --batches
   batches of 256 on a subset of the synthetic training images, with an empty holdout. Epoch 1 is the warm-up; the
   median of the other epochs' own epoch_seconds (per-epoch randperm and augmentation draw included) gives img/s,
   extrapolated to an epoch of 100,000 images.
2. The float32 holdout evaluation fit runs after each epoch (models.resnet.accuracy, batch 256), img/s.
3. One attack-stage batch: attack_suite on 500 images with the paper's attack settings (FGSM + PGD-20 at 2, 4,
   8/255 + the unbounded sanity run, step 0.5·ε, random start; the convergence check off), float32, the model's
   weights in the default memory format as load_variant returns them; the median of --attack-rounds calls.
4. A PROJECTION (arithmetic on the measured rates, not a measurement) of the paper command of README.md
   ("The paper's configuration"): train.max_epochs=50, patience 5, batch 256, data.holdout 0.2 (so 80,000 training
   and 20,000 holdout images per epoch), 5 training arms (pretrained trains nothing; it is evaluated and attacked
   once, not per seed), attack.n_images=10000 in batches of 500; at 50 epochs and at ~20 (a typical early stop); per
   training seed and for 5 seeds. Left out: download/preprocess (bench_preprocess.py: ~10 s for 110,000 images on 2
   cores), fit's per-epoch bookkeeping (lr scheduler step, copying the best weights to the CPU), process start-up and
   model loading per stage, MLflow logging, the report, the default convergence check (6 images, first seed), and
   every attack of the `paper-attacks` experiment (AutoAttack, the ART black-box attacks, transfer): their
   throughput at 64 px is what benchmarks/gpu_attacks.py part 3 measures (bench_attacks.py rows).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import traceback
from typing import Any

import harness  # first: puts this checkout's src/ on the path
import torch
import torch.nn.functional as F
from torch import nn

from robustlora.config import (AttackConfig, ConvergenceConfig, FullSettings, LoraSettings, PgdConfig, TrainConfig,
                               VariantSpec)
from robustlora.data.dataset import Split
from robustlora.evaluation.suite import attack_suite
from robustlora.formatting import md_table
from robustlora.io import write_json
from robustlora.models import adaptation
from robustlora.config import TARGET_SETS
from robustlora.models.lora import count_parameters
from robustlora.models.resnet import accuracy, build_model
from robustlora.training.loop import fit

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
# arm -> its LoRA target set (None: full fine-tuning); params.yaml's variant names where it has the arm
ARMS: dict[str, str | None] = {
    "baseline": None, "lora_fc": "fc", "lora_fc_conv1": "fc+conv1", "lora_layer4": "layer4",
    "lora_all_convs": "all_convs",
}


def arm_spec(arm: str) -> VariantSpec:
    """The arm as params.yaml's variants section would give it."""
    target_set = ARMS[arm]
    if target_set is None:
        return VariantSpec(name=arm, adaptation="full", settings=FullSettings(lr=FULL_LR, weight_decay=FULL_WD))
    return VariantSpec(name=arm, adaptation="lora", targets=TARGET_SETS[target_set], target_set=target_set,
                       settings=LoraSettings(lr=LORA_LR, weight_decay=LORA_WD, rank=LORA_RANK, alpha=LORA_ALPHA))


def synthetic_split(classes: int, per_class: int, size: int, device: torch.device, seed: int) -> Split:
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
    return Split(images, labels)


def attack_config(args: argparse.Namespace) -> AttackConfig:
    """The paper's attack section for one batch of --attack-batch images, the convergence check off."""
    b = args.attack_batch
    return AttackConfig(n_images=b, batch_size=b, seed=0, eps=tuple(PAPER["eps"]),
                        pgd=PgdConfig(steps=args.pgd_steps, rel_step_size=PAPER["rel_step_size"],
                                      sanity_eps=PAPER["sanity_eps"]),
                        convergence=ConvergenceConfig(n_images=0))


# ----------------------------------------------------------------------------- parts 1-3: one arm


def train_rate(model: nn.Module, spec: VariantSpec, train: Split, args, device: torch.device) -> dict[str, Any]:
    """Part 1: fit for 1 + --rounds epochs of --batches batches; epoch 1 warms up, the rest are timed by fit."""
    n = min(len(train), args.batches * args.batch)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:n].to(train.labels.device)
    cfg = TrainConfig(lr=spec.settings.lr, weight_decay=spec.settings.weight_decay, momentum=PAPER["momentum"],
                      batch_size=args.batch, max_epochs=1 + args.rounds, patience=args.rounds + 2,
                      crop_padding=PAPER["crop_padding"], flip=True, eval_batch_size=args.eval_batch, seed=0)
    empty = Split(train.images[:0], train.labels[:0])
    result = fit(model, Split(train.images[idx], train.labels[idx]), empty, cfg, device=device,
                 train_batchnorm=adaptation.trains_batchnorm(spec), progress=False)
    seconds = [h["epoch_seconds"] for h in result.history[1:]]
    rate = n / statistics.median(seconds)
    return {"epoch_images": n, "timed_epochs": len(seconds), "epoch_s_median": statistics.median(seconds),
            "epoch_s_best": min(seconds), "train_img_per_s": rate, "s_per_epoch_100k": 100_000 / rate}


def eval_rate(model: nn.Module, val: Split, args, device: torch.device) -> dict[str, Any]:
    """Part 2: fit's holdout evaluation after every epoch (models.resnet.accuracy: float32, eval mode)."""
    k = min(len(val), args.eval_batch * args.eval_batches)
    holdout = Split(val.images[:k], val.labels[:k])
    accuracy(model, Split(val.images[:args.eval_batch], val.labels[:args.eval_batch]), args.eval_batch, device)
    t = statistics.median(harness.time_it(lambda: accuracy(model, holdout, args.eval_batch, device), device)
                          for _ in range(args.rounds))
    return {"eval_images": k, "eval_img_per_s": k / t}


def attack_rate(model: nn.Module, val: Split, args, device: torch.device) -> dict[str, Any]:
    """Part 3: one attack-stage batch through attack_suite (the images read from the host, as the stage reads them)."""
    cfg = attack_config(args)
    model.to(memory_format=torch.contiguous_format)  # as load_variant returns it (fit made it channels_last on CUDA)
    images, labels = val.images[:args.attack_batch].cpu(), val.labels[:args.attack_batch].cpu()
    attack_suite(model, images[:2], labels[:2], cfg, device=device, progress=False)  # warm-up
    runs = [harness.timed(lambda: attack_suite(model, images, labels, cfg, device=device, progress=False), device)
            for _ in range(args.attack_rounds)]
    seconds, rows = [s for s, _ in runs], runs[-1][1]
    return {"attack_batch": len(labels), "attack_s_median": statistics.median(seconds), "attack_s_best": min(seconds),
            "attack_img_per_s": len(labels) / statistics.median(seconds),
            "fgsm_runs": int(rows.loc[rows["attack"] == "fgsm", "eps"].nunique()),
            "pgd_runs": int(rows.loc[rows["attack"] == "pgd", "eps"].nunique())}


def measure_arm(arm: str, data: dict[str, Split], args, device: torch.device) -> dict[str, Any]:
    """Parts 1-3 on a fresh model of ``arm`` (seed 0), trained by part 1 before parts 2 and 3 use it."""
    spec = arm_spec(arm)
    torch.manual_seed(0)
    model = adaptation.prepare(build_model(args.classes, args.input_size), spec)
    trainable, total = count_parameters(model)
    out = {"arm": arm, "kind": spec.adaptation, "targets": list(spec.targets), "lr": spec.settings.lr,
           "weight_decay": spec.settings.weight_decay, "trainable_params": trainable, "total_params": total}
    out |= train_rate(model, spec, data["train"], args, device)
    out |= eval_rate(model, data["val"], args, device)
    return out | attack_rate(model, data["val"], args, device)


# ----------------------------------------------------------------------------- part 4: projection


def project(arms: dict[str, dict]) -> dict[str, Any]:
    """Wall time of the paper command per training seed and for 5 seeds, from the measured rates (arithmetic)."""
    p = PAPER
    n_total = p["classes"] * p["train_per_class"]
    n_hold = round(n_total * p["holdout"])
    n_train, n_val = n_total - n_hold, p["classes"] * p["val_per_class"]
    batches = math.ceil(p["attack_images"] / p["attack_batch"])
    out: dict[str, Any] = {}
    for arm, r in arms.items():
        epoch = n_train / r["train_img_per_s"] + n_hold / r["eval_img_per_s"]
        final_eval = (n_val + n_train) / r["eval_img_per_s"]  # train_variant: val + train accuracy (holdout from fit)
        out[arm] = {"epoch_s": epoch, "final_eval_s": final_eval, "attack_s": batches * r["attack_s_median"],
                    **{f"train_{e}ep_s": e * epoch for e in (p["max_epochs"], p["typical_epochs"])}}
    per_seed = {e: sum(a[f"train_{e}ep_s"] + a["final_eval_s"] + a["attack_s"] for a in out.values())
                for e in (p["max_epochs"], p["typical_epochs"])}
    b = arms["baseline"]  # the pretrained arm has the baseline's architecture
    pretrained = (n_val + n_hold + n_train) / b["eval_img_per_s"] + batches * b["attack_s_median"]
    return {"arms": out, "per_seed_s": per_seed, "pretrained_once_s": pretrained,
            "five_seeds_s": {e: p["seeds"] * s + pretrained for e, s in per_seed.items()},
            "attack_batches": batches, "train_images_per_epoch": n_train, "holdout_images_per_epoch": n_hold}


# ----------------------------------------------------------------------------- output


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h ({s:,.0f} s)"
    if s >= 60:
        return f"{s / 60:.1f} min ({s:,.0f} s)"
    return f"{s:.3g} s"


def arm_rows(r: dict[str, Any], args, levers: str, src) -> list[tuple[str, str, str, str]]:
    """The summary table's rows of one measured arm."""
    arm, b = r["arm"], r["attack_batch"]
    attacks = f"FGSM x{r['fgsm_runs']} + PGD-{args.pgd_steps} x{r['pgd_runs']}"
    return [
        ("train s/epoch", f"{arm} ({r['trainable_params']:,} trainable), training.loop.fit, batch {args.batch}, "
         f"{levers}, {r['timed_epochs']} timed epoch(s) of {r['epoch_images']:,} images",
         f"{r['s_per_epoch_100k']:.2f} s per 100,000-image epoch ({r['train_img_per_s']:,.0f} img/s)",
         src("measured (extrapolated)")),
        ("holdout eval", f"{arm}, models.resnet.accuracy float32, batch {args.eval_batch}",
         f"{r['eval_img_per_s']:,.0f} img/s", src("measured")),
        ("attack stage", f"{arm}, evaluation.suite.attack_suite, batch {b}: {attacks}, float32",
         f"{r['attack_s_median']:.3f} s per batch ({r['attack_img_per_s']:,.1f} img/s)", src("measured")),
    ]


def projection_rows(proj: dict[str, Any], src) -> list[tuple[str, str, str, str]]:
    rows = [("projection: per arm", f"{arm}: epoch (train + holdout eval) / attack stage per model",
             f"{a['epoch_s']:.1f} s / {fmt_s(a['attack_s'])}", src("projection")) for arm, a in proj["arms"].items()]
    for e in (PAPER["max_epochs"], PAPER["typical_epochs"]):
        rows.append(("projection: study", f"{e} epochs, 5 arms, per training seed", fmt_s(proj["per_seed_s"][e]),
                     src("projection")))
        rows.append(("projection: study", f"{e} epochs, 5 arms x {PAPER['seeds']} seeds + pretrained once",
                     fmt_s(proj["five_seeds_s"][e]), src("projection")))
    return rows


def settings(args: argparse.Namespace) -> None:
    """The paper's sizes on ``args``; --quick: 64 px as in the paper, everything else tiny (~30 s on one CPU thread)."""
    p = PAPER
    args.classes, args.size, args.input_size = p["classes"], p["size"], p["input_size"]
    args.train_per_class, args.val_per_class = p["train_per_class"], p["val_per_class"]
    args.batch, args.eval_batch, args.eval_batches = p["batch_size"], p["eval_batch_size"], 20
    args.attack_batch, args.pgd_steps = p["attack_batch"], p["pgd_steps"]
    if args.quick:
        args.classes, args.train_per_class, args.val_per_class = 10, 20, 5
        args.batch, args.eval_batch, args.eval_batches = 8, 8, 2
        args.batches, args.rounds, args.attack_rounds = 2, 1, 1
        args.attack_batch, args.pgd_steps = 8, 2
    if args.out is None:  # a smoke run never overwrites the GPU figures
        args.out = f"{tempfile.gettempdir()}/paper_scale.quick.json" if args.quick else \
            str(harness.ROOT / "benchmarks" / "paper_scale.json")


def main() -> None:
    parser = harness.add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every code path: a smoke test on a CPU")
    parser.add_argument("--out", default=None, help="the JSON (default benchmarks/paper_scale.json; --quick: the "
                                                    "temp folder's paper_scale.quick.json)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no arm after this many seconds of the run; skipped ones are named")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--batches", type=int, default=30, help="training batches per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs (after one warm-up epoch) and timed "
                                                              "evaluations per arm (median reported)")
    parser.add_argument("--attack-rounds", type=int, default=3, help="timed attack_suite calls (median reported)")
    args = parser.parse_args()
    settings(args)
    device = harness.setup(args)
    levers = "bf16 autocast + channels_last" if device.type == "cuda" else "float32"
    print(f"{harness.environment(device)} quick={args.quick} budget={args.budget_s:.0f}s")
    if device.type != "cuda":
        print("note: not a GPU: every figure below is a smoke test of this script, not a result")

    def src(kind: str) -> str:  # the table's source column; a --quick run is a smoke test, not a result
        return f"smoke test, {kind}" if args.quick else kind

    rows = [("environment", "device / torch / python", f"{device} ({harness.device_name(device)}) / "
             f"{torch.__version__} / {sys.version.split()[0]}", "info"),
            ("environment", "mode", "--quick smoke test (tiny sizes)" if args.quick else "paper scale", "info")]
    report: dict[str, Any] = {"device": str(device), "device_name": harness.device_name(device),
                              "torch": torch.__version__, "python": sys.version.split()[0], "quick": args.quick,
                              "budget_s": args.budget_s, "paper": PAPER, "skipped": []}

    def skip(what: str, why: str) -> None:
        print(f"skipped {what}: {why}")
        report["skipped"].append(f"{what}: {why}")
        rows.append(("skipped", what, why, "-"))

    seconds, data = harness.timed(lambda: {
        "train": synthetic_split(args.classes, args.train_per_class, args.size, device, seed=0),
        "val": synthetic_split(args.classes, args.val_per_class, args.size, device, seed=1)}, device)
    made = f"{len(data['train']):,} train + {len(data['val']):,} val, {args.size}x{args.size} RGB uint8, " \
           f"{args.classes} classes"
    print(f"\n[0] synthetic data on {device} (throughput only): {made}, made in {seconds:.2f} s")
    rows.append(("data", "synthetic, on the device", made, "info"))

    print(f"\n[1-3] per arm: training.loop.fit, batch {args.batch}, {levers}; holdout eval; attack_suite, batch "
          f"{args.attack_batch}, PGD-{args.pgd_steps}, float32")
    arms: dict[str, dict] = {}
    for arm in args.arms:
        if harness.elapsed() > args.budget_s:
            skip(f"arm {arm}", f"past the {args.budget_s:.0f} s budget")
            continue
        try:
            r = arms[arm] = measure_arm(arm, data, args, device)
        except Exception as e:  # one broken arm must not cost the rest of the table
            traceback.print_exc()
            skip(f"arm {arm}", f"error: {type(e).__name__}: {e}"[:160])
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{arm:>15}: {r['train_img_per_s']:9.1f} img/s, epoch of 100,000: {r['s_per_epoch_100k']:.2f} s; "
              f"trainable {r['trainable_params']:,}; holdout eval {r['eval_img_per_s']:.0f} img/s; attack_suite "
              f"b{r['attack_batch']} {r['attack_s_median']:.3f} s")
        rows += arm_rows(r, args, levers, src)
    report["arms"] = arms

    missing = [a for a in ARMS if a not in arms]
    report["projection"] = None if missing else project(arms)
    if missing:
        skip("projection", f"needs every arm; missing: {', '.join(missing)}")
    else:
        proj = report["projection"]
        label = "PROJECTION from measured rates" + (" (quick: tiny sizes, meaningless)" if args.quick else "")
        print(f"\n[4] {label}: paper command, {proj['train_images_per_epoch']:,} train + "
              f"{proj['holdout_images_per_epoch']:,} holdout images per epoch, attacks on "
              f"{PAPER['attack_images']:,} images in {proj['attack_batches']} batches")
        rows += projection_rows(proj, src)
        for line in projection_rows(proj, src):
            print(f"{line[1]}: {line[2]}")

    notes = [
        "Synthetic images, random weights: a throughput measurement; no accuracy here means anything.",
        "Every figure is measured on this device, through training.loop.fit, models.resnet.accuracy and "
        "evaluation.suite.attack_suite, "
        "except the rows marked projection (arithmetic on measured rates).",
        "The projection leaves out: download/preprocess, fit's per-epoch bookkeeping, process start-up and model "
        "loading per stage, MLflow, the report, the default convergence check (6 images, first seed) and the "
        "paper-attacks experiment.",
        "AutoAttack (standard/custom) and ART Square throughput at 64 px: benchmarks/gpu_attacks.py part 3 "
        "(bench_attacks.py rows); not duplicated here.",
    ]
    rows.append(("run", "wall time of this script", f"{harness.elapsed():.1f} s", src("measured")))
    report |= {"notes": notes, "elapsed_s": harness.elapsed(),
               "table": [dict(zip(("part", "setting", "figure", "source"), r)) for r in rows]}
    write_json(args.out, report)
    print(f"\nSUMMARY ({harness.device_name(device)}, torch {torch.__version__}, {harness.elapsed():.0f} s; "
          f"JSON: {args.out})\n")
    print(md_table(("part", "setting", "figure", "source"), rows))
    print("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
