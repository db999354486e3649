import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's code, also when the package is not installed
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def pytest_collection_modifyitems(items):
    """The end-to-end module first: it is the long pole (~7 min); under pytest-xdist (`-n 2 --dist loadfile`,
    pyproject) the unit tests fill the other worker meanwhile. A stable sort: the order within files is kept."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")
