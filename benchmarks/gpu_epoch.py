"""One Tiny-ImageNet-sized epoch on a GPU: robustlora.training.loop.fit vs a bare PyTorch loop, in img/s.

    PYTHONPATH=src python benchmarks/gpu_epoch.py                     # 100,000 64x64 images, 200 classes, batch 256
    PYTHONPATH=src python benchmarks/gpu_epoch.py --device cpu --images 128 --batch 32    # a smoke test anywhere

Needs only the library's own dependencies (no dvc, mlflow, typer, great_expectations). The random uint8 images live
on the GPU from the start, as fit keeps them. Each timed run is a fresh ResNet18 (robustlora Classifier, input_size 64,
identical initial weights) trained for one epoch: fit (max_epochs=1, empty holdout), the bare loop
(benchmarks/bench_train.py: same augmentation, bf16 autocast, channels_last), and the bare loop plus two per-batch
host reads (loss.item(), correct.item(); fit keeps its sums on the device instead), which shows what those syncs
cost. After a short warm-up of each, runs alternate in order; best of --repeats. Ends with one summary line.
"""

from __future__ import annotations

import argparse
import functools

import harness  # first: puts this checkout's src/ on the path
from bench_train import compare, model_factory, random_split, report, run_bare, run_ours, train_config


def main() -> None:
    parser = harness.add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=100_000, help="training images in the epoch")
    parser.add_argument("--size", type=int, default=64, help="image height = width = model input size, pixels")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per loop")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip on either side")
    args = parser.parse_args()

    device = harness.setup(args)
    name = harness.device_name(device)
    if device.type != "cuda":
        print(f"warning: running on {device}, not a GPU; the figures are a smoke test only")
    train = random_split(args.images, args.size, args.classes, device=device)
    harness.sync(device)
    make_model = model_factory(args.classes, args.size, device)
    runners = {"ours": run_ours, "bare": run_bare,
               "bare+reads": functools.partial(run_bare, read_metrics=True)}
    # warm-up: CUDA context, cuDNN heuristics, allocator; a few batches of each loop
    warm = random_split(min(args.images, 8 * args.batch), args.size, args.classes, device=device)
    compare(make_model, warm, train_config(args.batch, 1, args.augment), device, repeats=1, runners=runners)
    results = compare(make_model, train, train_config(args.batch, 1, args.augment), device, args.repeats, runners)
    summary = report(results, args.images,
                     f"{harness.environment(device)} images={args.images} size={args.size} classes={args.classes} "
                     f"batch={args.batch} augment={args.augment} repeats={args.repeats}")
    reads, _ = harness.speed_ratio(results["bare+reads"]["seconds"], results["bare"]["seconds"])
    epoch_s = min(results["ours"]["seconds"])
    print(f"SUMMARY gpu_epoch [{name}]: {args.images} x {args.size}px, batch {args.batch}: fit epoch {epoch_s:.1f} s; "
          f"{summary}; bare with fit's per-batch .item() reads / bare = {reads:.3f}; "
          f"total {harness.elapsed():.0f} s")


if __name__ == "__main__":
    main()
