"""PGD throughput: robustlora.attacks.gradient.pgd vs torchattacks.PGD on the same ResNet18, data, ε, steps and device.

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
- ``--autocast bf16|fp16``: the gradient steps run under ``torch.autocast`` (robustlora.attacks.gradient computes its loss in
  float32, so a caller may do this); the images it returns are evaluated in float32.
- ``--channels-last``: the model and the images in channels_last memory format (cuDNN / oneDNN prefer it).
With a lever the runs are: robustlora (float32, NCHW), robustlora+levers, torchattacks, and torchattacks+levers
(torchattacks given the same channels_last model and autocast: the fair like-for-like figure). Every round runs each
once, in a rotating order; it prints images/s (best of --repeats, and the median), and each ratio both from the best
runs and as the median of the per-round ratios (a ratio of runs made seconds apart, robust to a load that drifts).

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
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustlora.attacks.gradient import pgd  # noqa: E402
from robustlora.models.resnet import autocast_off, build_model  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, measured after the device has finished."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


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


def interleaved(runners: dict[str, Callable[[], object]], device: torch.device,
                repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every runner: one warm-up each, then ``repeats`` rounds, each running every runner once
    in a rotated order (no runner always goes first or right after the same other one)."""
    for fn in runners.values():  # warm-up: allocator, cuDNN autotuning, oneDNN primitive caches
        fn()
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(time_it(runners[name], device))
    return times


def ratio_line(times: dict[str, list[float]], ours: str, theirs: str) -> str:
    """ours/theirs speed from the best runs and as the median of the per-round ratios."""
    best = min(times[theirs]) / min(times[ours])
    paired = statistics.median(t / o for o, t in zip(times[ours], times[theirs]))
    return f"ratio {ours}/{theirs}: {best:.3f} (best runs), {paired:.3f} (median of {len(times[ours])} rounds)"


