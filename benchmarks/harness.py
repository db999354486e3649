"""What every benchmark script shares: this checkout's library on the path, the --device and --threads options,
device-synchronised timing (one call, or several runners in interleaved rounds), and the ratio line a comparison prints.

A script does ``import harness`` before any ``robustlora`` import (its own folder is on sys.path when it runs), which
puts the repository's src/ first, so ``python benchmarks/x.py`` measures this checkout's code. Times are seconds of
wall clock with the device synchronised before and after. A comparison reports the best run of each runner (other
processes only ever add time) and the median of the per-round ratios (robust to a load that drifts); a ratio is
ours / theirs in speed, so > 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

START = time.perf_counter()
T = TypeVar("T")


def elapsed() -> float:
    """Seconds since the script started (since this module was imported)."""
    return time.perf_counter() - START


def why_not(module: str) -> str | None:
    """None if ``module`` imports, else the one-line reason it does not."""
    try:
        importlib.import_module(module)
    except Exception as e:  # an ImportError, or a broken install of it
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


# ----------------------------------------------------------------------------- options and set-up


def add_options(parser: argparse.ArgumentParser, *, device: bool = True) -> argparse.ArgumentParser:
    """--threads, and --device unless the benchmark is CPU-only."""
    if device:
        parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads, line-buffer stdout (progress shows when redirected to a file), return --device (cpu when the
    script has no --device option)."""
    from robustlora.models.resnet import pick_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)
    return pick_device(getattr(args, "device", "cpu"), "--device")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


def environment(device: torch.device) -> str:
    """One line naming the device, torch, python and whether float32 convolutions / matmuls use TF32 on CUDA."""
    tf32 = f" cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} matmul.allow_tf32=" \
           f"{torch.backends.cuda.matmul.allow_tf32}" if device.type == "cuda" else ""
    return (f"device={device} ({device_name(device)}) torch={torch.__version__} python={sys.version.split()[0]}"
            f"{tf32}")


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU and for None: work that uses no device)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | None = None) -> tuple[float, T]:
    """Seconds for one call of ``fn``, from an idle device to an idle device, and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def time_it(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds for one call of ``fn``, from an idle device to an idle device."""
    return timed(fn, device)[0]


def round_orders(names: list[str], repeats: int) -> Iterator[list[str]]:
    """The order of each round: rotated by one per round and reversed every other cycle, so no runner always goes
    first or always right after the same other one (with two runners: ab, ba, ba, ab, ...)."""
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        yield order[::-1] if (r // len(names)) % 2 else order


def interleaved(runners: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of every runner: one untimed call each (allocator, cuDNN autotuning, oneDNN primitive
    caches), then ``repeats`` rounds that call every runner once in :func:`round_orders`' order."""
    if warmup:
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for order in round_orders(list(runners), repeats):
        for name in order:
            times[name].append(time_it(runners[name], device))
    return times


# ----------------------------------------------------------------------------- figures


def speed_ratio(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Speed of ours / theirs from two lists of seconds per call made in the same rounds: (from the best runs, the
    median of the per-round ratios)."""
    return min(theirs) / min(ours), statistics.median(t / o for o, t in zip(ours, theirs))


def ratio_line(times: dict[str, list[float]], ours: str, theirs: str) -> str:
    """'ratio ours/theirs: 1.023 (best runs), 1.010 (median of 5 rounds)' from :func:`interleaved`'s seconds."""
    best, paired = speed_ratio(times[ours], times[theirs])
    return f"ratio {ours}/{theirs}: {best:.3f} (best runs), {paired:.3f} (median of {len(times[ours])} rounds)"


def rate_line(name: str, items: int, seconds: list[float], unit: str = "img/s") -> str:
    """'   name:  1234.5 img/s (best of 5; median 1200.1)' for ``items`` processed per call."""
    return (f"{name:>34}: {items / min(seconds):9.1f} {unit} (best of {len(seconds)}; median "
            f"{items / statistics.median(seconds):.1f})")
