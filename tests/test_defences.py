"""robustlora.defences.evaluation: the squeezing detector on a model and the detector-driven switching system, per
image; robustlora.defences.metrics: the stage's figures from those rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from robustlora.config import AttackConfig, ParamError, SqueezeConfig, SwitchingConfig, parse_params
from robustlora.defences.evaluation import (SQUEEZE_COLUMNS, SWITCHING_ATTACKS, SWITCHING_COLUMNS, SYSTEM_COLUMNS,
                                            squeeze_rows, squeezers, switching_rows, switching_table, system_rows)
from robustlora.defences.metrics import squeeze_metrics, squeeze_summary, switching_metrics, switching_run_metrics
from robustlora.defences.squeeze import detect, detector_scores, fit_threshold
from robustlora.defences.switching import AdapterBank, adapter_from_state_dict, lora_keys
from robustlora.evaluation.rowcache import RowCache
from robustlora.models.lora import apply_lora
from robustlora.models.resnet import build_model

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
    from conftest import defence_params

    raw = defence_params()
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


# --- the stage's figures and tables (robustlora.defences.metrics, system_rows, switching_table) ------------------


def _bools(text: str) -> list[bool]:
    return [c == "1" for c in text]


def test_squeeze_metrics_of_hand_made_rows() -> None:
    rows = pd.DataFrame({"variant": "a", "attack": ["pgd"] * 4 + ["fgsm"] * 4, "eps_label": "eps_8",
                         "clean_correct": _bools("1110" * 2), "adv_correct": _bools("0010" + "1110"),
                         "clean_flagged": _bools("0100" * 2), "adv_flagged": _bools("1001" + "0000")})
    m = squeeze_metrics(rows)
    assert list(m)[:4] == ["squeeze/pgd/eps_8/clean_fpr", "squeeze/pgd/eps_8/detection_rate",
                           "squeeze/pgd/eps_8/robust_accuracy", "squeeze/pgd/eps_8/detector_robust_accuracy"]
    # pgd fools images 0 and 1 (clean-correct, wrong after); the detector flags 0 of them; image 2 stays correct
    assert m["squeeze/pgd/eps_8/clean_fpr"] == 0.25 and m["squeeze/pgd/eps_8/detection_rate"] == 0.5
    assert m["squeeze/pgd/eps_8/robust_accuracy"] == 0.25 and m["squeeze/pgd/eps_8/detector_robust_accuracy"] == 0.5
    assert math.isnan(m["squeeze/fgsm/eps_8/detection_rate"])  # fgsm fooled no image
    summary = squeeze_summary(pd.concat([rows, rows.assign(variant="b", clean_flagged=True)], ignore_index=True))
    assert list(summary) == ["a", "b"]
    pd.testing.assert_series_equal(pd.Series(summary["a"]), pd.Series(m))  # per variant: its own rows only
    assert summary["b"]["squeeze/pgd/eps_8/clean_fpr"] == 1.0


def test_switching_metrics_and_run_metrics() -> None:
    rows = pd.DataFrame({"attack": ["pgd_standard"] * 4 + ["worst"] * 4, "eps_label": "eps_8",
                         "clean_correct": _bools("1101" * 2), "adv_correct": _bools("0101" + "0001"),
                         "clean_switched": _bools("0001" * 2), "adv_switched": _bools("1100" + "1000")})
    m = switching_metrics(rows)
    assert m == {"clean_accuracy": 0.75, "clean_switch_rate": 0.25, "pgd_standard/eps_8/robust_accuracy": 0.5,
                 "pgd_standard/eps_8/switch_rate": 0.5, "worst/eps_8/robust_accuracy": 0.25,
                 "worst/eps_8/switch_rate": 0.25}
    cost = {"device": "cpu", "batch_size": 4, "switch_s": {"median": 0.1, "q05": 0.0, "q95": 0.2},
            "reload_disk_s": {"median": 0.5, "q05": 0.4, "q95": 0.6}, "bank_bytes": 10, "adapter_bytes": 2}
    assert switching_run_metrics(m, cost) == m | {"cost/switch_s_median": 0.1, "cost/reload_disk_s_median": 0.5,
                                                  "cost/bank_bytes": 10, "cost/adapter_bytes": 2}


def test_switching_table_columns_with_and_without_a_system(tmp_path) -> None:
    rows = pd.DataFrame({c: [0, 1] for c in SWITCHING_COLUMNS})
    tagged = RowCache.tag(system_rows(rows, "std", "rob", 3), "fp")
    assert list(tagged.columns) == SYSTEM_COLUMNS + SWITCHING_COLUMNS + ["fingerprint"]
    assert tagged["system"].eq("std+rob").all() and tagged["seed"].eq(3).all()
    table = switching_table([tagged, tagged.copy()])
    assert len(table) == 4 and list(table.index) == [0, 1, 2, 3]
    empty = switching_table([])
    assert empty.empty and list(empty.columns) == list(tagged.columns)
    empty.to_parquet(tmp_path / "switching.parquet", index=False)  # the stage writes it as is
