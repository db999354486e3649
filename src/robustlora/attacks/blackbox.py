"""Black-box attacks through the Adversarial Robustness Toolbox (ART 1.20), as per-image rows with query counts.

Square (Andriushchenko et al. 2020) is score-based and bounded by ε, so it runs once per ε. HopSkipJump (L∞),
the Boundary Attack (L2) and ZOO (L2) minimise a distance instead: one run per image gives the result at every ε.

Conventions (the same everywhere in robustlora): images are float NCHW in [0, 1] (uint8 NHWC as stored is
converted); normalisation is inside the model, which returns logits; ε is in [0, 1] pixel units, L∞; the model
runs in float32 and eval mode, every module's mode restored afterwards.

Queries. The model is wrapped once, in a :class:`robustlora.attacks.queries.QueryCounter` inside ART's
PyTorchClassifier, which numbers each image's queries and keeps, per ε, the first that fooled the model within the
ε-ball. That point is the row's adversarial input; without one, the attack's output projected onto the ε-ball ∩
[0, 1], a success there costing one query more. Images misclassified before the attack are not attacked (their
row's point is the clean image, queries NaN).

Determinism. ART draws from numpy's global generator; it is seeded from ``cfg.seed`` (and the image id for the
per-image attacks) and the caller's state restored afterwards. HopSkipJump and Boundary draw their random starting
image from an unseeded ``np.random.RandomState()``, which no seed reaches: we draw it ourselves, as ART does, and
pass it as ``x_adv_init``. The torch RNG is not used.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from robustlora.attacks.gradient import check_pixels
from robustlora.attacks.inputs import (check_eps_grid, check_image_ids, check_images, progress_bar, resolve_device,
                                       to_batch)
from robustlora.attacks.outcomes import LINF_TOL, attack_rows, batched_logits, image_outcomes, linf_distances
from robustlora.attacks.queries import QueryCounter, art_classifier
from robustlora.config import BLACKBOX_ATTACKS
from robustlora.errors import ParamError
from robustlora.formatting import eps_label
from robustlora.models.resnet import autocast_off, eval_mode

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from robustlora.config import BlackboxConfig

__all__ = ["blackbox_attack", "run_blackbox", "BlackboxRun"]

_ZOO_RESIZE = 32  # ZOO's use_resize optimises a 32x32 perturbation (ART's ZooAttack._init_size)


def blackbox_attack(name: str, model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                    cfg: BlackboxConfig, *, eps: Sequence[float] | None = None,
                    image_ids: Sequence[int] | np.ndarray | None = None, device: str | torch.device | None = None,
                    progress: bool | None = None) -> pd.DataFrame:
    """Attack ``model`` with the black-box attack ``name`` (one of config.BLACKBOX_ATTACKS); one row per ε·image.

    cfg: the ``blackbox`` section (batch_size: rows per forward pass; seed; device; ``cfg.<name>``: the attack's
    settings). eps: the grid to report ([0, 1] pixels), required for the min-norm attacks (hopskipjump, boundary,
    zoo: the stage passes attack.eps plus 1.0, i.e. unbounded); Square ignores it and runs once at every ε of
    ``cfg.square.eps`` + ``cfg.square.sanity_eps``. images: uint8 NHWC or float NCHW in [0, 1], all attacked (the
    stage passes the first ``cfg.<name>.n_images``); labels: int64 (N,); image_ids: the images' ids in their split
    (default 0..N-1), also seeding each image's attack. ``device`` defaults to ``cfg.device``; the model is moved there.

    Columns IMAGE_COLUMNS + EXTRA_COLUMNS (queries: the query that first fooled the image within ε, 1-based, NaN if
    none or not attacked; linf: ‖x_adv − x‖∞; detail: ''); rows ordered by ε as given, then image.
    """
    return run_blackbox(name, model, images, labels, cfg, eps=eps, image_ids=image_ids, device=device,
                        progress=progress).rows()


@dataclass(frozen=True)
class BlackboxRun:
    """One black-box attack's result: per ε, each image's adversarial input, the model's logits on it and the query
    that first fooled it (NaN: not fooled within ε, or not attacked). Tensors on the CPU, float32."""

    attack: str
    eps: tuple[float, ...]  # [0, 1] pixels, in the order the rows take
    image_ids: np.ndarray  # (N,)
    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor  # (N, C, H, W) the clean images
    clean_logits: torch.Tensor  # (N, K)
    points: dict[float, torch.Tensor]  # ε -> (N, C, H, W), within the ε-ball and [0, 1]
    logits: dict[float, torch.Tensor]  # ε -> (N, K)
    queries: dict[float, np.ndarray]  # ε -> (N,) float64

    def rows(self) -> pd.DataFrame:
        """Per-image rows, IMAGE_COLUMNS + EXTRA_COLUMNS, ordered by ε (as in ``eps``), then image."""
        clean = image_outcomes(self.clean_logits, self.labels)
        return pd.concat([self._rows_at(e, clean) for e in self.eps], ignore_index=True)

    def _rows_at(self, eps: float, clean: dict[str, np.ndarray]) -> pd.DataFrame:
        adv = image_outcomes(self.logits[eps], self.labels)
        linf = linf_distances(self.points[eps], self.images)
        if (linf > eps + LINF_TOL).any():  # a bug, never the attack's choice: every point was projected or checked
            raise RuntimeError(f"{self.attack}: an adversarial input lies {linf.max():.6g} from its image, beyond "
                               f"ε = {eps:.6g}")
        return attack_rows(self.attack, eps, self.image_ids, self.labels, clean, adv, linf=linf,
                           queries=self.queries[eps])


def run_blackbox(name: str, model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                 cfg: BlackboxConfig, *, eps: Sequence[float] | None = None,
                 image_ids: Sequence[int] | np.ndarray | None = None, device: str | torch.device | None = None,
                 progress: bool | None = None) -> BlackboxRun:
    """The attack of :func:`blackbox_attack` (same arguments), with its adversarial inputs kept."""
    if name not in BLACKBOX_ATTACKS:
        raise ParamError(f"unknown black-box attack {name!r}; choose one of {', '.join(BLACKBOX_ATTACKS)}")
    grid = _grid(name, cfg, eps)
    y = check_images(images, labels)
    ids = check_image_ids(image_ids, len(y))
    device = resolve_device(cfg.device if device is None else device, "blackbox.device")
    model.to(device)
    x = to_batch(images, 0, len(y), device)  # black-box subsets are small: every image at once
    check_pixels(x, y)  # ART clips every query to [0, 1]
    _check_settings(name, cfg, tuple(x.shape))
    with eval_mode(model), autocast_off(device):
        clean = batched_logits(model, x, cfg.batch_size)
        attacked = np.flatnonzero((clean.argmax(1).cpu() == y).numpy())  # the misclassified are not attacked
        square = name == "square"
        with progress_bar(len(grid) if square else len(attacked), name, "run" if square else "image", progress) as bar:
            if square:
                at = {e: _square_run(model, x, y.to(device), clean, attacked, e, cfg, bar) for e in grid}
            else:
                at = _min_norm_run(name, model, x, y.to(device), clean, attacked, ids, grid, cfg, bar)
    return BlackboxRun(attack=name, eps=tuple(grid), image_ids=ids, labels=y, images=x.cpu(),
                       clean_logits=clean.cpu(), points={e: a.points for e, a in at.items()},
                       logits={e: a.logits for e, a in at.items()}, queries={e: a.queries for e, a in at.items()})


# ----------------------------------------------------------------------------- runs


@dataclass
class _AtEps:
    """Every image's row at one ε: adversarial input, logits on it, queries to success (NaN: none)."""

    points: torch.Tensor
    logits: torch.Tensor
    queries: np.ndarray


