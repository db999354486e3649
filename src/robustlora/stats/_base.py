"""What the statistics modules share: lazy scipy, the sides of a test, input checks."""

from __future__ import annotations

import numpy as np

from robustlora.errors import DataError


class _Lazy:
    """A module imported on first use: scipy and statsmodels cost a stage ~1 s of start-up that the attack stages
    (which need only Wilson intervals at their end) should not pay before their work."""

    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attr: str):
        if self._module is None:
            import importlib

            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


sps = _Lazy("scipy.stats")
optimize = _Lazy("scipy.optimize")

SIDES = ("two-sided", "greater", "less")
def _as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    """An (S, N) float64 array with S >= 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{name} must be a (seeds, images) array with at least one seed, got shape {x.shape}")
    return x


def _select(x: np.ndarray, keep: np.ndarray, name: str) -> np.ndarray:
    """The masked columns of x, which must be finite (values outside the mask may be anything, NaN included)."""
    sel = x[:, keep]
    if not np.all(np.isfinite(sel)):
        raise DataError(f"{name} holds non-finite values on masked images")
    return sel


def _mask(mask: np.ndarray | None, n: int) -> np.ndarray:
    """A fresh (n,) bool mask; None selects every image."""
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise DataError(f"mask must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
    return m.copy()


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise DataError(f"confidence must be in (0, 1), got {confidence}")
