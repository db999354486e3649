"""GPU check of the whole study through the library (no dvc/mlflow/typer needed): the default synthetic pipeline on
CUDA — pretrain, every variant, every attack — with timings, plus a resume checkpoint written on the GPU.

    PYTHONPATH=src python tools/gpu_check.py --out /tmp/gc                                 # the default study on CUDA
    CUDA_VISIBLE_DEVICES= PYTHONPATH=src python tools/gpu_check.py --out /tmp/gc --cpu-side   # then, CUDA hidden

Writes summary.json, a trained variant checkpoint and a mid-training resume checkpoint into --out; the second step,
with CUDA hidden, loads the GPU-written variant checkpoint and scores it on the CPU and resumes the GPU-written
resume point (one epoch into lora_fc_conv1) on the CPU. Measured on an H200 (benchmarks/README.md has the history):
data 7.2 s, pretrain 4.3 s (6,084 img/s at 32 px), val accuracy pretrained 0.366 / baseline 0.554 / lora_fc 0.632 /
lora_fc_conv1 0.684; the GPU checkpoint scores 0.690 on the CPU (0.684 on the GPU under bf16) and the resume point
continued on the CPU from epoch 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustlora.config import load_params  # noqa: E402
from robustlora.data.dataset import data_domains, load_classes, load_split, prepare_domain  # noqa: E402
from robustlora.data.synthetic import make_synthetic  # noqa: E402
from robustlora.evaluation.suite import attack_variant, metrics_json  # noqa: E402
from robustlora.layout import seed_model  # noqa: E402
from robustlora.models.adaptation import prepare, training_seeds  # noqa: E402
from robustlora.models.resnet import load_backbone  # noqa: E402
from robustlora.training.loop import fit  # noqa: E402
from robustlora.training.study import pretrain_backbone, train_variant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/robustlora-gpu"))
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--allow-cpu", action="store_true", help="dry run without a GPU (e.g. with a tiny --params)")
    ap.add_argument("--cpu-side", action="store_true",
                    help="second step, with CUDA hidden: load the GPU-written checkpoints of --out on the CPU")
    args = ap.parse_args()
    if args.cpu_side:
        return cpu_side(args)
    if not (torch.cuda.is_available() or args.allow_cpu):
        raise SystemExit("this check needs a CUDA device")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = load_params(args.params)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    (args.out / "resume_lora_fc_conv1.pt").unlink(missing_ok=True)  # an earlier run's: it would be resumed, not written
    raw, prepared, models = args.work / "raw", args.work / "prepared", args.work / "models"
    summary: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "seconds": {}}
    t = time.perf_counter()
    make_synthetic(p.data.synthetic, raw, progress=False)
    for name, dom in data_domains(p, raw).items():  # as the preprocess stage prepares them
        prepare_domain(dom.archive, prepared / name, classes=dom.classes, train_per_class=dom.train_per_class,
                       val_per_class=dom.val_per_class, holdout=dom.holdout, seed=dom.seed,
                       image_size=dom.image_size, progress=False)
    summary["seconds"]["data"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    summary["pretrain"], _ = pretrain_backbone(p.model, p.pretrain, prepared / "source", models / "backbone.pt",
                                               progress=False)
    summary["seconds"]["pretrain"] = round(time.perf_counter() - t, 2)
    summary["variants"] = {}
    for name, spec in p.variants.items():
        for seed in training_seeds(spec, p.train.seeds):
            t = time.perf_counter()
            cfg = p.fit_config(name, seed) if spec.kind.trains else None
            model_path = seed_model(models / name, seed)
            metrics, _ = train_variant(spec, cfg, backbone_path=models / "backbone.pt",
                                       prepared_dir=prepared / "target", model_cfg=p.model, out_path=model_path,
                                       seed=seed, progress=False)
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            rows = attack_variant(model_path, prepared / "target", p.attack, progress=False)
            summary["variants"][f"{name}/seed_{seed}"] = {
                "train": metrics, "attack": metrics_json(rows.assign(seed=seed)), "train_seconds": round(train_s, 2),
                "attack_seconds": round(time.perf_counter() - t, 2)}
            print(name, seed, json.dumps({k: metrics[k] for k in ("val_accuracy", "trainable_params", "best_epoch")}),
                  flush=True)
    seed = p.train.seeds[0]
    shutil.copy(seed_model(models / "lora_fc_conv1", seed), args.out / "lora_fc_conv1.pt")

    train_resume_point(p, args, device, stop_after_epochs=1)  # one epoch: the CPU side resumes it
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}, default=str))


def train_resume_point(p, args: argparse.Namespace, device: torch.device, **fit_options):
    """Two epochs of lora_fc_conv1 (first training seed) with its resume point in --out: written by the GPU side,
    resumed by the CPU side (the same fingerprint)."""
    seed, spec = p.train.seeds[0], p.variant("lora_fc_conv1")
    prepared = args.work / "prepared" / "target"
    torch.manual_seed(seed)
    backbone = load_backbone(args.work / "models" / "backbone.pt", load_classes(prepared), p.model.input_size,
                             p.model.head, seed)
    cfg = p.fit_config("lora_fc_conv1", seed).model_copy(update={"max_epochs": 2})
    return fit(prepare(backbone, spec), load_split(prepared, "train"), load_split(prepared, "holdout"), cfg,
               device=device, train_batchnorm=False, checkpoint_path=args.out / "resume_lora_fc_conv1.pt",
               fingerprint="gpu-check", progress=False, **fit_options)


def cpu_side(args: argparse.Namespace) -> None:
    """With CUDA hidden: the variant checkpoint loads and scores like on the GPU; the resume point continues on CPU."""
    from robustlora.models.resnet import accuracy, load_variant

    assert not torch.cuda.is_available(), "run with CUDA_VISIBLE_DEVICES= to check loading on a CPU"
    p = load_params(args.params)
    summary = json.loads((args.out / "summary.json").read_text())
    model, _ = load_variant(args.out / "lora_fc_conv1.pt")
    cpu_acc = accuracy(model, load_split(args.work / "prepared" / "target", "val"))
    gpu_acc = summary["variants"][f"lora_fc_conv1/seed_{p.train.seeds[0]}"]["train"]["val_accuracy"]
    result = train_resume_point(p, args, torch.device("cpu"))
    print(json.dumps({"cpu_val_accuracy_of_gpu_checkpoint": cpu_acc, "gpu_val_accuracy": gpu_acc,
                      "resumed_on_cpu_from_epoch": result.resumed_from_epoch, "epochs_run": result.epochs_run}))


if __name__ == "__main__":
    main()
