"""PGD throughput: robustlora.attacks.gradient.pgd vs torchattacks.PGD on the same ResNet18, data, ε, steps and device.
Every benchmark that times PGD builds its runs with this module (:func:`our_pgd`, :func:`pgd_speed`).

    PYTHONPATH=src python benchmarks/bench_pgd.py                       # CPU defaults: batch 32, 32x32, 5 steps
    PYTHONPATH=src python benchmarks/bench_pgd.py --channels-last       # + our PGD on a channels_last model
    PYTHONPATH=src python benchmarks/bench_pgd.py --device cuda --batch 256 --size 64 --steps 10 \
        --autocast bf16 --channels-last
    PYTHONPATH=src python benchmarks/bench_pgd.py --channels-last --check-default   # + the default study's models

Needs torchattacks, which is not a declared dependency: ``pip install --no-deps torchattacks==3.5.1`` (its pin
``requests~=2.25.1`` conflicts with mlflow and dvc; the package itself runs with current requests). Without it only
our PGD is timed.

Our PGD returns the strongest iterate (keep='best', as the study runs it), which costs one forward pass more per
run than torchattacks' last iterate; ``--keep last`` times it with torchattacks' semantics.

Levers (for our PGD; the reference is torchattacks as it comes, float32 on a plain NCHW model):
- ``--autocast bf16|fp16``: the gradient steps run under ``torch.autocast`` (robustlora.attacks.gradient computes its
  loss in float32, so a caller may do this); the images it returns are evaluated in float32.
- ``--channels-last``: the model and the images in channels_last memory format (cuDNN / oneDNN prefer it).
With a lever the runs are: robustlora (float32, NCHW), robustlora+levers, torchattacks, and torchattacks+levers
(torchattacks given the same channels_last model and autocast: the fair like-for-like figure). Every round runs each
once, in a rotating order (harness.interleaved); it prints images/s (best of --repeats, and the median), and each
ratio both from the best runs and as the median of the per-round ratios.

``--check-default``: loads the default study's trained models (models/<variant>/seed_<s>.pt), the attack stage's
val subset (attack.n_images, attack.seed) and its PGD settings (every ε of attack.eps plus pgd.sanity_eps), runs
PGD as the attack stage does (one generator seeded attack.seed, batches of attack.batch_size, ε in order) once in
float32 and once with the levers, evaluates both in float32, and prints per model and ε the robust images of each:
the lever passes when they differ by at most one image everywhere (exit status 1 when not). The float32 counts are
also compared with the attack stage's results (results/attack/<variant>.parquet, column "stage") where those exist
for the same images. ``--variants`` / ``--seeds`` pick models; ``--no-speed`` skips the timing. bf16 on a CPU without
native bf16 (this project's AVX2 EPYCs) is emulated and ~15x slower than float32: the check then takes ~2-4 min per
model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import harness  # first: puts this checkout's src/ on the path
import torch
from torch import nn

from robustlora.attacks.gradient import pgd
from robustlora.attacks.inputs import to_batch
from robustlora.models.resnet import IMAGENET_MEAN, IMAGENET_STD, autocast_off, build_model

AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Normalized(nn.Module):
    """Takes images in [0, 1] and normalises inside, the convention of every robustlora model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class Run(NamedTuple):
    """One timed PGD: whose (robustlora or torchattacks), under which autocast, on a channels_last model or not."""

    name: str
    library: str = "robustlora"
    amp: str = "none"
    channels_last: bool = False
    keep: str = "best"  # robustlora only; torchattacks always returns its last iterate


def autocast(device: torch.device, name: str) -> contextlib.AbstractContextManager:
    """torch.autocast with ``name``'s dtype on ``device`` ('none': a no-op)."""
    dtype = AUTOCAST[name]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def lever_label(amp: str, channels_last: bool) -> str:
    parts = ([amp] if amp != "none" else []) + (["channels_last"] if channels_last else [])
    return "+".join(parts)


def to_format(t: torch.Tensor | nn.Module, channels_last: bool):
    if not channels_last:
        return t
    if isinstance(t, nn.Module):
        return t.to(memory_format=torch.channels_last)
    return t.contiguous(memory_format=torch.channels_last)


def make_model(kind: str, classes: int, input_size: int, device: torch.device) -> nn.Module:
    """A freshly initialised ResNet18 (seed 0) in eval mode: torchvision's behind a normalising wrapper, or
    robustlora's Classifier (resizes to ``input_size`` and normalises inside)."""
    torch.manual_seed(0)
    if kind == "torchvision":
        import torchvision

        model: nn.Module = Normalized(torchvision.models.resnet18(num_classes=classes))
    else:
        model = build_model(classes, input_size)
    return model.to(device).eval()


def import_torchattacks():
    try:
        import torchattacks
    except ImportError:
        return None
    return torchattacks


def our_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int, *,
            generator: torch.Generator, amp: str = "none", keep: str = "best") -> torch.Tensor:
    """How every benchmark runs our PGD: random start, one restart, ε and step in [0, 1] pixels, the gradient steps
    under ``amp`` autocast ('none': float32)."""
    with autocast(x.device, amp):
        return pgd(model, x, y, eps, step, steps, random_start=True, generator=generator, keep=keep)