def _square_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, attacked: np.ndarray,
                eps: float, cfg: BlackboxConfig, bar: tqdm) -> _AtEps:
    """Square at ``eps`` on the attacked images, all at once; queries counted for this run alone."""
    bar.set_postfix_str(eps_label(eps))
    counter = QueryCounter(model, x, y, [eps], clean.shape[1], bound=eps)
    outputs = x.clone()
    if len(attacked):
        with _numpy_seed(cfg.seed):
            out = _square(art_classifier(counter), counter, attacked, eps, cfg)
        outputs[torch.from_numpy(attacked).to(x.device)] = torch.as_tensor(out, dtype=torch.float32, device=x.device)
    bar.update()
    return _settle(counter, 0, outputs, clean, attacked, cfg.batch_size)


def _min_norm_run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor,
                  attacked: np.ndarray, ids: np.ndarray, grid: list[float], cfg: BlackboxConfig,
                  bar: tqdm) -> dict[float, _AtEps]:
    """A min-norm attack on each attacked image alone (ART works image by image anyway), read at every ε."""
    counter = QueryCounter(model, x, y, grid, clean.shape[1])
    classifier = art_classifier(counter)
    attack_one = _PER_IMAGE[name]
    outputs = x.clone()
    for i in attacked:
        bar.set_postfix_str(f"image {ids[i]}")
        with counter.charge([i], repeat=True), _numpy_seed(cfg.seed, int(ids[i])):
            out = attack_one(classifier, x[i:i + 1].cpu().numpy(), int(y[i]), cfg)
        outputs[i] = torch.as_tensor(out[0], dtype=torch.float32, device=x.device)
        bar.update()
    at = [_settle(counter, k, outputs, clean, attacked, cfg.batch_size) for k in range(len(grid))]
    _monotone([at[k] for k in np.argsort(grid)])
    return dict(zip(grid, at))


