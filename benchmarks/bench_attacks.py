"""Attack throughput in images/s: our PGD, the official AutoAttack (standard and the CPU custom setting) and ART's
Square Attack, on a ResNet18 fed 64 px images, at the model input sizes 64 and 24 (the default study's).

    PYTHONPATH=src python benchmarks/bench_attacks.py --images 8 --standard-images 2 --square-queries 100  # CPU
    PYTHONPATH=src python benchmarks/bench_attacks.py --device cuda --images 256 --eps255 8 0.25      # a GPU

The model is robustlora's Classifier (build_model(classes, input_size): it resizes the 64 px images to input_size
and normalises inside) with seeded random weights, in eval mode; the images are uniform noise and each one's label is
the model's own clean prediction, so every image is clean-correct and gets attacked. Throughput is attacked images
per second of wall-clock (device-synchronised) for one call of the attack on all of them.

Read the figures with the robust accuracy next to them: AutoAttack runs its next component only on the images the
previous ones left robust, and Square stops querying an image once it is fooled, so their cost per image grows with
the share of images that stay robust. A randomly initialised network is fooled by almost anything at 8/255; a tiny
ε (e.g. --eps255 0.25) keeps most images robust and so shows the full cost of every component (an upper bound). PGD
always runs all its steps on every image.

Attacks (--attacks):
- pgd: robustlora.attacks.gradient.pgd (as bench_pgd.our_pgd runs it), --pgd-steps steps of 2.5·ε/steps (the default
  study's rule), random start, float32;
- pgd-bf16: the same under bf16 autocast with a channels_last model (the GPU levers; very slow on CPUs without bf16);
- aa-standard: pyautoattack AutoAttack(version="standard"): APGD-CE, APGD-T (9 targets), FAB-T, Square 5000 queries;
- aa-custom: the CPU default of params.yaml: APGD-CE + APGD-T, n_iter 10, n_target_classes 3, one restart;
- square: ART 1.20 SquareAttack (norm ∞, p_init 0.8, one restart, max_iter = --square-queries) on
  art.estimators.classification.PyTorchClassifier (clip_values (0, 1), cross-entropy, no preprocessing).
pyautoattack and ART are imported only when their rows run; a missing one is reported as not installed.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import harness  # first: puts this checkout's src/ on the path
import bench_pgd
import numpy as np
import torch
from torch import nn

from robustlora.models.resnet import autocast_off, build_model

ATTACKS = ("pgd", "pgd-bf16", "aa-custom", "aa-standard", "square")
IMAGE_SIZE = 64  # pixels of the images fed to the model (Tiny ImageNet's); the model resizes to its input_size


class NotInstalled(Exception):
    """The attack's package is missing: the row says so instead of failing the run."""


@dataclass
class Row:
    attack: str
    input_size: int
    images: int
    eps255: float
    seconds: float = float("nan")
    robust: int = -1
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds == self.seconds and self.seconds > 0 else float("nan")


