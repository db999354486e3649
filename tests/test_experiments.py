"""robustlora.tracking.experiments: sweep records from `dvc exp show --json` (the shape DVC 3 writes), failed runs kept."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from robustlora.errors import DataError
from robustlora.tracking import experiments

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _summary(rank: int, pgd: float) -> dict:
    arm = {"clean_acc": 0.9, "clean_acc_lo": 0.85, "clean_acc_hi": 0.94, "pgd_robust_acc": pgd,
           "pgd_robust_acc_lo": pgd - 0.05, "pgd_robust_acc_hi": pgd + 0.05, "pgd_asr": 1 - pgd / 0.9,
           "n_images": 120, "n_seeds": 3, "val_acc": 0.89, "val_acc_std": 0.01, "trainable_params": rank * 522}
    return {"eps_255": 4.0, "baseline": arm | {"trainable_params": 11181642}, "lora_fc": arm}


def _state(rev: str, params: dict, summary: dict | None, name: str | None = None) -> dict:
    metrics = {"metrics/summary.json": {"data": summary}} if summary is not None else {}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": "2026-11-27T05:39:06", "params": {"params.yaml": {"data": params}},
                     "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}}


def _with(params: dict, **dotted) -> dict:
    params = copy.deepcopy(params)
    for key, value in dotted.items():
        *path, last = key.split("__")
        node = params
        for part in path:
            node = node[part]
        node[last] = value
    return params


@pytest.fixture
def shown(tmp_path: Path) -> list[dict]:
    """A workspace, the baseline commit (rank 4) and four experiments: rank 8, a target set, a failed, a queued one."""
    log = tmp_path / "broken.log"
    log.write_text("Running stage 'train@lora_fc':\n" + "\n".join(f"line {i}" for i in range(40))
                   + "\nerror: params.yaml: lora.rank must be in [1, inf], got 0\n")
    exps = [
        {"name": "tidy-moss", "executor": {"state": "success", "name": None, "local": None},
         "revs": [_state("a" * 40, _with(PARAMS, lora__rank=8), _summary(8, 0.30), "tidy-moss")]},
        {"name": "calm-lake", "executor": None,
         "revs": [_state("c" * 40, _with(PARAMS, variants__lora_fc__targets="layer4"), _summary(4, 0.25),
                         "calm-lake")]},
        {"name": "broken", "executor": {"state": "failed", "name": None,
                                        "local": {"root": None, "log": str(log), "pid": 1, "returncode": 255}},
         "revs": [_state("d" * 40, _with(PARAMS, lora__rank=0), None, "broken")]},
        {"name": "later", "executor": {"state": "queued", "name": None, "local": None},
         "revs": [_state("e" * 40, _with(PARAMS, lora__rank=16), None, "later")]},
    ]
    base = _state("b" * 40, PARAMS, _summary(4, 0.20), "main") | {"experiments": exps}
    return [_state("workspace", PARAMS, _summary(4, 0.20)), base]


def test_records_one_row_per_experiment_and_arm(shown: list[dict]) -> None:
    table = experiments.records(json.loads(json.dumps(shown)))
    assert list(table.columns) == experiments.COLUMNS
    ok = table[table["status"] == "success"]
    assert sorted(set(ok["experiment"])) == ["calm-lake", "main", "tidy-moss"]  # the workspace is not a sweep point
    lora = ok[ok["arm"] == "lora_fc"].set_index("experiment")
    assert lora.loc["tidy-moss", "rank"] == 8 and lora.loc["main", "rank"] == 4
    assert lora.loc["tidy-moss", "swept"] == "lora.rank=8" and lora.loc["main", "swept"] == ""
    assert lora.loc["calm-lake", "targets"] == "layer4" and lora.loc["main", "targets"] == "fc"
    assert lora.loc["calm-lake", "swept"] == "variants.lora_fc.targets=layer4"
    assert lora.loc["tidy-moss", "pgd_robust_acc"] == 0.30 and lora.loc["tidy-moss", "pgd_robust_acc_lo"] == 0.25
    assert lora.loc["tidy-moss", "trainable_params"] == 8 * 522 and lora.loc["tidy-moss", "eps_255"] == 4
    assert math.isnan(lora.loc["main", "autoattack_robust_acc"])  # absent figures are NaN, not 0
    base = ok[ok["arm"] == "baseline"].set_index("experiment")
    assert base.loc["tidy-moss", "adaptation"] == "full" and math.isnan(base.loc["tidy-moss", "rank"])


def test_a_failed_experiment_is_kept_with_the_tail_of_its_log(shown: list[dict]) -> None:
    table = experiments.records(shown).set_index("experiment")
    assert table.loc["broken", "status"] == "failed" and table.loc["broken", "arm"] == ""
    tail = table.loc["broken", "log_tail"]
    assert tail.endswith("lora.rank must be in [1, inf], got 0") and "line 39" in tail
    assert len(tail.splitlines()) == experiments.LOG_TAIL_LINES and "line 10" not in tail
    assert table.loc["later", "status"] == "queued" and table.loc["later", "log_tail"] == ""


def test_a_successful_run_without_summary_is_failed_not_dropped(shown: list[dict]) -> None:
    shown[1]["experiments"][0]["revs"][0]["data"]["metrics"] = {}
    row = experiments.records(shown).set_index("experiment").loc["tidy-moss"]
    assert row["status"] == "failed" and "no metrics/summary.json" in row["log_tail"]


def test_log_tail_callback_is_used_when_dvc_has_no_log_file(shown: list[dict]) -> None:
    shown[1]["experiments"][2]["executor"]["local"]["log"] = None
    asked = []
    table = experiments.records(shown, log_tail=lambda name, executor: asked.append(name) or "from the queue")
    assert asked == ["broken"] and table.set_index("experiment").loc["broken", "log_tail"] == "from the queue"


def test_without_baseline_only_experiments(shown: list[dict]) -> None:
    table = experiments.records(shown, include_baseline=False)
    assert "main" not in set(table["experiment"])


def test_read_exp_show_reads_a_saved_output_and_names_a_bad_file(shown: list[dict], tmp_path: Path) -> None:
    saved = tmp_path / "exps.json"
    saved.write_text(json.dumps(shown))
    assert experiments.read_exp_show(saved) == json.loads(json.dumps(shown))
    with pytest.raises(DataError, match=r"missing\.json: file not found \(write it with `dvc exp show"):
        experiments.read_exp_show(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match=r"broken\.json: not JSON from `dvc exp show --json`"):
        experiments.read_exp_show(tmp_path / "broken.json")
