"""Per-image rows for the analysis tests, built the way the stages write them, with answers known by construction.

`image_rows` is one model's rows of the attack stage (RESULT_COLUMNS plus the probability and margin columns; the
predictions agree with the correct flags); `arm_frame` stacks them into one arm of the synthetic study of
tests/test_analysis.py (SUCCESS: how many clean-correct images each attack and ε flips); `model_rows` adds the
cross-check stages' columns (gradient diagnostics, queries); `seed_rows` broadcasts any columns over seeds, for the
defence stage's tables. ε in [0,1] pixel units.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from robustlora.analysis import Settings

N = 40  # images
SEEDS = (0, 1, 2)
GRID = (2 / 255, 8 / 255)
SANITY = 0.5
CLASSES = 10
# successes per (attack, ε) among the clean-correct images: monotone in ε, PGD >= FGSM, PGD at 0.5 takes all
SUCCESS = {("fgsm", GRID[0]): 10, ("fgsm", GRID[1]): 20, ("pgd", GRID[0]): 14, ("pgd", GRID[1]): 28,
           ("pgd", SANITY): 10 ** 6}
ARMS = {"baseline": "baseline", "lora_fc": "lora_fc", "lora_fc_conv1": "lora_fc_conv1"}


def settings(**kw) -> Settings:
    base = dict(eps_grid=GRID, report_eps=GRID[1], arms=ARMS, n_boot=200, seed=0)
    return Settings(**(base | kw))


def first_correct(n_correct: int, n: int = N) -> np.ndarray:
    """(n,) bool: the first `n_correct` images True."""
    return np.arange(n) < n_correct


def image_rows(variant: str, seed: int, attack: str, eps: float, clean: np.ndarray, adv: np.ndarray, *,
               clean_prob: float = 0.9, adv_prob: float = 0.4, **columns: Any) -> pd.DataFrame:
    """One model's rows at one attack and ε: clean / adv (N,) bool correct flags (adv: correct after the attack);
    `columns` are added (or replace a default)."""
    n = len(clean)
    labels = np.arange(n) % CLASSES
    return pd.DataFrame({
        "variant": variant, "seed": np.int16(seed), "attack": attack, "eps": float(eps),
        "eps_label": f"eps_{round(eps * 255)}", "image": np.arange(n, dtype=np.int32),
        "label": labels.astype(np.int16),
        "clean_pred": np.where(clean, labels, (labels + 1) % CLASSES).astype(np.int16),
        "adv_pred": np.where(adv, labels, (labels + 2) % CLASSES).astype(np.int16),
        "clean_correct": clean, "adv_correct": adv,
        "clean_true_prob": np.float32(0.8), "adv_true_prob": np.float32(0.3),
        "clean_max_prob": np.float32(clean_prob), "adv_max_prob": np.float32(adv_prob),
        "clean_margin": np.float32(1.0), "adv_margin": np.float32(-1.0)}).assign(**columns)


def arm_frame(arm: str, clean: np.ndarray, success: Mapping[tuple[str, float], object] | None = None, *,
              seeds: tuple[int, ...] = SEEDS, clean_prob: float = 0.9, adv_prob: float = 0.4) -> pd.DataFrame:
    """Per-image rows of one arm: clean (N,) or (S, N) bool; success per (attack, ε): an int k (the first k
    clean-correct images of every seed flip) or an (N,) / (S, N) bool array of adv_correct."""
    success = SUCCESS if success is None else success
    clean = np.broadcast_to(np.asarray(clean, dtype=bool), (len(seeds), clean.shape[-1]))
    frames = []
    for (attack, eps), spec in success.items():
        if isinstance(spec, (int, np.integer)):
            rank = np.cumsum(clean, axis=1)  # 1-based rank among each seed's correct images
            adv = clean & (rank > spec)
        else:
            adv = np.broadcast_to(np.asarray(spec, dtype=bool), clean.shape)
        frames += [image_rows(arm, seed, attack, eps, clean[s], adv[s], clean_prob=clean_prob, adv_prob=adv_prob)
                   for s, seed in enumerate(seeds)]
    return pd.concat(frames, ignore_index=True)


def study(**arms: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(list(arms.values()), ignore_index=True)


def robust_on_grid(clean: np.ndarray) -> dict[tuple[str, float], object]:
    """No attack on the grid flips a correct image; PGD at the sanity ε still flips every one."""
    return {key: (10 ** 6 if key[1] == SANITY else clean) for key in SUCCESS}


def broken_everywhere(n: int = N) -> dict[tuple[str, float], np.ndarray]:
    return {key: np.zeros(n, dtype=bool) for key in SUCCESS}


def model_rows(variant: str, seed: int, attack: str, eps: float, fooled: np.ndarray,
               correct: np.ndarray | None = None, queries: np.ndarray | None = None) -> pd.DataFrame:
    """One model's rows with the cross-check columns (gradient diagnostics, queries): ``fooled`` (N,) bool among the
    clean-correct images (``correct``, default: all)."""
    correct = np.ones(len(fooled), bool) if correct is None else correct
    return image_rows(variant, seed, attack, eps, correct, correct & ~fooled, clean_grad_norm=np.float32(1.0),
                      clean_output="logits", queries=np.nan if queries is None else queries, linf=np.float32(eps),
                      detail="")


def seed_rows(columns: Mapping[str, Any], seeds: tuple[int, ...] = SEEDS, n: int = N, **const: Any) -> pd.DataFrame:
    """One frame over seeds: every value of `columns` is an (n,) or (S, n) array, broadcast over seeds; `const`
    the same in every row."""
    frames = []
    for s, seed in enumerate(seeds):
        cols = {k: np.broadcast_to(np.asarray(v), (len(seeds), n))[s] for k, v in columns.items()}
        frames.append(pd.DataFrame({"seed": seed, "image": np.arange(n), **const, **cols}))
    return pd.concat(frames, ignore_index=True)
