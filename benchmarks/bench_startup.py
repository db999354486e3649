"""Stage start-up: seconds from process start to the first real work of every stage, against a bare
`python -c "import torch"` measured in the same rounds (issue 19: every stage <= 1.5x that).

    python benchmarks/bench_startup.py                    # every stage of dvc.yaml, 3 rounds
    python benchmarks/bench_startup.py --rounds 5 --stage train --stage report

Each stage is started as `dvc repro` starts it (its `cmd` from dvc.yaml, `${key}` = --variant, in the repository
root, with its params.yaml) with ROBUSTLORA_STARTUP_PROBE=1: `stages/_common.started()`, which every stage calls once
its imports are done and its params are read, right before it touches its inputs, then ends the process (os._exit,
no interpreter teardown). The time is the wall clock from spawning the process to its exit, so it holds the
interpreter's start, the imports and the params; nothing is read or written. What a stage imports only while it
works is not in it: ART (black-box attacks that are computed, not reused) and Great Expectations (the suite of the
validate stage), and mlflow, which every stage imports only after its outputs are written (robustlora.tracking's
Recorder). Rounds interleave the runners (benchmarks/harness.py), after one untimed warm-up call each; the figures are
the best run (other processes only ever add time) and the median, and the ratio of best runs plus the median of the
per-round ratios. Exit status 1 when a stage is over the limit (by its median ratio against the issue's reference,
`python -c "import torch"`). That reference includes the interpreter's teardown of torch, which the probed stages skip
(os._exit), so the ratio against `import torch, os; os._exit(0)` is printed too: the stricter figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import harness  # first: puts this checkout's src/ on the path

import yaml

LIMIT = 1.5  # x a bare `import torch`
BASELINE = "import torch"
STRICT = "import torch, os; os._exit(0)"  # the same without the interpreter's teardown, as the stages exit


def stage_commands(root: Path, variant: str) -> dict[str, list[str]]:
    """Every stage of ``root``'s dvc.yaml as the argv `dvc repro` runs (this interpreter; ``${key}`` = ``variant``)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"].replace("${key}", variant).split()
        assert cmd[0] == "python", cmd
        commands[name] = [sys.executable, *cmd[1:]]
    commands["sweep"] = [sys.executable, "stages/sweep.py"]
    return commands


def runner(argv: list[str], root: Path, env: dict[str, str]):
    def run() -> None:
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or (argv[1] != "-c" and "startup " not in done.stdout):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SystemExit(f"{' '.join(argv[1:3])}: did not reach its start-up probe (exit {done.returncode}): "
                             f"{tail[0]}")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up call of each)")
    parser.add_argument("--stage", action="append", help="only these stages (default: all of dvc.yaml + sweep)")
    parser.add_argument("--variant", default="lora_fc", help="the variant of the foreach stages (train, attack)")
    parser.add_argument("--repo", type=Path, default=harness.ROOT, help="the repository whose stages to start")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    env = {**os.environ, "ROBUSTLORA_STARTUP_PROBE": "1", "PYTHONPATH": ""}
    commands = stage_commands(args.repo, args.variant)
    unknown = sorted(set(args.stage or ()) - set(commands))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(commands)}")
    runners = {BASELINE: runner([sys.executable, "-c", BASELINE], args.repo, env),
               STRICT: runner([sys.executable, "-c", STRICT], args.repo, env)}
    runners |= {name: runner(argv, args.repo, env) for name, argv in commands.items()
                if not args.stage or name in args.stage}
    print(f"python={sys.version.split()[0]} cores={os.cpu_count()} rounds={args.rounds} repo={args.repo}")
    times = harness.interleaved(runners, None, args.rounds)
    base, strict = times.pop(BASELINE), times.pop(STRICT)
    print(f"{'python -c ' + repr(BASELINE):>28}: {min(base):6.2f} s best, {statistics.median(base):6.2f} s median")
    print(f"{'(no teardown: os._exit)':>28}: {min(strict):6.2f} s best, {statistics.median(strict):6.2f} s median")
    over = []
    for name, secs in times.items():
        best = min(secs) / min(base)
        paired = statistics.median(s / b for s, b in zip(secs, base))
        flag = "ok" if paired <= LIMIT else f"OVER {LIMIT}x"
        if paired > LIMIT:
            over.append(name)
        no_teardown = statistics.median(s / b for s, b in zip(secs, strict))
        print(f"{name:>28}: {min(secs):6.2f} s best, {statistics.median(secs):6.2f} s median; x import torch: "
              f"{best:.2f} (best runs), {paired:.2f} (median of {len(secs)} rounds), {no_teardown:.2f} (vs no "
              f"teardown)  {flag}")
    print(f"SUMMARY: {len(times) - len(over)} of {len(times)} stages start within {LIMIT}x a bare import torch"
          + (f"; over: {', '.join(over)}" if over else ""))
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
