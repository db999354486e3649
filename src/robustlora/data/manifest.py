"""A prepared domain's manifest: one row per stored image (split, index within the split, label, wnid, archive
member, the image's original height / width / channels / mode, and the hash of its stored pixels).

Preprocessing writes it (:func:`robustlora.data.dataset.prepare_domain`), validation checks it, and tracking logs its
digest as the identity of the data a run saw; the file name is :data:`robustlora.layout.MANIFEST`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from robustlora.errors import DataError

SPLITS = ("train", "holdout", "val")
MANIFEST_COLUMNS = (
    "split", "index", "label", "wnid", "member", "height", "width", "channels", "mode", "pixel_hash",
)
TEXT_COLUMNS = ("split", "wnid", "member", "mode", "pixel_hash")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """A prepared domain's manifest.csv; names stay strings even when they look like numbers (a class '0042')."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the preprocess stage first)")
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
