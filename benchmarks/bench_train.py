"""Training throughput: robustlora.training.loop.fit vs a bare PyTorch loop on the same model, data, batch and device.

    PYTHONPATH=src python benchmarks/bench_train.py                         # CPU defaults: ~10 s on 2 idle cores
    PYTHONPATH=src python benchmarks/bench_train.py --device cuda --images 50000 --size 64 --input-size 64 --batch 256

Both sides train a fresh robustlora Classifier (ResNet18, same initial weights) for --epochs epochs on the same
random uint8 images with the same SGD settings, and both pay for the same augmentation (robustlora.training.loop.augment:
random crop with padding + flip; --no-augment turns it off on both). On CUDA both use bf16 autocast and channels_last,
as fit does. fit gets an empty holdout split, so no evaluation is counted; it still does its per-epoch bookkeeping
(scheduler step, copying the best weights to the CPU). Times are wall-clock around the whole call, device-synchronised,
best of --repeats with the order alternating. Prints img/s of both and the ratio ours / bare (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustlora.config import TrainConfig
from robustlora.data.dataset import Split
from robustlora.models.resnet import Classifier, build_model, pick_device
from robustlora.training.loop import augment, draw_augmentation, fit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    sync(device)
    return seen / (time.perf_counter() - t0)


Runner = Callable[[Classifier, Split, TrainConfig, torch.device], float]
RUNNERS: dict[str, Runner] = {"ours": run_ours, "bare": run_bare}


def compare(make_model: Callable[[], Classifier], train: Split, cfg: TrainConfig, device: torch.device,
            repeats: int, runners: dict[str, Runner] = RUNNERS) -> dict[str, dict[str, list[float]]]:
    """Alternating timed runs of the loops on fresh identical models; wall-clock and internal img/s of each run."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "internal": []} for name in runners}
    for r in range(repeats):
        # alternate the order so neither side always runs on a warmer machine
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            model = make_model()
            sync(device)
            t0 = time.perf_counter()
            internal = runners[name](model, train, cfg, device)
            sync(device)
            out[name]["wall"].append(cfg.max_epochs * len(train) / (time.perf_counter() - t0))
            out[name]["internal"].append(internal)
            del model
    return out


def report(results: dict[str, dict[str, list[float]]], header: str) -> str:
    """Prints the figures; returns the one-line summary (best-of-N wall-clock img/s and the ratio)."""
    print(header)
    for name, r in results.items():
        print(f"{name:>12}: {max(r['wall']):9.1f} img/s wall-clock (best of {len(r['wall'])}; median "
              f"{statistics.median(r['wall']):.1f}); epoch loops only: {max(r['internal']):.1f} img/s")
    ours, bare = max(results["ours"]["wall"]), max(results["bare"]["wall"])
    inner = max(results["ours"]["internal"]) / max(results["bare"]["internal"])
    # medians too: on a GPU one lucky run of either loop swings the best-of ratio by several percent
    median = statistics.median(results["ours"]["wall"]) / statistics.median(results["bare"]["wall"])
    summary = (f"ours {ours:.1f} img/s, bare {bare:.1f} img/s, ratio ours/bare = {ours / bare:.3f} "
               f"(median runs: {median:.3f}; epoch loops only: {inner:.3f}; goal >= 0.95)")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="stored image height = width, pixels")
    parser.add_argument("--input-size", type=int, default=32, help="model.input_size (resized inside the model)")
    parser.add_argument("--images", type=int, default=384, help="training images per epoch")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6, help="timed runs per loop (even: each goes first equally often)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip on either side")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    train = random_split(args.images, args.size, args.classes)
    cfg = train_config(args.batch, args.epochs, args.augment)
    make_model = model_factory(args.classes, args.input_size, device)
    # warm-up: allocator, thread pools, cuDNN heuristics; two batches of each loop
    warm = random_split(2 * args.batch, args.size, args.classes)
    compare(make_model, warm, train_config(args.batch, 1, args.augment), device, repeats=1)
    results = compare(make_model, train, cfg, device, args.repeats)
    report(results, f"device={device} batch={args.batch} size={args.size} input_size={args.input_size} "
                    f"images={args.images} epochs={args.epochs} augment={args.augment} repeats={args.repeats} "
                    f"threads={torch.get_num_threads()} torch={torch.__version__}")


if __name__ == "__main__":
    main()
