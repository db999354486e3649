"""robustlora.defences.evaluation: the squeezing detector on a model and the detector-driven switching system, per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from robustlora.config import AttackConfig, ParamError, SqueezeConfig, SwitchingConfig, parse_params
from robustlora.defences.evaluation import (SQUEEZE_COLUMNS, SWITCHING_ATTACKS, SWITCHING_COLUMNS, squeeze_rows, squeezers,
                                 switching_rows)
from robustlora.models.lora import apply_lora
from robustlora.models.resnet import build_model
from robustlora.defences.squeeze import detect, detector_scores, fit_threshold
from robustlora.defences.switching import AdapterBank, adapter_from_state_dict, lora_keys

CLASSES, SIZE, N = 4, 16, 12
ATTACK = AttackConfig(n_images=N, batch_size=5, eps=[8 / 255], pgd={"steps": 3, "rel_step_size": 0.5})
SQUEEZE = SqueezeConfig(n_images=N, eps=[8 / 255], fpr=0.1, adaptive={"steps": 3})


def _wrapped() -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_lora(build_model(CLASSES, SIZE), ["fc", "conv1"], rank=2, alpha=2.0).eval()


def _adapter(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = dict(model.state_dict())
    state.update({k: torch.randn(shape, generator=g) * 0.3 for k, shape in lora_keys(model).items()})
    return adapter_from_state_dict(state, model, f"adapter{seed}")


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8), torch.randint(0, CLASSES, (n,),
                                                                                                   generator=g)


def test_squeeze_rows_fit_the_threshold_on_the_holdout_and_the_adaptive_attack_is_never_weaker() -> None:
    model = _wrapped()
    images, labels = _images(N, 0)
    holdout, _ = _images(40, 1)
    rows = squeeze_rows(model, images, labels, np.arange(N) + 100, holdout, SQUEEZE, ATTACK, torch.device("cpu"))
    assert list(rows.columns) == SQUEEZE_COLUMNS and len(rows) == 3 * N
    assert set(rows["attack"]) == {"fgsm", "pgd", "adaptive"} and set(rows["image"]) == set(range(100, 100 + N))
    scores = detector_scores(model, holdout.permute(0, 3, 1, 2).float() / 255, squeezers(SQUEEZE))
    threshold = fit_threshold(scores, SQUEEZE.fpr)
    assert rows["threshold"].eq(threshold).all() and rows["holdout_fpr"].le(SQUEEZE.fpr).all()
    by = {a: g.set_index("image") for a, g in rows.groupby("attack")}
    for col in ("clean_correct", "clean_score", "clean_flagged"):  # the clean side is the same for every attack
        assert (by["fgsm"][col] == by["adaptive"][col]).all()
    evades = {a: ~g["adv_correct"] & ~g["adv_flagged"] for a, g in by.items()}
    assert (evades["adaptive"] >= evades["pgd"]).all()
    assert (by["pgd"]["adv_flagged"] == (by["pgd"]["adv_score"] > threshold)).all()
    again = squeeze_rows(model, images, labels, np.arange(N) + 100, holdout, SQUEEZE, ATTACK, torch.device("cpu"))
    assert again.equals(rows)  # seeded: the same numbers


def test_switching_routes_by_the_detector_and_worst_is_every_attack_at_once() -> None:
    model = _wrapped()
    bank = AdapterBank(model, {"standard": _adapter(model, 1), "robust": _adapter(model, 2)})
    images, labels = _images(N, 0)
    holdout, _ = _images(40, 1)
    cfg = SwitchingConfig(standard="a", robust="b", n_images=N, eps=[8 / 255])
    rows, threshold = switching_rows(bank, images, labels, np.arange(N), holdout, SQUEEZE, cfg, ATTACK,
                                     torch.device("cpu"))
    assert list(rows.columns) == SWITCHING_COLUMNS and tuple(rows["attack"].unique()) == SWITCHING_ATTACKS
    x = images.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        standard, robust = bank(x, "standard"), bank(x, "robust")
    bank.use("standard")  # the wrappers now hold the standard adapter: bank.model is the standard model
    flagged = detect(detector_scores(bank.model, x, squeezers(SQUEEZE)), threshold).numpy()
    clean = rows[rows["attack"] == "worst"].set_index("image").sort_index()
    assert (clean["clean_switched"].to_numpy() == flagged).all()
    expected = torch.where(torch.as_tensor(flagged)[:, None], robust, standard).argmax(1) == labels
    assert (clean["clean_correct"].to_numpy() == expected.numpy()).all()  # each input gets its adapter's output
    wide = rows.pivot_table(index="image", columns="attack", values="adv_correct", aggfunc="first")
    assert (wide["worst"] == wide.drop(columns="worst").all(axis=1)).all()


def test_squeeze_and_switching_params_name_the_bad_key() -> None:
    raw = yaml.safe_load(open("params.yaml"))
    raw["switching"]["robust"] = "nope"
    with pytest.raises(ParamError, match=r"^params.yaml: switching.robust names no variant 'nope'"):
        parse_params(raw)
    raw["switching"]["robust"] = "baseline_at"
    with pytest.raises(ParamError, match=r"switching.robust must be a LoRA variant .* got 'baseline_at'"):
        parse_params(raw)
    raw["switching"] |= {"robust": "lora_fc_conv1_at"}
    raw["squeeze"] |= {"eps": ["3/255"]}
    with pytest.raises(ParamError, match=r"^params.yaml: squeeze.eps must be values of attack.eps .* got 3/255$"):
        parse_params(raw)
    raw["squeeze"] |= {"eps": ["4/255"], "bit_depth": None, "median": None}
    with pytest.raises(ParamError, match=r"^params.yaml: squeeze needs at least one squeezer"):
        parse_params(raw)