def run_speed(args: argparse.Namespace, device: torch.device) -> None:
    torchattacks = import_torchattacks()
    model = make_model(args.model, args.classes, args.input_size or args.size, device)
    fast = to_format(copy.deepcopy(model), args.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    x_fast = to_format(x, args.channels_last)
    eps, alpha = args.eps255 / 255, args.eps255 / 4 / 255
    levers = lever_label(args.autocast, args.channels_last)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours(m: nn.Module, images: torch.Tensor, amp: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with autocast(device, amp):
                return pgd(m, images, y, eps, alpha, args.steps, random_start=True, generator=gen, keep=args.keep)
        return run

    def theirs(m: nn.Module, images: torch.Tensor, amp: str) -> Callable[[], torch.Tensor]:
        attack = torchattacks.PGD(m, eps=eps, alpha=alpha, steps=args.steps, random_start=True)

        def run() -> torch.Tensor:
            with autocast(device, amp):
                return attack(images, y)
        return run

    runners = {"robustlora": ours(model, x, "none")}
    if levers:
        runners[f"robustlora+{levers}"] = ours(fast, x_fast, args.autocast)
    if torchattacks is not None:
        runners["torchattacks"] = theirs(model, x, "none")
        if levers:
            runners[f"torchattacks+{levers}"] = theirs(fast, x_fast, args.autocast)
    times = interleaved(runners, device, args.repeats)

    version = torchattacks.__version__ if torchattacks is not None else "not installed"
    print(f"device={device} model={args.model} batch={args.batch} size={args.size} "
          f"input_size={args.input_size or args.size} steps={args.steps} eps={args.eps255:g}/255 "
          f"repeats={args.repeats} keep={args.keep} levers={levers or 'none'} torch={torch.__version__} "
          f"torchattacks={version} "
          f"threads={torch.get_num_threads()}")
    # best-of-N: the least disturbed run (other processes only ever add time); the median is printed too
    for name, t in times.items():
        print(f"{name:>34}: {args.batch / min(t):9.1f} img/s (best of {len(t)}; median "
              f"{args.batch / statistics.median(t):.1f})")
    if torchattacks is None:
        print("torchattacks not installed: pip install --no-deps torchattacks==3.5.1")
    else:
        print(ratio_line(times, "robustlora", "torchattacks"))
        if levers:
            print(ratio_line(times, f"robustlora+{levers}", "torchattacks"))
            print(ratio_line(times, f"robustlora+{levers}", f"torchattacks+{levers}"))
    if levers:
        print(ratio_line(times, f"robustlora+{levers}", "robustlora"))


# --- --check-default -------------------------------------------------------------------------------------------------


def robust_counts(model: nn.Module, images, labels: torch.Tensor, cfg, eps_list: list[float], device: torch.device,
                  amp: str, channels_last: bool) -> tuple[int, list[int], float]:
    """Clean-correct images, robust images per ε and seconds, for PGD run as the attack stage runs it (one generator
    seeded cfg.seed, batches of cfg.batch_size, ε in order) with the given levers; evaluated in float32."""
    from robustlora.evaluation.suite import _to_batch

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    clean, robust = 0, [0] * len(eps_list)
    sync(device)
    start = time.perf_counter()
    for lo in range(0, len(labels), cfg.batch_size):
        x = to_format(_to_batch(images, lo, lo + cfg.batch_size, device), channels_last)
        y = labels[lo:lo + cfg.batch_size].to(device)
        with torch.no_grad(), autocast_off(device):
            clean += int((model(x).argmax(1) == y).sum())
        for i, e in enumerate(eps_list):
            with autocast(device, amp):
                x_adv = pgd(model, x, y, e, cfg.pgd.step_for(e), cfg.pgd.steps, random_start=cfg.pgd.random_start,
                            restarts=cfg.pgd.restarts, generator=gen)
            with torch.no_grad(), autocast_off(device):  # the final evaluation: float32
                robust[i] += int((model(x_adv).argmax(1) == y).sum())
    sync(device)
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


def check_default(args: argparse.Namespace, device: torch.device) -> int | None:
    """Robust accuracy of PGD with the levers vs float32 PGD on every trained model of the default study; returns
    the largest difference in robust (or clean-correct) images over models and ε (None: nothing to check)."""
    from robustlora.config import load_params
    from robustlora.evaluation.suite import _pgd_eps, attacked_images
    from robustlora.models.resnet import load_variant

    levers = lever_label(args.autocast, args.channels_last)
    if not levers:
        print("--check-default: no lever given (--autocast / --channels-last): nothing to compare")
        return None
    params = load_params(ROOT / args.params)
    cfg = params.attack
    images, labels, image_ids = attacked_images(ROOT / args.prepared, cfg)
    eps_list = _pgd_eps(cfg)
    paths = [(v, p) for v in params.variants for p in sorted((ROOT / args.models / v).glob("seed_*.pt"))
             if not args.variants or v in args.variants]
    paths = [(v, p) for v, p in paths if args.seeds is None or int(p.stem.split("_")[1]) in args.seeds]
    if not paths:
        print(f"--check-default: no trained models under {args.models}/<variant>/seed_<s>.pt: skipped")
        return None
    print(f"\ncheck on the default study: {len(labels)} val images, PGD-{cfg.pgd.steps} "
          f"(random start {cfg.pgd.random_start}, restarts {cfg.pgd.restarts}, seed {cfg.seed}), "
          f"float32 vs {levers}; final evaluation in float32; device={device}")
    print(f"{'model':<24} {'ε':>9} {'clean':>6} {'float32':>8} {levers:>14} {'diff':>5} {'stage':>6}")
    worst, t_ref, t_fast = 0, 0.0, 0.0
    for variant, path in paths:
        seed = int(path.stem.split("_")[1])
        model, _ = load_variant(path)
        model.to(device)
        clean, ref, s_ref = robust_counts(model, images, labels, cfg, eps_list, device, "none", False)
        fast_model = to_format(copy.deepcopy(model), args.channels_last)
        clean_fast, fast, s_fast = robust_counts(fast_model, images, labels, cfg, eps_list, device, args.autocast,
                                                 args.channels_last)
        stage = stage_counts(ROOT / args.results / f"{variant}.parquet", seed, eps_list, image_ids)
        t_ref, t_fast = t_ref + s_ref, t_fast + s_fast
        for e, a, b, s in zip(eps_list, ref, fast, stage):
            worst = max(worst, abs(a - b), abs(clean - clean_fast))
            print(f"{variant + ' seed ' + str(seed):<24} {e * 255:>5.3g}/255 {clean:>6} {a:>8} {b:>14} {b - a:>+5} "
                  f"{'—' if s is None else s:>6}")
    print(f"largest |difference| in robust images: {worst} -> {'PASS' if worst <= 1 else 'FAIL'} (within one "
          f"image); time float32 {t_ref:.1f} s, {levers} {t_fast:.1f} s (ratio {t_ref / t_fast:.2f})")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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

    sys.stdout.reconfigure(line_buffering=True)  # progress shows when redirected to a file
    device = torch.device(args.device)
    if not args.no_speed:
        run_speed(args, device)
    if args.check_default and (check_default(args, device) or 0) > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
