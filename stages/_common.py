"""Shared wiring of the stage commands: import this repository's own code, one-line errors, paths, the thread pool of
a queued experiment's worker, and the start-up probe of benchmarks/bench_startup.py.

Start-up: a stage imports only typer and the torch-free config here; each command imports what its work needs inside
its function, records its MLflow runs in memory (robustlora.tracking.Recorder) and publishes them after its outputs are
written, so mlflow is never on the path to the first result. ``started()`` marks where the work begins.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Run the code of *this* checkout (a queued `dvc exp run` works in a temporary copy of the repo), not whichever
# robustlora happens to be installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

THREADS_ENV = "ROBUSTLORA_THREADS"  # torch's CPU threads per stage process, when set (wins over the queue sizing)
PROBE_ENV = "ROBUSTLORA_STARTUP_PROBE"  # set: a stage exits at started(), printing its start-up time (benchmarks)
HEAVY_MODULES = ("torch", "torchvision", "pandas", "scipy", "statsmodels", "matplotlib", "mlflow", "great_expectations",
                 "art", "autoattack")
_EXPS = (".dvc", "tmp", "exps")  # where DVC runs queued and --temp experiments, each in its own tmpXXXX copy
_ACTIVE = {1, 2}  # DVC's TaskStatus PREPARING, RUNNING (dvc/repo/experiments/executor/base.py)


def running_workers(root: Path = ROOT) -> int | None:
    """How many experiments DVC is running from the repository whose executor copy ``root`` is (its
    ``.dvc/tmp/exps/run/<rev>/<rev>.run`` info files with status PREPARING or RUNNING, this one included); None when
    ``root`` is not inside an executor copy (a plain ``dvc repro`` or a stage run by hand)."""
    parts = root.resolve().parts
    for i in range(len(parts) - len(_EXPS), 0, -1):
        if parts[i : i + len(_EXPS)] == _EXPS:
            run_dir = Path(*parts[: i + len(_EXPS)]) / "run"
            break
    else:
        return None
    running = 0
    for info in run_dir.glob("*/*.run"):
        try:
            status = json.loads(info.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        running += status in _ACTIVE
    return max(running, 1)


def size_threads(root: Path = ROOT, cpus: int | None = None) -> int | None:
    """Share the CPU cores among the experiments DVC runs at once (``dvc queue start -j N``): in an executor copy, set
    OMP_NUM_THREADS / MKL_NUM_THREADS (read by torch when it is imported) to cores // running workers, at least 1.
    The user's own OMP_NUM_THREADS or ROBUSTLORA_THREADS wins; outside an executor copy nothing changes. Returns
    the thread count set, or None."""
    if os.environ.get(THREADS_ENV):
        threads = max(1, int(os.environ[THREADS_ENV]))
    elif os.environ.get("OMP_NUM_THREADS"):
        return None
    else:
        workers = running_workers(root)
        if workers is None:
            return None
        cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        threads = max(1, cpus // workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    return threads


def started() -> None:
    """The stage's imports and params are done and its work begins. Under ROBUSTLORA_STARTUP_PROBE the process prints
    ``startup <seconds since the process started> loaded: <which of HEAVY_MODULES it imported>`` and exits 0 here
    (benchmarks/bench_startup.py, tests/test_stages.py)."""
    if os.environ.get(PROBE_ENV):
        heavy = [m for m in HEAVY_MODULES if m in sys.modules]
        print(f"startup {_since_process_start():.3f} loaded: {','.join(heavy) or '-'}", flush=True)
        sys.stderr.flush()
        os._exit(0)


def _since_process_start() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time on the boot clock; elsewhere: since
    this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time() - _IMPORTED


_IMPORTED = time.time()
size_threads()

import typer  # noqa: E402

PARAMS = ROOT / "params.yaml"


def app(help: str) -> typer.Typer:
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)


def run(app: typer.Typer) -> None:
    """Run a stage: bad input (RobustloraError) ends in one line on stderr and exit code 1, a bug in a traceback."""
    import click

    from robustlora.errors import RobustloraError  # torch-free: `--help` stays fast

    try:  # typer >= 0.2x parses with its own copy of click, whose usage errors are not click's classes
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        TyperClickException = click.exceptions.ClickException
    try:
        rc = app(standalone_mode=False)  # returns the exit code of typer.Exit / --help instead of exiting
    except (click.exceptions.ClickException, TyperClickException) as e:  # a usage error: one line naming the option
        print(f"error: {Path(sys.argv[0]).name}: {e.format_message()} (see --help)", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except RobustloraError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


def rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (for messages), else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "holdout_accuracy", "lr")


def write_curves(path: Path, history: list[dict], *, robust: bool = False) -> None:
    """One training run's per-epoch curves as CSV (plots/), atomically. ``robust``: adversarial training, whose
    holdout robust accuracy gets a column before lr (train_accuracy is then on the examples trained on)."""
    import pandas as pd

    from robustlora.io import atomic_path

    columns = list(CURVE_COLUMNS)
    if robust:
        columns.insert(4, "holdout_robust_accuracy")
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(history, columns=columns).to_csv(tmp, index=False)
