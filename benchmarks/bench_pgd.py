"""PGD throughput: robustlora.attacks.pgd vs torchattacks.PGD on the same ResNet18, data, ε, steps and device.

    PYTHONPATH=src python benchmarks/bench_pgd.py                       # CPU defaults: batch 32, 32x32, 5 steps
    PYTHONPATH=src python benchmarks/bench_pgd.py --device cuda --batch 256 --size 64 --steps 10

Prints images/s for both and the ratio ours / torchattacks (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchattacks
import torchvision
from torch import nn

from robustlora.attacks import pgd

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """Takes images in [0, 1] and normalises inside, the convention of every robustlora model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Seconds for one call, measured after the device has finished."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="image height = width, pixels")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eps255", type=float, default=8.0, help="ε in /255 units")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Normalized(torchvision.models.resnet18(num_classes=10)).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    eps, alpha = args.eps255 / 255, args.eps255 / 4 / 255

    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    gen = torch.Generator(device=device).manual_seed(0)
    runners = {
        "robustlora": lambda: pgd(model, x, y, eps, alpha, args.steps, random_start=True, generator=gen),
        "torchattacks": lambda: theirs(x, y),
    }
    for fn in runners.values():  # warm-up: allocator, cuDNN autotuning
        fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        # alternate the order so neither side always runs on a warmer machine
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            times[name].append(time_it(runners[name], device))

    # best-of-N: the least disturbed run (other processes only ever add time); the median is printed too
    rate = {name: args.batch / min(t) for name, t in times.items()}
    print(f"device={device} batch={args.batch} size={args.size} steps={args.steps} eps={args.eps255:g}/255 "
          f"repeats={args.repeats} torch={torch.__version__} torchattacks={torchattacks.__version__}")
    for name, value in rate.items():
        print(f"{name:>13}: {value:9.1f} img/s (best of {args.repeats}; median "
              f"{args.batch / statistics.median(times[name]):.1f})")
    print(f"ratio robustlora/torchattacks: {rate['robustlora'] / rate['torchattacks']:.3f}")


if __name__ == "__main__":
    main()
