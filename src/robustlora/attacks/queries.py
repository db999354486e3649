"""Counting a black-box attack's model queries per image: the model wrapped in a :class:`QueryCounter`, inside ART's
PyTorchClassifier (:func:`art_classifier`).

A query is one input row the model evaluates; each is charged to the image being attacked (:meth:`QueryCounter.charge`)
and numbered per image from 1 (every row counts, ART's re-evaluations of known points too). For every ε of the grid
([0, 1] pixels, L∞) the counter keeps each image's first query that the model misclassifies and that is an image
within the ε-ball (q in [0, 1], ‖q − x‖∞ <= ε + LINF_TOL): its number, the point and the logits.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from robustlora.attacks.outcomes import LINF_TOL, linf_distances

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

__all__ = ["QueryCounter", "art_classifier"]


class QueryCounter(nn.Module):
    """The model as the attacks see it: every input row is charged to an image, and per image and ε the first
    misclassified query within the ε-ball ∩ [0, 1] is kept.

    images (N, C, H, W) in [0, 1] and labels (N,) on the model's device; eps: the grid ([0, 1] pixels); n_classes:
    the model's outputs. Rows are charged inside :meth:`charge`. ``bound``: the ε of an ε-bounded attack; a row
    charged to an image farther away than that is an error (the charging is wrong). After the attack: ``queries``
    (N,) rows charged per image; ``first`` (N, E) the 1-based number of the first success at each ε (NaN: none);
    ``points`` (N, E, C, H, W) and ``logits`` (N, E, K): that query and the model's output on it.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: Sequence[float],
                 n_classes: int, *, bound: float | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: ART moves its model to its device, we keep ours
        self.images, self.labels = images.float(), labels
        self.eps = [float(e) for e in eps]
        self.bound = bound
        n = len(images)
        self.queries = np.zeros(n, np.int64)
        self.first = np.full((n, len(self.eps)), np.nan)
        self.points = images[:, None].repeat(1, len(self.eps), 1, 1, 1).float()
        self.logits = torch.zeros(n, len(self.eps), n_classes, device=images.device)
        self._charges: list[_Charge] = []

    @contextlib.contextmanager
    def charge(self, owners: Sequence[int] | np.ndarray, *, repeat: bool = False) -> Iterator[None]:
        """Charge the coming query rows to images, in order: row k to ``owners[k]``, all of them used by the end;
        with ``repeat`` cyclically (``charge([i], repeat=True)``: every row to image i). The innermost charge rules."""
        charge = _Charge(np.asarray(owners, dtype=np.int64).reshape(-1), repeat)
        self._charges.append(charge)
        try:
            yield
        finally:
            self._charges.pop()
        if not charge.complete:
            raise RuntimeError(f"{charge.used} query rows charged where the attack announced {len(charge.owners)}"
                               f"{' per round' if repeat else ''}: the charging is wrong")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._charges:
            raise RuntimeError("a model query outside QueryCounter.charge(): no image to charge it to")
        owners = self._charges[-1].take(len(x))
        x = x.to(self.images.device, torch.float32)  # ART hands over CPU arrays, some in float64
        logits = self.model(x)
        self._record(owners, x, logits.detach().float())
        return logits

    def _record(self, owners: np.ndarray, x: torch.Tensor, logits: torch.Tensor) -> None:
        number = self._number(owners)
        own = torch.from_numpy(owners).to(x.device)
        dist = linf_distances(x, self.images[own]).astype(np.float64)
        if self.bound is not None and (dist > self.bound + LINF_TOL).any():
            raise RuntimeError(f"a query charged to image {owners[dist.argmax()]} lies {dist.max():.6g} from it, "
                               f"beyond the attack's ε = {self.bound:.6g}: the charging is wrong")
        valid = ((x >= 0) & (x <= 1)).flatten(1).all(1)  # ZOO queries may leave [0, 1]: not images
        fooled = ((logits.argmax(1) != self.labels[own]) & valid).cpu().numpy()
        hits = fooled[:, None] & (dist[:, None] <= np.asarray(self.eps) + LINF_TOL)  # (rows, E)
        for k in np.flatnonzero(hits.any(0)):
            rows = np.flatnonzero(hits[:, k] & np.isnan(self.first[owners, k]))
            # rows are in query order, so each image's first row here is its first success
            hit, at = np.unique(owners[rows], return_index=True)
            rows = rows[at]
            self.first[hit, k] = number[rows]
            i, r = torch.from_numpy(hit).to(x.device), torch.from_numpy(rows).to(x.device)
            self.points[i, k], self.logits[i, k] = x[r], logits[r]

    def _number(self, owners: np.ndarray) -> np.ndarray:
        """Each row's 1-based query number for its image; advances the counts."""
        order = np.argsort(owners, kind="stable")
        ranked = owners[order]
        rank = np.empty(len(owners), np.int64)
        rank[order] = np.arange(len(owners)) - np.searchsorted(ranked, ranked)  # earlier rows of the same image
        number = self.queries[owners] + rank + 1
        np.add.at(self.queries, owners, 1)
        return number


class _Charge:
    """The images the coming query rows belong to: ``owners`` in order, cycled with ``repeat``."""

    def __init__(self, owners: np.ndarray, repeat: bool) -> None:
        if not len(owners):
            raise ValueError("QueryCounter.charge needs at least one image")
        self.owners, self.repeat, self.used = owners, repeat, 0

    def take(self, n: int) -> np.ndarray:
        if not self.repeat and self.used + n > len(self.owners):
            raise RuntimeError(f"{self.used + n} query rows charged where the attack announced {len(self.owners)}: "
                               "the charging is wrong")
        rows = self.owners[(self.used + np.arange(n)) % len(self.owners)]
        self.used += n
        return rows

    @property
    def complete(self) -> bool:
        return self.used % len(self.owners) == 0 if self.repeat else self.used == len(self.owners)


def art_classifier(counter: QueryCounter) -> PyTorchClassifier:
    """ART's PyTorchClassifier around ``counter``: inputs in [0, 1] (clip_values), no preprocessing (normalisation
    is inside the model), logits out."""
    from art.estimators.classification import PyTorchClassifier

    # device_type cpu: ART knows only cpu and the current CUDA device; the counter moves rows to the model's device
    return PyTorchClassifier(counter, loss=nn.CrossEntropyLoss(), input_shape=tuple(counter.images.shape[1:]),
                             nb_classes=counter.logits.shape[2], clip_values=(0.0, 1.0), preprocessing=None,
                             device_type="cpu")
