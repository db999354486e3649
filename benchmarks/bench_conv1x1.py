"""Training-step speed of ResNet18 with robustlora's centre-tap Conv2d vs torchvision's plain nn.Conv2d, same run.

At small input sizes ResNet18's layer4 (and at 16 px also layer3) works on 1x1 maps; oneDNN's weight gradient for a
3x3 convolution of a 1x1 map is very slow on some CPUs (about 3 GFLOP/s on a 2-core AVX2 EPYC, where sgemm runs at
100). robustlora.models.resnet.Conv2d runs that case as the linear map of the centre tap (same outputs and gradients).

    PYTHONPATH=src python benchmarks/bench_conv1x1.py --input-size 24 --repeats 5

Prints images/s of a full fine-tuning step for both (best of --repeats, and the median; the two interleaved, so
drift in machine speed hits both alike) and the ratio ours / plain (> 1: faster).
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable

import harness  # first: puts this checkout's src/ on the path
import torch
import torch.nn.functional as F
from torch import nn

from robustlora.models.resnet import build_model


def plain_copy(model: nn.Module) -> nn.Module:
    """The same model with every centre-tap Conv2d turned back into torchvision's nn.Conv2d."""
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, nn.Conv2d):
            m.__class__ = nn.Conv2d
    return other


def training_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` SGD steps (momentum 0.9) of full fine-tuning on one batch, as one call."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_options(parser, device=False)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = harness.setup(args)
    torch.manual_seed(0)
    ours = build_model(10, args.input_size)
    plain = plain_copy(ours)
    x, y = torch.rand(args.batch_size, 3, 64, 64), torch.randint(0, 10, (args.batch_size,))
    runners = {"ours": training_steps(ours, x, y, args.steps), "plain": training_steps(plain, x, y, args.steps)}
    times = harness.interleaved(runners, device, args.repeats)  # the warm-up call creates oneDNN's primitives
    print(f"input {args.input_size} px, batch {args.batch_size}, {args.steps} steps per call, "
          f"{torch.get_num_threads()} threads")
    for name, t in times.items():
        print(harness.rate_line(name, args.steps * args.batch_size, t))
    print(harness.ratio_line(times, "ours", "plain"))


if __name__ == "__main__":
    main()
