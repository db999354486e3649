"""One Tiny-ImageNet-sized epoch on a GPU: robustlora.training.loop.fit vs a bare PyTorch loop, in img/s.

    PYTHONPATH=src python benchmarks/gpu_epoch.py                     # 100,000 64x64 images, 200 classes, batch 256
    PYTHONPATH=src python benchmarks/gpu_epoch.py --device cpu --images 128 --batch 32    # a smoke test anywhere

Needs only torch, torchvision, numpy, pandas, pillow, tqdm and pyyaml (no dvc, mlflow, typer, great_expectations).
The random uint8 images live on the GPU from the start, as fit keeps them. Each timed run is a fresh ResNet18
(robustlora Classifier, input_size 64, identical initial weights) trained for one epoch: fit (max_epochs=1, empty
holdout), the bare loop (benchmarks/bench_train.py: same augmentation, bf16 autocast, channels_last), and the bare loop
plus fit's two per-batch host reads (loss.item(), correct.item()), which shows what those syncs cost. After a short
warm-up of each, runs alternate in order; best of --repeats. Ends with one summary line.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from bench_train import (
    compare,
    model_factory,
    random_split,
    report,
    run_bare,
    run_ours,
    sync,
    train_config,
)

from robustlora.models.resnet import pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--images", type=int, default=100_000, help="training images in the epoch")
    parser.add_argument("--size", type=int, default=64, help="image height = width = model input size, pixels")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per loop")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip on either side")
    args = parser.parse_args()

    t_start = time.perf_counter()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type != "cuda":
        print(f"warning: running on {device}, not a GPU; the figures are a smoke test only")
    train = random_split(args.images, args.size, args.classes, device=device)
    sync(device)
    make_model = model_factory(args.classes, args.size, device)
    runners = {"ours": run_ours, "bare": run_bare,
               "bare+reads": functools.partial(run_bare, read_metrics=True)}
    # warm-up: CUDA context, cuDNN heuristics, allocator; a few batches of each loop
    warm = random_split(min(args.images, 8 * args.batch), args.size, args.classes, device=device)
    compare(make_model, warm, train_config(args.batch, 1, args.augment), device, repeats=1, runners=runners)
    results = compare(make_model, train, train_config(args.batch, 1, args.augment), device, args.repeats, runners)
    summary = report(results, f"device={device} ({name}) images={args.images} size={args.size} classes={args.classes} "
                              f"batch={args.batch} augment={args.augment} repeats={args.repeats} "
                              f"torch={torch.__version__}")
    reads = max(results["bare+reads"]["wall"]) / max(results["bare"]["wall"])
    epoch_s = args.images / max(results["ours"]["wall"])
    print(f"SUMMARY gpu_epoch [{name}]: {args.images} x {args.size}px, batch {args.batch}: fit epoch {epoch_s:.1f} s; "
          f"{summary}; bare with fit's per-batch .item() reads / bare = {reads:.3f}; "
          f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
