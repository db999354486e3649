"""Training throughput: robustlora.training.loop.fit vs a bare PyTorch loop on the same model, data, batch and device.

    PYTHONPATH=src python benchmarks/bench_train.py                         # CPU defaults: ~10 s on 2 idle cores
    PYTHONPATH=src python benchmarks/bench_train.py --device cuda --images 50000 --size 64 --input-size 64 --batch 256

Both sides train a fresh robustlora Classifier (ResNet18, same initial weights) for --epochs epochs on the same
random uint8 images with the same SGD settings, and both pay for the same augmentation (robustlora.training.loop's
draw_augmentation once per epoch and augment per batch: random crop with padding + flip; --no-augment turns it off on
both). On CUDA both use bf16 autocast and channels_last, as fit does. fit gets an empty holdout split, so no
evaluation is counted; it still does its per-epoch bookkeeping (scheduler step, copying the best weights to the CPU).
Times are wall-clock around the whole call, device-synchronised, in harness.round_orders' alternating order; best of
--repeats. Prints img/s of both and the ratio ours / bare (goal >= 0.95), from the best runs and as the median of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import harness  # first: puts this checkout's src/ on the path
import torch
import torch.nn.functional as F

from robustlora.config import TrainConfig
from robustlora.data.dataset import Split
from robustlora.models.resnet import Classifier, build_model
from robustlora.training.loop import augment, draw_augmentation, fit


def random_split(n: int, size: int, classes: int, device: torch.device | str = "cpu", seed: int = 0) -> Split:
    """``n`` random uint8 n x size x size x 3 images with random labels, made on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), generator=g, device=device, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g, device=device)
    return Split(images, labels)


def train_config(batch: int, epochs: int, augmentation: bool) -> TrainConfig:
    """fit's settings: ``epochs`` epochs with no early stop; the bare loop reads the same fields."""
    return TrainConfig(batch_size=batch, max_epochs=epochs, patience=epochs + 1,
                       crop_padding=4 if augmentation else 0, flip=augmentation, seed=0)


def run_ours(model: Classifier, train: Split, cfg: TrainConfig, device: torch.device) -> float:
    """robustlora.training.loop.fit with an empty holdout; returns its internal img/s (epoch loops only)."""
    empty = Split(train.images[:0], train.labels[:0])
    return fit(model, train, empty, cfg, device=device, progress=False).images_per_second


def run_bare(model: Classifier, train: Split, cfg: TrainConfig, device: torch.device, *,
             read_metrics: bool = False) -> float:
    """The plain loop: permutation, index, (augment), to float, forward, CE, backward, SGD step; returns img/s.

    ``read_metrics``: also read the loss and the correct count to the host every batch, as fit does (a diagnostic:
    on a GPU each read waits for the batch to finish).
    """
    cuda = device.type == "cuda"
    model.to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    n = len(labels)
    seen, t0 = 0, time.perf_counter()
    for _ in range(cfg.max_epochs):
        perm = torch.randperm(n, generator=generator).to(device)
        aug = draw_augmentation(n, cfg.crop_padding, cfg.flip, generator).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = augment(images[idx], cfg.crop_padding, aug[i:i + cfg.batch_size])
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if read_metrics:
                loss.item()
                (logits.argmax(1) == labels[idx]).sum().item()
            seen += len(idx)
    harness.sync(device)
    return seen / (time.perf_counter() - t0)


Runner = Callable[[Classifier, Split, TrainConfig, torch.device], float]
RUNNERS: dict[str, Runner] = {"ours": run_ours, "bare": run_bare}


def compare(make_model: Callable[[], Classifier], train: Split, cfg: TrainConfig, device: torch.device,
            repeats: int, runners: dict[str, Runner] = RUNNERS) -> dict[str, dict[str, list[float]]]:
    """Timed runs of the loops on fresh identical models, in harness.round_orders' order: per loop the seconds of
    each whole call ("seconds", device-synchronised) and its own img/s ("internal")."""
    out: dict[str, dict[str, list[float]]] = {name: {"seconds": [], "internal": []} for name in runners}
    for order in harness.round_orders(list(runners), repeats):
        for name in order:
            # the model is made outside the timed call and lives only for it
            run = functools.partial(runners[name], make_model(), train, cfg, device)
            seconds, internal = harness.timed(run, device)
            out[name]["seconds"].append(seconds)
            out[name]["internal"].append(internal)
            del run
    return out


def report(results: dict[str, dict[str, list[float]]], images: int, header: str) -> str:
    """Prints the figures; returns the one-line summary (best-of-N wall-clock img/s and the ratio) for ``images``
    trained per call."""
    print(header)
    for name, r in results.items():
        print(f"{harness.rate_line(name, images, r['seconds'])} wall-clock; epoch loops only: "
              f"{max(r['internal']):.1f} img/s")
    times = {name: r["seconds"] for name, r in results.items()}
    best, paired = harness.speed_ratio(times["ours"], times["bare"])
    inner = max(results["ours"]["internal"]) / max(results["bare"]["internal"])
    # the paired median too: on a GPU one lucky run of either loop swings the best-of ratio by several percent
    summary = (f"ours {images / min(times['ours']):.1f} img/s, bare {images / min(times['bare']):.1f} img/s, "
               f"ratio ours/bare = {best:.3f} (median of {len(times['ours'])} rounds: {paired:.3f}; epoch loops "
               f"only: {inner:.3f}; goal >= 0.95)")
    print(summary)
    return summary


def model_factory(classes: int, input_size: int, device: torch.device, seed: int = 0) -> Callable[[], Classifier]:
    """Fresh Classifiers with identical initial weights (built once; copies are cheap)."""
    torch.manual_seed(seed)
    initial = build_model(classes, input_size).state_dict()

    def make() -> Classifier:
        model = build_model(classes, input_size)
        model.load_state_dict(initial)
        return model.to(device)

    return make


def main() -> None:
    parser = harness.add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="stored image height = width, pixels")
    parser.add_argument("--input-size", type=int, default=32, help="model.input_size (resized inside the model)")
    parser.add_argument("--images", type=int, default=384, help="training images per epoch")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6,
                        help="timed runs per loop (even: each goes first equally often)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip on either side")
    args = parser.parse_args()

    device = harness.setup(args)
    train = random_split(args.images, args.size, args.classes)
    cfg = train_config(args.batch, args.epochs, args.augment)
    make_model = model_factory(args.classes, args.input_size, device)
    # warm-up: allocator, thread pools, cuDNN heuristics; two batches of each loop
    warm = random_split(2 * args.batch, args.size, args.classes)
    compare(make_model, warm, train_config(args.batch, 1, args.augment), device, repeats=1)
    results = compare(make_model, train, cfg, device, args.repeats)
    report(results, args.epochs * args.images,
           f"{harness.environment(device)} batch={args.batch} size={args.size} input_size={args.input_size} "
           f"images={args.images} epochs={args.epochs} augment={args.augment} repeats={args.repeats}")


if __name__ == "__main__":
    main()
