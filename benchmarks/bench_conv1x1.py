"""Training-step speed of ResNet18 with robustlora's centre-tap Conv2d vs torchvision's plain nn.Conv2d, same run.

At small input sizes ResNet18's layer4 (and at 16 px also layer3) works on 1x1 maps; oneDNN's weight gradient for a
3x3 convolution of a 1x1 map is very slow on some CPUs (about 3 GFLOP/s on a 2-core AVX2 EPYC, where sgemm runs at
100). robustlora.models.resnet.Conv2d runs that case as the linear map of the centre tap (same outputs and gradients).

    PYTHONPATH=src python benchmarks/bench_conv1x1.py --input-size 24 --repeats 5

Prints images/s of a full fine-tuning step for both and the ratio ours / plain (> 1: faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from robustlora.models.resnet import build_model


def plain_copy(model: nn.Module) -> nn.Module:
    """The same model with every centre-tap Conv2d turned back into torchvision's nn.Conv2d."""
    import copy

    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, nn.Conv2d):
            m.__class__ = nn.Conv2d
    return other


def step_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(model(x), y)  # warm-up (oneDNN primitive creation)
    loss.backward()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-size", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    ours = build_model(10, args.input_size)
    plain = plain_copy(ours)
    x, y = torch.rand(args.batch_size, 3, 64, 64), torch.randint(0, 10, (args.batch_size,))
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both alike
        rates["ours"].append(step_rate(ours, x, y, args.steps))
        rates["plain"].append(step_rate(plain, x, y, args.steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"input {args.input_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"ours  {med['ours']:8.1f} img/s (median of {args.repeats})")
    print(f"plain {med['plain']:8.1f} img/s")
    print(f"ratio ours/plain: {med['ours'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
