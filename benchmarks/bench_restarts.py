"""PGD restarts side by side (robustlora.attacks.gradient.pgd) vs one restart after another, same model, images and run.

The convergence check (attack.convergence) runs PGD with 10x the steps and 5 restarts on the few images PGD left
correct. On a CPU a batch of 4 images costs nearly as much as one of 20, so crafting the restarts in one batch
(up to attacks.RESTART_BATCH images) is the faster way. The sequential reference is the same function with
RESTART_BATCH set to the batch size (one restart per pass). The step size is tiny, so no image is fooled and
neither variant stops early: both do every restart.

    PYTHONPATH=src python benchmarks/bench_restarts.py --images 4 --restarts 5 --steps 50 --repeats 3

Prints seconds per call of both (median over rounds, the two alternating) and the ratio sequential / side by side
(> 1: side by side is faster), and checks that both return the same points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustlora.attacks import gradient as attacks
from robustlora.models.resnet import build_model


def timed(model, x, y, args, restart_batch: int) -> tuple[float, torch.Tensor]:
    attacks.RESTART_BATCH = restart_batch
    t = time.perf_counter()
    out = attacks.pgd(model, x, y, 1e-4, 1e-5, args.steps, restarts=args.restarts,
                      generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(10, args.input_size).eval()
    x = torch.rand(args.images, 3, 64, 64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correct to begin with
    default = attacks.RESTART_BATCH
    timed(model, x, y, args, default)  # warm-up
    seq, side = [], []
    for _ in range(args.repeats):
        s, out_seq = timed(model, x, y, args, args.images)
        b, out_side = timed(model, x, y, args, default)
        seq.append(s)
        side.append(b)
    attacks.RESTART_BATCH = default
    same = torch.allclose(out_seq, out_side, atol=1e-6)
    print(f"{args.images} images, {args.restarts} restarts x {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"one after another: {statistics.median(seq):.2f} s; side by side: {statistics.median(side):.2f} s; "
          f"ratio {statistics.median(seq) / statistics.median(side):.2f}; same points: {same}")


if __name__ == "__main__":
    main()
