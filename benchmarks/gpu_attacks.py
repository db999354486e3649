"""One prepared GPU run for issue 9's attack-speed figures: PGD levers vs torchattacks, the bf16 robust-accuracy
check on the default study, and AutoAttack / Square throughput at 64 px. Ends with one summary table.

    PYTHONPATH=src python benchmarks/gpu_attacks.py                      # on a CUDA machine: ~4-5 min on an H100
    PYTHONPATH=src python benchmarks/gpu_attacks.py --quick --device cpu # a smoke test anywhere (~1 min on 2 cores)
    PYTHONPATH=src python benchmarks/gpu_attacks.py --site .venv/gpu-site   # attack packages carried along

Needs only torch and numpy (+ the repo's src, put on the path by the script). What else is importable decides what
runs, and the table says why a part did not:
- torchattacks: the PGD reference (else our PGD alone, float32 vs the levers); torchvision: the torchvision ResNet18
  model (else robustlora's Classifier only);
- pyautoattack / ART (art + scipy + scikit-learn): the AutoAttack / Square rows (else "not installed");
- the default study's check needs pydantic, pyyaml, pandas and the trained models and val images
  (models/<variant>/seed_<s>.pt, data/prepared/target/val_*.npy; else "skipped").
``--site DIR`` appends DIR to sys.path (after the machine's own packages, so its torch wins): a folder holding copies
of pure-Python attack packages carried to a machine without internet (recipe: benchmarks/README.md).

Parts, in order, each timed on the device (synchronised):
1. PGD, batch 256, 64 px, 10 steps, ε 8/255, step ε/4: ours in float32 (also with keep='last', torchattacks'
   semantics: no scoring pass), channels_last, bf16 autocast, bf16 + channels_last; torchattacks in float32 and
   with bf16 + channels_last. Every round runs each once in a rotating order; best of --repeats and the median of
   the per-round ratios. Once on torchvision's ResNet18 (64 px input), once on robustlora's Classifier (input 64).
2. The levers' robust accuracy on the default study (bench_pgd.py --check-default with bf16 + channels_last): PGD as
   the attack stage runs it, float32 vs the levers, evaluated in float32; it passes within one image per model and ε.
3. Throughput (bench_attacks.py) at model input 64 then 24 px, ε 8/255 then 0.25/255 (the latter keeps most images
   of the random network robust, so it shows the full cost), --images images (aa-standard: --standard-images). Rows
   that would start after --budget-s seconds are skipped (named in the table), so the run ends in time.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import harness  # first: puts this checkout's src/ on the path
import bench_attacks
import bench_pgd
import torch
from bench_pgd import Run

from robustlora.formatting import md_table


def pgd_speed(model_kind: str, args: argparse.Namespace, device: torch.device,
              summary: list[tuple[str, str, str]]) -> None:
    """Part 1 on one model: img/s of every run and each one's ratio to torchattacks in float32."""
    model = bench_pgd.make_model(model_kind, 10, args.pgd_size, device)
    x, y = bench_pgd.speed_data(10, args.pgd_batch, args.pgd_size, device)
    runs = [Run("ours fp32"), Run("ours fp32 keep=last", keep="last"), Run("ours channels_last", channels_last=True),
            Run("ours bf16", amp="bf16"), Run("ours bf16+channels_last", amp="bf16", channels_last=True),
            Run("torchattacks fp32", "torchattacks"),
            Run("torchattacks bf16+channels_last", "torchattacks", "bf16", True)]
    times = bench_pgd.pgd_speed(model, x, y, eps=8 / 255, step=2 / 255, steps=args.pgd_steps, runs=runs,
                                repeats=args.repeats)
    setting = f"{model_kind} b{args.pgd_batch} {args.pgd_size}px PGD-{args.pgd_steps}"
    reference = "torchattacks fp32" if "torchattacks fp32" in times else "ours fp32"
    print(f"\n[1] PGD speed, {setting}, ε 8/255, {args.repeats} rounds; reference: {reference}"
          + ("" if reference.startswith("torchattacks") else " (torchattacks not installed)"))
    for name, t in times.items():
        print(harness.rate_line(name, args.pgd_batch, t))
        if name != reference:
            print(f"{'':>36}{harness.ratio_line(times, name, reference)}")
            best, paired = harness.speed_ratio(t, times[reference])
            summary.append((f"PGD {setting}", f"{name} / {reference}",
                            f"{best:.3f} ({paired:.3f} paired); {args.pgd_batch / min(t):.0f} img/s"))


