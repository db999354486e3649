"""What every attack runner (the attack suite, AutoAttack, black-box, transfer) takes, checked and converted once.

An image set is uint8 NHWC (as the data stages store it) or float NCHW in [0, 1], with int64 labels (N,) and the
images' ids in their split (default 0..N-1); batches are converted on the device to float NCHW in [0, 1]. ε grids are
in [0, 1] pixel units (8/255, not 8). Devices are named as in params.yaml ('auto', 'cpu', 'cuda', ...) or given as a
torch.device. A progress bar shows on a terminal unless the caller says otherwise.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from robustlora.errors import DataError
from robustlora.models.resnet import pick_device, to_pixels

__all__ = ["check_images", "check_image_ids", "to_batch", "resolve_device", "check_eps_grid", "progress_bar"]


def check_images(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Refuse an image set of the wrong layout (not 4-d, uint8 not NHWC, float not NCHW), an empty one, or labels
    that are not int64 (N,); returns the labels as an int64 CPU tensor."""
    is_uint8 = images.dtype in (torch.uint8, np.uint8)
    if getattr(images, "ndim", 0) != 4:
        raise ValueError(f"images must be 4-d (uint8 NHWC or float NCHW), got shape {tuple(images.shape)}")
    if is_uint8 and images.shape[-1] not in (1, 3):
        raise ValueError(f"uint8 images must be NHWC with 1 or 3 channels last, got shape {tuple(images.shape)}")
    if not is_uint8 and images.shape[1] not in (1, 3):
        raise ValueError(f"float images must be NCHW in [0, 1] with 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError("no images to attack: the attacked split is empty")
    y = torch.as_tensor(labels)
    if y.dtype != torch.int64 or y.shape != (images.shape[0],):
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    return y.cpu()


def check_image_ids(image_ids: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """The ids of n images in their split: ``image_ids`` as an array of shape (n,), or 0..n-1 when None."""
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if ids.shape != (n,):
        raise ValueError(f"image_ids must have shape ({n},), got {ids.shape}")
    return ids


def to_batch(images: torch.Tensor | np.ndarray, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Images start..stop, converted on the device: uint8 NHWC -> float NCHW / 255; float NCHW as is (float32)."""
    batch = torch.as_tensor(images[start:stop]).to(device, non_blocking=True)
    return to_pixels(batch) if batch.dtype == torch.uint8 else batch.float()


def resolve_device(device: str | torch.device, key: str) -> torch.device:
    """A device named as in params.yaml ('auto', 'cpu', 'cuda', ...; one that is not available is an error naming
    the params ``key``), or a torch.device as is."""
    return pick_device(device, key) if isinstance(device, str) else torch.device(device)


def check_eps_grid(eps: Sequence[float], who: str) -> list[float]:
    """``eps`` as a list of floats, refused unless non-empty and every ε in [0, 1] pixel units; ``who`` names the
    attack in the error."""
    grid = [float(e) for e in eps]
    if not grid or not all(math.isfinite(e) and 0.0 <= e <= 1.0 for e in grid):
        raise ValueError(f"{who} eps must be a non-empty list of numbers in [0, 1] pixel units (e.g. 8/255), "
                         f"got {grid}")
    return grid


def progress_bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm:
    """A tqdm bar of ``total`` steps; ``progress`` None shows it only when stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit=unit,
                disable=(not sys.stderr.isatty()) if progress is None else not progress)
