import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's code, also when the package is not installed
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# One intra-op thread in every test process and the processes it starts (stage commands, DVC, the tiny study's
# stages: tests/e2e.py), unless the caller set a number: the tests' tensors are tiny, and on 2 cores the two test
# workers (or the sweep's two queue workers) would otherwise each start a thread per core and wait on each other.
# Set before anything imports torch; the same count under `-n 0` and `-n 2` gives the same numbers.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


# test files handed out after the sweep: about as many seconds of unit tests as the tiny study's build takes stay
# before it (measured 2026-12-03 in one run: units 196 s with these 80 s of them, build 165 s), so the worker running
# the unit tests reaches the sweep as the study is ready, and the other worker, done with the end-to-end module,
# runs these
AFTER_THE_SWEEP = ("test_train.py", "test_optim.py", "test_outbox.py")


def pytest_collection_modifyitems(items):
    """The end-to-end module first, then the unit tests, the sweep module, and AFTER_THE_SWEEP: under pytest-xdist
    (`-n 2 --dist loadfile --no-loadscope-reorder`, pyproject: without that option xdist >= 3.5 sorts files by their
    number of tests and this order is lost) one worker builds the tiny study (tests/e2e.py) while the other runs the
    unit tests; that one takes the sweep on its own copy of the study when it gets there (the sweep's two queue workers
    then use both cores), and the last unit tests go to the first worker once its end-to-end module is done. A stable
    sort: the order within files is kept."""
    order = {"test_pipeline.py": 0, "test_pipeline_sweep.py": 2} | dict.fromkeys(AFTER_THE_SWEEP, 3)
    items.sort(key=lambda item: order.get(item.path.name, 1))


# --- shared fixtures of the attack and defence tests (tests/tiny.py) ------------------------------------------------


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module (mark it `pytest.mark.usefixtures("single_thread")`): tiny tensors gain
    nothing from threads, and on a busy 2-core machine every op would wait for them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """tiny.TinyNet trained to classify tiny.make_data's images mostly right (tiny.trained_net), in eval mode."""
    from tiny import trained_net

    return trained_net()


@pytest.fixture(scope="module")
def suite_data():
    """48 tiny images (seed 3) stored like the data stages do, uint8 NHWC, and their int64 labels, as numpy."""
    from tiny import make_data, stored

    x, y = make_data(48, seed=3)
    return stored(x).numpy(), y.numpy()


def defence_params() -> dict:
    """params.yaml with the documented defences overlay (configs/defences.yaml: the adversarially trained arms and the
    switching system) on top, as a raw mapping."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "configs" / "defences.yaml").read_text())
    raw["variants"].update(overlay["variants"])
    raw["switching"].update(overlay["switching"])
    return raw