def bf16_check(args: argparse.Namespace, device: torch.device, summary: list[tuple[str, str, str]]) -> None:
    """Part 2: bench_pgd's --check-default with bf16 + channels_last (CPU --quick: channels_last only)."""
    for module in ("yaml", "pydantic", "pandas"):
        why = harness.why_not(module)
        if why:
            summary.append(("default-study check", "bf16+channels_last", f"skipped: {why}"))
            return
    amp = "none" if args.quick and device.type == "cpu" else "bf16"  # CPU bf16 is emulated: ~15x slower here
    ns = argparse.Namespace(autocast=amp, channels_last=True, params="params.yaml", models="models",
                            prepared="data/prepared/target", results="results/attack", variants=args.variants,
                            seeds=args.seeds)
    levers = bench_pgd.lever_label(amp, True)
    print(f"\n[2] robust accuracy, float32 vs {levers}, on the default study's models")
    try:
        worst = bench_pgd.check_default(ns, device)
    except Exception as e:  # missing data or models, a checkpoint this code cannot load: say so, go on
        traceback.print_exc()
        summary.append(("default-study check", levers, f"skipped: {type(e).__name__}: {str(e).splitlines()[0]}"))
        return
    if worst is None:
        summary.append(("default-study check", levers, "skipped: no trained models under models/"))
    else:
        summary.append(("default-study check", levers,
                        f"largest |Δ robust images| {worst}: {'PASS' if worst <= 1 else 'FAIL'} (within one image)"))


def throughput(args: argparse.Namespace, device: torch.device, summary: list[tuple[str, str, str]]) -> None:
    """Part 3: bench_attacks rows, most important first, skipping what would start after the budget."""
    print(f"\n[3] throughput, {bench_attacks.IMAGE_SIZE} px images, random ResNet18, labels = its predictions")
    rows = []
    for attack, size, n, eps255 in bench_attacks.plan(args, device):
        if harness.elapsed() > args.budget_s:
            row = bench_attacks.Row(attack, size, n, eps255, note=f"skipped: past the {args.budget_s:.0f} s budget")
        else:
            try:
                row = bench_attacks.throughput(attack, size, n, eps255, args, device)
            except Exception as e:  # one broken attack must not cost the rest of the table
                traceback.print_exc()
                row = bench_attacks.Row(attack, size, n, eps255, note=f"error: {type(e).__name__}: {e}"[:120])
        rows.append(row)
        bench_attacks.print_table([row], header=len(rows) == 1)
    for r in rows:
        label = f"{r.attack} input {r.input_size}px ε {r.eps255:g}/255 ({r.images} img)"
        if r.seconds == r.seconds:
            summary.append(("throughput", label, f"{r.per_second:.2f} img/s, robust acc {r.robust / r.images:.3f}"
                            + (f"; {r.note}" if r.note else "")))
        else:
            summary.append(("throughput", label, r.note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_attacks.add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test on a CPU")
    parser.add_argument("--site", default=None, help="a folder of extra pure-Python packages, appended to sys.path")
    parser.add_argument("--repeats", type=int, default=10, help="PGD speed rounds")
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="start no throughput row after this many seconds of the run")
    parser.add_argument("--variants", nargs="*", default=None, help="the check's variants (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="the check's seeds (default: all)")
    parser.set_defaults(images=256, standard_images=64, eps255=[8.0, 0.25], square_queries=1000)
    args = parser.parse_args()
    if args.site:
        sys.path.append(str(Path(args.site).resolve()))
    device = harness.setup(args)
    args.pgd_batch, args.pgd_size, args.pgd_steps = 256, 64, 10
    if args.quick:  # every code path, small enough for 2 CPU cores
        args.pgd_batch, args.pgd_size, args.pgd_steps, args.repeats = 8, 32, 2, 2
        args.images, args.standard_images, args.square_queries = 4, 1, 10
        args.input_sizes, args.eps255 = [24], [8.0]
        args.variants, args.seeds = args.variants or ["baseline"], args.seeds or [0]

    have = {m: harness.why_not(m) for m in ("torchvision", "torchattacks", "pyautoattack", "art", "scipy", "sklearn")}
    print(f"{harness.environment(device)} (float32 convolutions use TF32 when True)")
    print("packages: " + ", ".join(f"{m} {'ok' if why is None else 'missing'}" for m, why in have.items()))

    summary: list[tuple[str, str, str]] = []
    for kind in (["torchvision"] if have["torchvision"] is None else []) + ["classifier"]:
        pgd_speed(kind, args, device, summary)
    bf16_check(args, device, summary)
    throughput(args, device, summary)

    print(f"\nSUMMARY ({harness.device_name(device)}, torch {torch.__version__}, {harness.elapsed():.0f} s)\n")
    print(md_table(("part", "setting", "result"), summary))


if __name__ == "__main__":
    main()