def pgd_speed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, steps: int,
              runs: list[Run], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each run on (x, y), in interleaved rounds; torchattacks runs are dropped when it is not
    installed. A channels_last run gets a channels_last copy of ``model`` and of ``x``."""
    torchattacks = import_torchattacks()
    fast = to_format(copy.deepcopy(model), True) if any(r.channels_last for r in runs) else model
    x_fast = to_format(x, True)
    gen = torch.Generator(device=x.device).manual_seed(0)

    def runner(run: Run) -> Callable[[], torch.Tensor]:
        m, images = (fast, x_fast) if run.channels_last else (model, x)
        if run.library == "robustlora":
            return lambda: our_pgd(m, images, y, eps, step, steps, generator=gen, amp=run.amp, keep=run.keep)
        attack = torchattacks.PGD(m, eps=eps, alpha=step, steps=steps, random_start=True)

        def theirs() -> torch.Tensor:
            with autocast(x.device, run.amp):
                return attack(images, y)
        return theirs

    runners = {r.name: runner(r) for r in runs if r.library == "robustlora" or torchattacks is not None}
    return harness.interleaved(runners, x.device, repeats)


def speed_data(classes: int, batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uniform images in [0, 1] and random labels: the inputs of every PGD speed run."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    return x, torch.randint(0, classes, (batch,), generator=g).to(device)


def run_speed(args: argparse.Namespace, device: torch.device) -> None:
    torchattacks = import_torchattacks()
    model = make_model(args.model, args.classes, args.input_size or args.size, device)
    x, y = speed_data(args.classes, args.batch, args.size, device)
    levers = lever_label(args.autocast, args.channels_last)
    runs = [Run("robustlora", keep=args.keep),
            Run(f"robustlora+{levers}", "robustlora", args.autocast, args.channels_last, args.keep),
            Run("torchattacks", "torchattacks"),
            Run(f"torchattacks+{levers}", "torchattacks", args.autocast, args.channels_last)]
    runs = [r for r in runs if levers or "+" not in r.name]
    eps = args.eps255 / 255
    times = pgd_speed(model, x, y, eps=eps, step=eps / 4, steps=args.steps, runs=runs, repeats=args.repeats)

    version = torchattacks.__version__ if torchattacks is not None else "not installed"
    print(f"{harness.environment(device)} model={args.model} batch={args.batch} size={args.size} "
          f"input_size={args.input_size or args.size} steps={args.steps} eps={args.eps255:g}/255 "
          f"repeats={args.repeats} keep={args.keep} levers={levers or 'none'} torchattacks={version}")
    for name, t in times.items():
        print(harness.rate_line(name, args.batch, t))
    if torchattacks is None:
        print("torchattacks not installed: pip install --no-deps torchattacks==3.5.1")
    else:
        print(harness.ratio_line(times, "robustlora", "torchattacks"))
        if levers:
            print(harness.ratio_line(times, f"robustlora+{levers}", "torchattacks"))
            print(harness.ratio_line(times, f"robustlora+{levers}", f"torchattacks+{levers}"))
    if levers:
        print(harness.ratio_line(times, f"robustlora+{levers}", "robustlora"))


# --- --check-default -------------------------------------------------------------------------------------------------


def robust_counts(model: nn.Module, images, labels: torch.Tensor, cfg, eps_list: list[float], device: torch.device,
                  amp: str, channels_last: bool) -> tuple[int, list[int], float]:
    """Clean-correct images, robust images per ε and seconds, for PGD run as the attack stage runs it (one generator
    seeded cfg.seed, batches of cfg.batch_size, ε in order) with the given levers; evaluated in float32."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    clean, robust = 0, [0] * len(eps_list)
    harness.sync(device)
    start = time.perf_counter()
    for lo in range(0, len(labels), cfg.batch_size):
        x = to_format(to_batch(images, lo, lo + cfg.batch_size, device), channels_last)  # as the attack stage
        y = labels[lo:lo + cfg.batch_size].to(device)
        with torch.no_grad(), autocast_off(device):
            clean += int((model(x).argmax(1) == y).sum())
        for i, e in enumerate(eps_list):
            with autocast(device, amp):
                x_adv = pgd(model, x, y, e, cfg.pgd.step_for(e), cfg.pgd.steps, random_start=cfg.pgd.random_start,
                            restarts=cfg.pgd.restarts, generator=gen)
            with torch.no_grad(), autocast_off(device):  # the final evaluation: float32
                robust[i] += int((model(x_adv).argmax(1) == y).sum())
    harness.sync(device)
    return clean, robust, time.perf_counter() - start


def stage_counts(results: Path, seed: int, eps_list: list[float], image_ids) -> list[int | None]:
    """Robust images per ε in the attack stage's rows for this seed; None where they are missing or were made on
    other images (results older than params.yaml's attack section)."""
    if not results.exists():
        return [None] * len(eps_list)
    import pandas as pd

    df = pd.read_parquet(results, columns=["seed", "attack", "eps", "image", "adv_correct"])
    df = df[(df["seed"] == seed) & (df["attack"] == "pgd")]
    out: list[int | None] = []
    for e in eps_list:
        rows = df[(df["eps"] - e).abs() < 1e-12]
        same = len(rows) == len(image_ids) and (rows["image"].to_numpy() == image_ids).all()
        out.append(int(rows["adv_correct"].sum()) if same else None)
    return out