def _settle(counter: QueryCounter, k: int, outputs: torch.Tensor, clean: torch.Tensor, attacked: np.ndarray,
            batch_size: int) -> _AtEps:
    """Each image's row at the counter's k-th ε: its first counted success; else the attack's output projected onto
    the ε-ball ∩ [0, 1], a success there costing one query more; the clean image where it was not attacked."""
    eps, x, y = counter.eps[k], counter.images, counter.labels
    found = ~np.isnan(counter.first[:, k])
    f = torch.from_numpy(found).to(x.device)
    points, logits = x.clone(), clean.clone()
    points[f], logits[f] = counter.points[f, k], counter.logits[f, k]
    queries = np.where(found, counter.first[:, k], np.nan)
    rest = np.setdiff1d(attacked, np.flatnonzero(found))
    if len(rest):
        r = torch.from_numpy(rest).to(x.device)
        points[r] = torch.minimum(torch.maximum(outputs[r], x[r] - eps), x[r] + eps).clamp(0, 1)
        logits[r] = batched_logits(counter.model, points[r], batch_size)
        fooled = rest[(logits[r].argmax(1) != y[r]).cpu().numpy()]
        queries[fooled] = counter.queries[fooled] + 1
    return _AtEps(points.cpu(), logits.cpu(), queries)


def _monotone(at: list[_AtEps]) -> None:
    """In order of growing ε: a success inside a smaller ball is inside every larger one, so no larger ε reports a
    failure or more queries where a smaller one succeeded (only the projected outputs could)."""
    for small, large in zip(at, at[1:]):
        take = ~np.isnan(small.queries) & ~(large.queries <= small.queries)
        t = torch.from_numpy(take)
        large.points[t], large.logits[t], large.queries[take] = small.points[t], small.logits[t], small.queries[take]


# ----------------------------------------------------------------------------- the ART attacks


def _square(classifier: PyTorchClassifier, counter: QueryCounter, attacked: np.ndarray, eps: float,
            cfg: BlackboxConfig) -> np.ndarray:
    """ART's SquareAttack (L∞) at ``eps`` on the ``attacked`` images; their outputs, (len(attacked), C, H, W)."""
    from art.attacks.evasion import SquareAttack

    x = counter.images[torch.from_numpy(attacked).to(counter.images.device)].cpu().numpy()
    labels = counter.labels.cpu().numpy()[attacked]
    # each label row carries its image's index (one-hot entry 1 + index: argmax is still the label), so every
    # subset ART takes (y[robust]) tells the loss which images its rows belong to
    tagged = np.zeros((len(attacked), counter.logits.shape[2]))
    tagged[np.arange(len(attacked)), labels] = 1 + attacked
    attack = SquareAttack(classifier, norm=np.inf, loss=_square_loss(classifier, counter, cfg.batch_size),
                          max_iter=cfg.square.queries, eps=eps, p_init=cfg.square.p_init,
                          nb_restarts=cfg.square.restarts, batch_size=cfg.batch_size, verbose=False)
    # ART's own queries are the whole batch in order (which images are still robust, at every iteration)
    with counter.charge(attacked, repeat=True):
        return attack.generate(x, y=tagged)