def make_case(classes: int, input_size: int, images: int, device: torch.device,
              seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded random Classifier (eval mode), uniform 64 px images in [0, 1] and labels = its clean predictions."""
    torch.manual_seed(seed)
    model = build_model(classes, input_size).to(device).eval()
    x = torch.rand(images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


# --- the attacks: each takes (model, x, y, ε, args, device) and returns x_adv on the device --------------------------


def run_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, args: argparse.Namespace,
            device: torch.device, amp: str = "none") -> torch.Tensor:
    """Our PGD; with ``amp`` 'bf16' its gradient steps run under autocast on a channels_last copy of the model (made
    outside the timed call, see throughput) and x_adv is evaluated by the caller in float32 on the original model."""
    x = bench_pgd.to_format(x, amp != "none")
    gen = torch.Generator(device=device).manual_seed(0)
    return bench_pgd.our_pgd(model, x, y, eps, 2.5 * eps / args.pgd_steps, args.pgd_steps, generator=gen, amp=amp)


def _autoattack(model: nn.Module, eps: float, version: str, device: torch.device):
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise NotInstalled(f"pyautoattack not installed ({e})") from None
    logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its checks and progress lines
    if version == "standard":
        aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=0)
    else:  # params.yaml's CPU default (autoattack: version custom)
        aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], device=device,
                        seed=0)
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = 10
        aa.apgd.n_restarts = 1
        aa.apgd_targeted.n_target_classes = 3
    aa.verbose = False
    return aa


def run_aa(version: str) -> Callable[..., torch.Tensor]:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, args: argparse.Namespace,
            device: torch.device) -> torch.Tensor:
        aa = _autoattack(model, eps, version, device)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=args.batch)
        return x_adv
    return run


def run_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, args: argparse.Namespace,
               device: torch.device) -> torch.Tensor:
    try:
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        raise NotInstalled(f"ART not installed ({e})") from None
    logging.getLogger("art").setLevel(logging.ERROR)
    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=int(args.classes), clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    attack = SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=args.square_queries, p_init=0.8,
                          nb_restarts=1, batch_size=args.batch, verbose=False)
    np.random.seed(0)  # Square draws from numpy's global generator
    x_adv = attack.generate(x.cpu().numpy(), y=y.cpu().numpy())
    return torch.from_numpy(x_adv).to(device)


RUNNERS: dict[str, Callable[..., torch.Tensor]] = {
    "pgd": run_pgd, "pgd-bf16": functools.partial(run_pgd, amp="bf16"), "aa-custom": run_aa("custom"),
    "aa-standard": run_aa("standard"),
    "square": run_square,
}


def throughput(attack: str, input_size: int, images: int, eps255: float, args: argparse.Namespace,
               device: torch.device) -> Row:
    """One timed call of ``attack`` on ``images`` fresh images; robust ones counted in float32; ‖δ‖∞ checked."""
    row = Row(attack, input_size, images, eps255)
    model, x, y = make_case(args.classes, input_size, images, device)
    attacked = copy.deepcopy(model).to(memory_format=torch.channels_last) if attack == "pgd-bf16" else model
    eps = eps255 / 255
    try:
        row.seconds, x_adv = harness.timed(lambda: RUNNERS[attack](attacked, x, y, eps, args, device), device)
    except NotInstalled as e:
        row.note = str(e)
        return row
    linf = float((x_adv - x).abs().amax()) if len(x) else 0.0
    if linf > eps + 1e-6 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise AssertionError(f"{attack}: x_adv leaves the ε-ball or [0, 1] (‖δ‖∞ = {linf * 255:.4f}/255)")
    with torch.no_grad(), autocast_off(device):
        row.robust = int((model(x_adv).argmax(1) == y).sum())
    return row


def print_table(rows: list[Row], file=sys.stdout, header: bool = True) -> None:
    if header:
        print(f"{'attack':<12} {'input px':>8} {'images':>6} {'ε/255':>6} {'seconds':>9} {'img/s':>9} "
              f"{'robust acc':>10}  note", file=file)
    for r in rows:
        if r.seconds != r.seconds:
            print(f"{r.attack:<12} {r.input_size:>8} {r.images:>6} {r.eps255:>6g} {'—':>9} {'—':>9} {'—':>10}  "
                  f"{r.note}", file=file)
            continue
        print(f"{r.attack:<12} {r.input_size:>8} {r.images:>6} {r.eps255:>6g} {r.seconds:>9.2f} "
              f"{r.per_second:>9.2f} {r.robust / r.images:>10.3f}  {r.note}", file=file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options bench_attacks and gpu_attacks share (harness.add_options adds --device and --threads)."""
    harness.add_options(parser)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=None,
                        help="default: all on CUDA; on CPU all but pgd-bf16")
    parser.add_argument("--input-sizes", nargs="+", type=int, default=[64, 24],
                        help="model.input_size values (the images are 64 px)")
    parser.add_argument("--eps255", nargs="+", type=float, default=[8.0], help="ε values in /255 units")
    parser.add_argument("--images", type=int, default=16, help="images per attack")
    parser.add_argument("--standard-images", type=int, default=None,
                        help="images for aa-standard (default: --images); it is by far the slowest")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="the attacks' batch size")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--square-queries", type=int, default=1000, help="Square's query budget (ART max_iter)")


def plan(args: argparse.Namespace, device: torch.device) -> list[tuple[str, int, int, float]]:
    attacks = args.attacks or [a for a in ATTACKS if device.type == "cuda" or a != "pgd-bf16"]
    out = []
    for size in args.input_sizes:
        for eps255 in args.eps255:
            for attack in attacks:
                n = args.standard_images if attack == "aa-standard" and args.standard_images else args.images
                out.append((attack, size, n, eps255))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    device = harness.setup(args)
    print(f"{harness.environment(device)} images {IMAGE_SIZE} px, "
          f"{args.classes} classes, random ResNet18, labels = its predictions; batch {args.batch}, "
          f"PGD-{args.pgd_steps}, Square {args.square_queries} queries")
    rows = []
    for attack, size, n, eps255 in plan(args, device):
        rows.append(throughput(attack, size, n, eps255, args, device))
        print_table(rows[-1:], file=sys.stderr, header=False)  # progress
    print()
    print_table(rows)
    print("robust acc: share of the (all clean-correct) images still correct on x_adv; AutoAttack and Square spend "
          "less on images they have fooled, so their img/s rise as robust acc falls.")


if __name__ == "__main__":
    main()
