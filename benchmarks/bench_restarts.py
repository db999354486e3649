"""PGD restarts side by side (robustlora.attacks.gradient.pgd) vs one restart after another, same model, images and run.

The convergence check (attack.convergence) runs PGD with 10x the steps and 5 restarts on the few images PGD left
correct. On a CPU a batch of 4 images costs nearly as much as one of 20, so crafting the restarts in one batch
(up to gradient.RESTART_BATCH images) is the faster way. The sequential reference is the same function with
RESTART_BATCH set to the batch size (one restart per pass). The step size is tiny, so no image is fooled and
neither variant stops early: both do every restart.

    PYTHONPATH=src python benchmarks/bench_restarts.py --images 4 --restarts 5 --steps 50 --repeats 3

Prints seconds per call of both (best and median over rounds, the two interleaved) and the ratio side by side /
one after another in speed (> 1: side by side is faster), and checks that both return the same points.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import harness  # first: puts this checkout's src/ on the path
import torch

from robustlora.attacks import gradient
from robustlora.models.resnet import build_model


def restarts_run(model, x, y, args, restart_batch: int, out: dict[str, torch.Tensor],
                 name: str) -> Callable[[], None]:
    """One PGD call with RESTART_BATCH set to ``restart_batch``; its points go to ``out[name]``."""
    def run() -> None:
        default, gradient.RESTART_BATCH = gradient.RESTART_BATCH, restart_batch
        try:
            out[name] = gradient.pgd(model, x, y, 1e-4, 1e-5, args.steps, restarts=args.restarts,
                                    generator=torch.Generator().manual_seed(0))
        finally:
            gradient.RESTART_BATCH = default
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_options(parser, device=False)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = harness.setup(args)
    torch.manual_seed(0)
    model = build_model(10, args.input_size).eval()
    x = torch.rand(args.images, 3, 64, 64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correct to begin with
    points: dict[str, torch.Tensor] = {}
    runners = {"side by side": restarts_run(model, x, y, args, gradient.RESTART_BATCH, points, "side by side"),
               "one after another": restarts_run(model, x, y, args, args.images, points, "one after another")}
    times = harness.interleaved(runners, device, args.repeats)
    same = torch.allclose(points["one after another"], points["side by side"], atol=1e-6)
    print(f"{args.images} images, {args.restarts} restarts x {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"one after another: {statistics.median(times['one after another']):.2f} s; side by side: "
          f"{statistics.median(times['side by side']):.2f} s (medians of {args.repeats}); same points: {same}")
    print(harness.ratio_line(times, "side by side", "one after another"))


if __name__ == "__main__":
    main()
