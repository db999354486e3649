import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's code, also when the package is not installed
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def pytest_collection_modifyitems(items):
    """The end-to-end module first and its sweep module last: under pytest-xdist (`-n 2 --dist loadfile`,
    pyproject) one worker builds the tiny study (tests/e2e.py) while the other runs the unit tests, then takes the
    sweep on its own copy of the study. A stable sort: the order within files is kept."""
    order = {"test_pipeline.py": 0, "test_pipeline_sweep.py": 2}
    items.sort(key=lambda item: order.get(item.path.name, 1))