def trained_models(args: argparse.Namespace, params) -> list[tuple[str, int, Path]]:
    """(variant, seed, path) of every trained model of ``params`` under --models that --variants / --seeds select."""
    from robustlora.layout import seed_model
    from robustlora.models.adaptation import training_seeds

    out = []
    for name, spec in params.variants.items():
        for seed in training_seeds(spec, params.train.seeds):
            path = seed_model(harness.ROOT / args.models / name, seed)
            wanted = (not args.variants or name in args.variants) and (args.seeds is None or seed in args.seeds)
            if wanted and path.exists():
                out.append((name, seed, path))
    return out


def check_default(args: argparse.Namespace, device: torch.device) -> int | None:
    """Robust accuracy of PGD with the levers vs float32 PGD on every trained model of the default study; returns
    the largest difference in robust (or clean-correct) images over models and ε (None: nothing to check)."""
    from robustlora.config import load_params
    from robustlora.evaluation.suite import attacked_images, pgd_eps
    from robustlora.models.resnet import load_variant

    levers = lever_label(args.autocast, args.channels_last)
    if not levers:
        print("--check-default: no lever given (--autocast / --channels-last): nothing to compare")
        return None
    params = load_params(harness.ROOT / args.params)
    cfg = params.attack
    models = trained_models(args, params)
    if not models:
        print(f"--check-default: no trained models under {args.models}/<variant>/seed_<s>.pt: skipped")
        return None
    images, labels, image_ids = attacked_images(harness.ROOT / args.prepared, cfg)
    eps_list = pgd_eps(cfg)
    print(f"\ncheck on the default study: {len(labels)} val images, PGD-{cfg.pgd.steps} "
          f"(random start {cfg.pgd.random_start}, restarts {cfg.pgd.restarts}, seed {cfg.seed}), "
          f"float32 vs {levers}; final evaluation in float32; device={device}")
    print(f"{'model':<24} {'ε':>9} {'clean':>6} {'float32':>8} {levers:>14} {'diff':>5} {'stage':>6}")
    worst, t_ref, t_fast = 0, 0.0, 0.0
    for variant, seed, path in models:
        model, _ = load_variant(path)
        model.to(device)
        clean, ref, s_ref = robust_counts(model, images, labels, cfg, eps_list, device, "none", False)
        fast_model = to_format(copy.deepcopy(model), args.channels_last)
        clean_fast, fast, s_fast = robust_counts(fast_model, images, labels, cfg, eps_list, device, args.autocast,
                                                 args.channels_last)
        stage = stage_counts(harness.ROOT / args.results / f"{variant}.parquet", seed, eps_list, image_ids)
        t_ref, t_fast = t_ref + s_ref, t_fast + s_fast
        for e, a, b, s in zip(eps_list, ref, fast, stage):
            worst = max(worst, abs(a - b), abs(clean - clean_fast))
            print(f"{variant + ' seed ' + str(seed):<24} {e * 255:>5.3g}/255 {clean:>6} {a:>8} {b:>14} {b - a:>+5} "
                  f"{'—' if s is None else s:>6}")
    print(f"largest |difference| in robust images: {worst} -> {'PASS' if worst <= 1 else 'FAIL'} (within one "
          f"image); time float32 {t_ref:.1f} s, {levers} {t_fast:.1f} s (ratio {t_ref / t_fast:.2f})")
    return worst


def main() -> None:
    parser = harness.add_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model", choices=["torchvision", "classifier"], default="torchvision",
                        help="torchvision's ResNet18 behind a normalising wrapper, or robustlora's Classifier")
    parser.add_argument("--input-size", type=int, default=None,
                        help="classifier only: the size it resizes to (default: --size)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="image height = width, pixels")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eps255", type=float, default=8.0, help="ε in /255 units")
    parser.add_argument("--keep", choices=["best", "last"], default="best",
                        help="our PGD's keep: best (the study's; one more forward pass) or last (torchattacks')")
    parser.add_argument("--autocast", choices=list(AUTOCAST), default="none",
                        help="our PGD's gradient steps under torch.autocast with this dtype")
    parser.add_argument("--channels-last", action="store_true", help="our PGD on a channels_last model and input")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    parser.add_argument("--check-default", action="store_true",
                        help="robust accuracy with the levers vs float32 on the default study's trained models")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", default="models")
    parser.add_argument("--prepared", default="data/prepared/target")
    parser.add_argument("--results", default="results/attack")
    parser.add_argument("--variants", nargs="*", default=None, help="--check-default: only these variants")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="--check-default: only these seeds")
    args = parser.parse_args()

    device = harness.setup(args)
    if not args.no_speed:
        run_speed(args, device)
    if args.check_default and (check_default(args, device) or 0) > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