def _square_loss(classifier: PyTorchClassifier, counter: QueryCounter,
                 batch_size: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ART's Square loss (true logit minus the second-highest one), each row charged to the image its label names."""

    def loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with counter.charge(np.rint(y.max(axis=1)).astype(np.int64) - 1):
            logits = classifier.predict(x, batch_size=batch_size)
        true = np.take_along_axis(logits, y.argmax(axis=1)[:, None], axis=1)[:, 0]
        return true - np.sort(logits, axis=1)[:, -2]

    return loss


def _hopskipjump(classifier: PyTorchClassifier, x: np.ndarray, label: int, cfg: BlackboxConfig) -> np.ndarray:
    """ART's HopSkipJump, untargeted, L∞, on one image x (1, C, H, W)."""
    from art.attacks.evasion import HopSkipJump

    c = cfg.hopskipjump
    attack = HopSkipJump(classifier, batch_size=cfg.batch_size, targeted=False, norm=np.inf, max_iter=c.max_iter,
                         max_eval=c.max_eval, init_eval=c.init_eval, init_size=c.init_size, verbose=False)
    start = _random_adversarial(classifier, x, label, c.init_size, cfg.batch_size)
    if start is None:
        return x  # what ART returns when no random image is adversarial
    # ART's own start, then: the random image moved towards x along the line (its L2 binary search)
    start = attack._binary_search(current_sample=start, original_sample=x[0], target=label, norm=2, clip_min=0.0,
                                  clip_max=1.0, threshold=0.001)
    return attack.generate(x, y=np.array([label]), x_adv_init=start[None].astype(np.float32))


def _boundary(classifier: PyTorchClassifier, x: np.ndarray, label: int, cfg: BlackboxConfig) -> np.ndarray:
    """ART's BoundaryAttack, untargeted (ART's default is targeted), L2, on one image x (1, C, H, W)."""
    from art.attacks.evasion import BoundaryAttack

    c = cfg.boundary
    attack = BoundaryAttack(classifier, batch_size=cfg.batch_size, targeted=False, delta=c.delta, epsilon=c.epsilon,
                            step_adapt=c.step_adapt, max_iter=c.max_iter, num_trial=c.num_trial,
                            sample_size=c.sample_size, init_size=c.init_size, verbose=False)
    start = _random_adversarial(classifier, x, label, c.init_size, cfg.batch_size)
    if start is None:
        return x
    return attack.generate(x, y=np.array([label]), x_adv_init=start[None])


def _zoo(classifier: PyTorchClassifier, x: np.ndarray, label: int, cfg: BlackboxConfig) -> np.ndarray:
    """ART's ZooAttack, untargeted, on one image x (1, C, H, W)."""
    from art.attacks.evasion import ZooAttack

    c = cfg.zoo
    # ZOO's batch_size is both images per step and rows per forward (default 1: one forward per query); with one
    # image per call it only sizes the forwards
    attack = ZooAttack(classifier, confidence=c.confidence, targeted=False, learning_rate=c.learning_rate,
                       max_iter=c.max_iter, binary_search_steps=c.binary_search_steps, initial_const=c.initial_const,
                       use_resize=c.use_resize, use_importance=c.use_importance, nb_parallel=c.nb_parallel,
                       batch_size=cfg.batch_size, variable_h=c.variable_h, verbose=False)
    return attack.generate(x, y=np.array([label]))


_PER_IMAGE: dict[str, Callable[[Any, np.ndarray, int, Any], np.ndarray]] = {
    "hopskipjump": _hopskipjump, "boundary": _boundary, "zoo": _zoo}


def _random_adversarial(classifier: PyTorchClassifier, x: np.ndarray, label: int, tries: int,
                        batch_size: int) -> np.ndarray | None:
    """ART's random start, from the seeded global generator: up to ``tries`` uniform images, queried one by one,
    until one is misclassified; None if none is."""
    for _ in range(tries):
        image = np.random.uniform(0.0, 1.0, size=x.shape[1:]).astype(np.float32)
        if classifier.predict(image[None], batch_size=batch_size).argmax(axis=1)[0] != label:
            return image
    return None


# ----------------------------------------------------------------------------- helpers


def _grid(name: str, cfg: BlackboxConfig, eps: Sequence[float] | None) -> list[float]:
    """The ε to report, in order, without repeats: Square's own grid, else ``eps``."""
    if name == "square":
        sanity = cfg.square.sanity_eps
        grid = [float(e) for e in cfg.square.eps] + ([float(sanity)] if sanity is not None else [])
    elif eps is None:
        raise ValueError(f"blackbox attack {name!r} needs eps, the grid of ε to report ([0, 1] pixels)")
    else:
        grid = eps
    return list(dict.fromkeys(check_eps_grid(grid, f"blackbox {name}")))


def _check_settings(name: str, cfg: BlackboxConfig, shape: tuple[int, ...]) -> None:
    """Refuse settings ART would fail on deep inside the attack, naming the params key."""
    _, channels, height, width = shape
    if name == "square":
        p = cfg.square.p_init
        side = max(round(math.sqrt(p * height * width)), 1)  # ART's first square
        if side >= min(height, width):
            raise ParamError(f"params.yaml: blackbox.square.p_init {p} makes ART's first square {side}x{side} pixels, "
                             f"not smaller than the {height}x{width} images (its SquareAttack then fails); use "
                             f"p_init < {(min(height, width) - 0.5) ** 2 / (height * width):.3f}")
    if name == "zoo":
        coordinates = channels * (_ZOO_RESIZE ** 2 if cfg.zoo.use_resize else height * width)
        if cfg.zoo.nb_parallel > coordinates:
            raise ParamError(f"params.yaml: blackbox.zoo.nb_parallel {cfg.zoo.nb_parallel} exceeds the {coordinates} "
                             "coordinates ZOO can update at once; use at most that")


@contextlib.contextmanager
def _numpy_seed(*seed: int) -> Iterator[None]:
    """Seed numpy's global generator (ART draws from it); the caller's state is restored afterwards."""
    state = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(state)
