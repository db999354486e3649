"""GPU check of the whole study through the library (no dvc/mlflow/typer needed): the default synthetic pipeline on
CUDA — pretrain, every variant, every attack — with timings, plus a resume checkpoint written on the GPU.

    PYTHONPATH=src python benchmarks/gpu_check.py --out /tmp/gpu_check

Writes summary.json, a trained variant checkpoint and a mid-training resume checkpoint into --out, so a CPU machine
can check that checkpoints saved on a GPU load there (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from robustlora.config import load_params  # noqa: E402
from robustlora.data.dataset import load_classes, load_split, prepare_domain  # noqa: E402
from robustlora.evaluation.suite import attack_variant, metrics_json  # noqa: E402
from robustlora.models.adaptation import prepare, training_seeds  # noqa: E402
from robustlora.models.resnet import load_backbone  # noqa: E402
from robustlora.training.study import pretrain_backbone, train_variant  # noqa: E402
from robustlora.data.synthetic import make_synthetic  # noqa: E402
from robustlora.training.loop import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/robustlora-gpu"))
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
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
    raw, prepared, models = args.work / "raw", args.work / "prepared", args.work / "models"
    summary: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "seconds": {}}
    t = time.perf_counter()
    make_synthetic(p.data.synthetic, raw, progress=False)
    d = p.data
    prepare_domain(raw / "tiny-imagenet-200.zip", prepared / "target", classes=d.classes, train_per_class=None,
                   val_per_class=None, holdout=d.holdout, seed=d.seed, image_size=d.synthetic.image_size, progress=False)
    prepare_domain(raw / "source.zip", prepared / "source", classes=d.synthetic.source_classes, train_per_class=None,
                   val_per_class=None, holdout=d.holdout, seed=d.seed, image_size=d.synthetic.image_size, progress=False)
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
            metrics, _ = train_variant(spec, cfg, backbone_path=models / "backbone.pt", prepared_dir=prepared / "target",
                                       model_cfg=p.model, out_path=models / name / f"seed_{seed}.pt", seed=seed,
                                       progress=False)
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            rows = attack_variant(models / name / f"seed_{seed}.pt", prepared / "target", p.attack, progress=False)
            summary["variants"][f"{name}/seed_{seed}"] = {
                "train": metrics, "attack": metrics_json(rows.assign(seed=seed)), "train_seconds": round(train_s, 2),
                "attack_seconds": round(time.perf_counter() - t, 2)}
            print(name, seed, json.dumps({k: metrics[k] for k in ("val_accuracy", "trainable_params", "best_epoch")}),
                  flush=True)
    seed = p.train.seeds[0]
    shutil.copy(models / "lora_fc_conv1" / f"seed_{seed}.pt", args.out / "lora_fc_conv1.pt")

    # a resume point written on the GPU, one epoch into training lora_fc_conv1 (the CPU side resumes it)
    spec = p.variant("lora_fc_conv1")
    wnids = load_classes(prepared / "target")
    torch.manual_seed(seed)
    model = prepare(load_backbone(models / "backbone.pt", wnids, p.model.input_size, p.model.head, seed), spec)
    cfg = p.fit_config("lora_fc_conv1", seed).model_copy(update={"max_epochs": 2})
    fit(model, load_split(prepared / "target", "train"), load_split(prepared / "target", "holdout"), cfg,
        device=device, train_batchnorm=False, checkpoint_path=args.out / "resume_lora_fc_conv1.pt",
        fingerprint="gpu-check", progress=False, stop_after_epochs=1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}, default=str))


def cpu_side(args: argparse.Namespace) -> None:
    """With CUDA hidden: the variant checkpoint loads and scores like on the GPU; the resume point continues on CPU."""
    from robustlora.models.resnet import load_variant
    from robustlora.models.resnet import accuracy

    assert not torch.cuda.is_available(), "run with CUDA_VISIBLE_DEVICES= to check loading on a CPU"
    p = load_params(args.params)
    summary = json.loads((args.out / "summary.json").read_text())
    prepared = args.work / "prepared" / "target"
    model, _ = load_variant(args.out / "lora_fc_conv1.pt")
    cpu_acc = accuracy(model, load_split(prepared, "val"))
    seed = p.train.seeds[0]
    gpu_acc = summary["variants"][f"lora_fc_conv1/seed_{seed}"]["train"]["val_accuracy"]
    spec = p.variant("lora_fc_conv1")
    wnids = load_classes(prepared)
    model = prepare(load_backbone(args.work / "models" / "backbone.pt", wnids, p.model.input_size), spec)
    result = fit(model, load_split(prepared, "train"), load_split(prepared, "holdout"),
                 p.fit_config("lora_fc_conv1", seed).model_copy(update={"max_epochs": 2}), device=torch.device("cpu"),
                 train_batchnorm=False,
                 checkpoint_path=args.out / "resume_lora_fc_conv1.pt", fingerprint="gpu-check", progress=False)
    print(json.dumps({"cpu_val_accuracy_of_gpu_checkpoint": cpu_acc, "gpu_val_accuracy": gpu_acc,
                      "resumed_on_cpu_from_epoch": result.resumed_from_epoch, "epochs_run": result.epochs_run}))


if __name__ == "__main__":
    main()
