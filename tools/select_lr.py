"""Choose a variant's learning rate on the holdout split (never on val), with the pipeline's own data and backbone.

    PYTHONPATH=src python tools/select_lr.py baseline --lr 0.005 0.01 0.02 --seeds 0 1
    PYTHONPATH=src python tools/select_lr.py lora_fc --lr 0.05 0.1 0.2

Needs `dvc repro pretrain` first (data/prepared/target and models/backbone.pt). Trains the variant as params.yaml
says, with each lr in turn, and prints the best holdout accuracy, its epoch and the epochs run, per lr and seed, and the
mean per lr. Val accuracy is deliberately not computed: pick the lr with the best mean holdout accuracy (ties: the one
whose best epoch is not the first), write it into the kind's section (`full.lr`, `lora.lr`) of params.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustlora.config import load_params  # noqa: E402
from robustlora.data.dataset import load_classes, load_split  # noqa: E402
from robustlora.models import adaptation  # noqa: E402
from robustlora.models.resnet import load_backbone, pick_device  # noqa: E402
from robustlora.training.loop import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant")
    ap.add_argument("--lr", type=float, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: train.seeds")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared" / "target")
    ap.add_argument("--backbone", type=Path, default=ROOT / "models" / "backbone.pt")
    args = ap.parse_args()
    p = load_params(args.params)
    spec = p.variant(args.variant)
    seeds = args.seeds or list(p.train.seeds)
    wnids = load_classes(args.prepared)
    train, holdout = load_split(args.prepared, "train"), load_split(args.prepared, "holdout")
    print(f"{args.variant}: {adaptation.describe(spec)}; holdout n = {len(holdout)}")
    print(f"{'lr':>8} {'seed':>4} {'holdout':>8} {'best epoch':>10} {'epochs':>6}")
    means = {}
    for lr in args.lr:
        accs = []
        for seed in seeds:
            cfg = p.fit_config(args.variant, seed).model_copy(update={"lr": lr})
            torch.manual_seed(seed)
            model = adaptation.prepare(load_backbone(args.backbone, wnids, p.model.input_size, p.model.head, seed),
                                       spec, train_head=p.model.head == "new")
            with tempfile.TemporaryDirectory() as tmp:
                result = fit(model, train, holdout, cfg, device=pick_device(cfg.device), progress=False,
                             train_batchnorm=adaptation.trains_batchnorm(spec), checkpoint_path=Path(tmp) / "c.pt")
            accs.append(result.best_holdout_accuracy)
            print(f"{lr:8g} {seed:4d} {result.best_holdout_accuracy:8.3f} {result.best_epoch:10d} "
                  f"{result.epochs_run:6d}", flush=True)
        means[lr] = statistics.mean(accs)
    best = max(means, key=means.get)
    print("mean holdout accuracy per lr: " + ", ".join(f"{lr:g}: {m:.3f}" for lr, m in means.items()))
    print(f"best: lr = {best:g}")


if __name__ == "__main__":
    main()
