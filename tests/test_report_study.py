"""Tests for the report from files (robustlora.reporting.study and .inputs) and the report stage's wiring."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustlora.config import load_params
from robustlora.errors import DataError
from robustlora import layout
from robustlora.reporting import figures, study
from robustlora.reporting.inputs import InputPaths, need, read_inputs
from robustlora.reporting.report import TITLE
from test_report import HISTORIES, PNG_MAGIC, RESULTS, TRAIN

ROOT = Path(__file__).resolve().parents[1]

PARAMS_YAML = """
variants:
  pretrained: {adaptation: none}
  baseline: {adaptation: full}
  lora_fc: {adaptation: lora, targets: [fc]}
  lora_fc_conv1: {adaptation: lora, targets: [fc, conv1]}
model: {input_size: 32}
attack: {eps: [2/255, 8/255], n_images: 40}
report: {n_boot: 100}
switching: {standard: null, robust: null}
"""
INPUTS = [f.name for f in dataclasses.fields(InputPaths) if f.name != "show"]


def stage_module() -> Any:
    sys.path.insert(0, str(ROOT / "stages"))  # the stage imports its sibling _common
    spec = importlib.util.spec_from_file_location("stage_report", ROOT / "stages" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_inputs(root: Path) -> dict[str, Path]:
    """Every input of the report stage under `root`, from the synthetic study of tests/test_report.py."""
    paths = {"params": root / "params.yaml", "results_dir": root / "results" / "attack",
             "train_metrics_dir": root / "metrics" / "train", "histories_dir": root / "plots" / "train",
             "prepared": root / "prepared", "out": root / "reports", "summary": root / "metrics" / "summary.json"}
    paths["params"].write_text(PARAMS_YAML)
    for d in ("results_dir", "train_metrics_dir", "prepared"):
        paths[d].mkdir(parents=True)
    for arm, rows in RESULTS.groupby("variant", sort=False):
        rows.to_parquet(paths["results_dir"] / f"{arm}.parquet")
        (paths["train_metrics_dir"] / f"{arm}.json").write_text(json.dumps(TRAIN[arm]))
        for seed, history in HISTORIES[arm].items():
            (paths["histories_dir"] / arm).mkdir(parents=True, exist_ok=True)
            history.to_csv(paths["histories_dir"] / arm / f"seed_{seed}.csv", index=False)
    (paths["prepared"] / "info.json").write_text(json.dumps({"image_size": 64, "classes": 10,
                                                             "counts": {"train": 960, "holdout": 240, "val": 500}}))
    # the attacks beyond PGD, on the first images: PGD's own rows renamed (exactly as strong as PGD)
    pgd = RESULTS[RESULTS["attack"] == "pgd"]
    first = pgd[pgd["image"].isin(sorted(pgd["image"].unique())[:10])]
    extra = {name: first.assign(attack=name, queries=np.where(first["clean_correct"] & ~first["adv_correct"], 3.0,
                                                               np.nan), linf=first["eps"], detail="")
             for name in ("autoattack", "square", "hopskipjump", "boundary", "zoo")}
    paths["autoattack"], paths["blackbox_dir"] = root / "results" / "autoattack.parquet", root / "results" / "blackbox"
    paths["transfer"] = root / "results" / "transfer.parquet"
    paths["blackbox_dir"].mkdir(parents=True)
    extra["autoattack"].to_parquet(paths["autoattack"])
    for name in ("square", "hopskipjump", "boundary", "zoo"):
        extra[name].to_parquet(paths["blackbox_dir"] / f"{name}.parquet")
    pd.concat([first.assign(attack=f"transfer_{arm}") for arm in RESULTS["variant"].unique()]).to_parquet(
        paths["transfer"])
    # the defences stage: no detector rows and no switching system here (tests/test_defence_report.py has its tests)
    from robustlora.defences.evaluation import SQUEEZE_COLUMNS, SWITCHING_COLUMNS

    paths["defences_dir"], paths["defences_metrics"] = root / "results" / "defences", root / "metrics" / "defences.json"
    paths["defences_dir"].mkdir(parents=True)
    pd.DataFrame(columns=["variant", "seed", *SQUEEZE_COLUMNS]).to_parquet(paths["defences_dir"] / "squeeze.parquet")
    pd.DataFrame(columns=["system", "standard", "robust", "seed", *SWITCHING_COLUMNS]).to_parquet(
        paths["defences_dir"] / "switching.parquet")
    paths["defences_metrics"].write_text(json.dumps({"squeeze": {}, "switching": {}, "switching_cost": None}))
    return paths


def stub_png(fig: Any, path: Path) -> Path:
    """save_figure without rendering (PNGs are tested in tests/test_report.py): keeps these tests fast."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_MAGIC)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage_inputs(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def built(inputs: dict[str, Path]) -> study.StudyReport:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "save_figure", stub_png)
        return study.build_report(load_params(inputs["params"]), InputPaths(**{k: inputs[k] for k in INPUTS}),
                                  inputs["out"])


# ----------------------------------------------------------------------------- the library

def test_build_report_reads_analyses_and_renders(built: study.StudyReport, inputs: dict[str, Path]) -> None:
    text = built.text
    assert text.startswith(f"# {TITLE}\n\n## Scope of the data\n")
    assert "- Evaluated: 40 of the 500 val images" in text and "Model input: 32 px (model.input_size)" in text
    assert "## Defences" in text and "### Dynamic adapter switching" in text
    assert "images of 64 px are resized to 32 px" in text and "LoRA r=4, α=1 on fc+conv1 (fc, conv1)" in text
    assert "## Beyond FGSM and PGD" in text and "| Square | baseline |" in text and "Transfer: PGD examples" in text
    assert built.findings["verdicts"]["c1/pgd"] == "supported" and built.findings["checks"]["failed"] == 1
    assert list(built.tables) == [layout.COMPARISONS, layout.VERSUS_PGD, layout.QUERY_CURVES, layout.TRANSFER_MATRIX]
    comparisons = built.tables[layout.COMPARISONS]
    assert len(comparisons) == 3 * 3 * 2 * 2 and set(comparisons["verdict"]) <= {"higher", "lower", "inconclusive"}
    versus = built.tables[layout.VERSUS_PGD]
    assert set(versus["attack"]) >= {"autoattack", "square", "transfer_baseline"} and (versus["diff"] == 0).all()
    # every figure lies in out/figures and is linked relatively from the text
    assert {p.parent for p in built.figures.values()} == {inputs["out"] / layout.FIGURES}
    assert all(f"]({layout.FIGURES}/{p.name})" in text for p in built.figures.values())
    # the headline figures: one flat key per arm and figure, its interval around it
    pgd = built.headline["lora_fc"]["pgd_robust_acc"]
    assert built.headline["lora_fc"]["pgd_robust_acc_lo"] <= pgd <= built.headline["lora_fc"]["pgd_robust_acc_hi"]
    table = pd.read_parquet(inputs["results_dir"] / "lora_fc.parquet").query("attack == 'pgd'")
    table = table[(table["eps"] - built.headline["eps_255"] / 255).abs() < 1e-6]
    assert pgd == pytest.approx((table["clean_correct"] & table["adv_correct"]).mean(), abs=1e-6)
    assert built.experiment_metrics()["lora_fc/pgd_robust_acc"] == pgd
    # what the stage logs
    assert built.run_tags()["finding.c1/pgd"] == "supported"
    # synthetic data at a 32 px input: claim (b) is not testable; (a) on 40 images is underpowered
    assert built.verdict_counts() == {"supported": 8, "contradicted": 2, "equivalent": 0,
                                      "paper's effect rejected": 0, "underpowered": 2,
                                      "not testable in this configuration": 1, "not converged": 0,
                                      "not evaluated": 0}
    assert built.run_metrics() == {"sanity_checks_flagged": len(built.flagged), "sanity_checks_failed": 1,
                                   "findings_supported": 8, "findings_contradicted": 2, "findings_equivalent": 0,
                                   "findings_paper_effect_rejected": 0, "findings_underpowered": 2, "findings_not_testable_in_this_configuration": 1,
                                   "findings_not_converged": 0, "findings_not_evaluated": 0}
    assert built.findings["scope"]["n_val"] == 500 and built.findings["scope"]["source"] == "synthetic"
    assert built.findings["scope"]["max_epochs"] == 15 and built.findings["settings"]["equivalence_margin"] == 0.05


def test_settings_and_threat_model_come_from_params(inputs: dict[str, Path]) -> None:
    p = load_params(inputs["params"])
    settings = study.study_settings(p)
    assert settings.eps_grid == (2 / 255, 8 / 255) and settings.n_boot == 100 and settings.scope is None
    assert settings.report_eps == p.report.eps and settings.arms == dict(p.report.arms)
    assert settings.equivalence_margin == p.report.equivalence_margin == 0.05
    # the scope: data.source and model.* from params, classes and the val split from info.json, the cap from train
    data = read_inputs(p, InputPaths(**{k: inputs[k] for k in INPUTS}))
    scope = study.study_scope(p, data)
    assert (scope.source, scope.classes, scope.image_size, scope.input_size, scope.weights) == (
        "synthetic", 10, 64, 32, "pretrain")
    assert scope.max_epochs == 15 and scope.n_val == 500 and scope.backbones == 1
    assert study.study_settings(p, scope).scope == scope
    threat = study.threat_model(p, 64)
    assert threat.image_size == 64 and threat.input_size == 32 and threat.n_images_requested == 40
    assert threat.pgd_step_sizes == tuple(p.attack.pgd.step_for(e) for e in p.attack.eps)
    assert study.arm_info(p)["baseline"].trains_batchnorm and not study.arm_info(p)["lora_fc"].trains_batchnorm


def test_defence_settings_say_what_ran(inputs: dict[str, Path], tmp_path: Path) -> None:
    p = load_params(inputs["params"])
    assert study.squeeze_settings(p) == (
        "Squeezers: bit depth 5, 2×2 median (Xu et al. 2018); the threshold gives a 5 % false positive rate on each "
        "model's clean holdout images. First 60 attacked images; FGSM and PGD as above; the adaptive attack is "
        "20-step PGD (step 0.25·ε) on min(CE, 2) − 0.25·relu(score − 0.9·threshold) through the squeezers by "
        "BPDA, per image the stronger of it and PGD.")
    assert study.switching_settings(p) == ""
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_YAML.replace("switching: {standard: null, robust: null}",
                                          "switching: {standard: lora_fc, robust: lora_fc_conv1}\n"
                                          "squeeze: {bit_depth: null}"))
    p = load_params(params)
    assert study.squeeze_settings(p).startswith("Squeezers: 2×2 median (Xu et al. 2018);")
    assert study.switching_settings(p) == (
        "One backbone holds the adapters of `lora_fc` and `lora_fc_conv1` (same seed); the squeezing detector on "
        "`lora_fc` routes each flagged input to `lora_fc_conv1`. First 60 attacked images. Nothing in the system is "
        "random, so no EOT is needed.")


def test_a_missing_input_names_the_stage_that_writes_it(tmp_path: Path) -> None:
    paths = stage_inputs(tmp_path)
    p = load_params(paths["params"])
    (paths["defences_dir"] / "switching.parquet").unlink()
    with pytest.raises(DataError, match=r"switching\.parquet is missing; stage defences writes it \(run `dvc repro "
                                        r"defences`\)"):
        study.build_report(p, InputPaths(**{k: paths[k] for k in INPUTS}), paths["out"])
    with pytest.raises(DataError, match=r"^info\.json is missing; stage preprocess writes it"):
        need(tmp_path / "info.json", "preprocess", show=lambda path: path.name)
    assert need(paths["params"], "none") == paths["params"]


# ----------------------------------------------------------------------------- the stage

def test_stage_writes_every_output_and_logs_one_run(inputs: dict[str, Path], built: study.StudyReport,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from robustlora import tracking

    logged: dict[str, Any] = {"artifacts": [], "metrics": {}}

    def publish(rec: Any, tried: bool = False) -> None:  # what the stage logs (from its outbox entry), after its outputs
        (run,) = rec.runs
        logged.update(experiment=rec.experiment, name=run.name, params=run.params, tags=run.tags,
                      headline=rec.experiment_metrics, outputs_written=(inputs["out"] / "report.md").is_file())
        logged["artifacts"] += [Path(path).name for path, _, _ in run.artifacts]
        logged["metrics"].update({key: value for key, value, _, _ in run.metrics})

    monkeypatch.setattr(tracking.Recorder, "publish", publish)
    stage = stage_module()
    called = {}

    def build_report(p: Any, paths: InputPaths, out: Path) -> study.StudyReport:
        called.update(paths=paths, out=out)
        return built  # the library's run above: this test is the stage's wiring

    monkeypatch.setattr(study, "build_report", build_report)
    stage.main(**inputs)
    out = inputs["out"]
    assert called["out"] == out and called["paths"].show is sys.modules["_common"].rel
    assert {k: getattr(called["paths"], k) for k in INPUTS} == {k: inputs[k] for k in INPUTS}
    assert (out / "report.md").read_text() == built.text
    findings = json.loads((out / "findings.json").read_text())
    assert findings["verdicts"]["c1/pgd"] == "supported" and findings["checks"]["failed"] == 1
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert len(comparisons) == 3 * 3 * 2 * 2 and set(comparisons["verdict"]) <= {"higher", "lower", "inconclusive"}
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(
        n for n in logged["artifacts"] if n.endswith(".png"))
    assert logged["artifacts"][:6] == ["report.md", "findings.json", "comparisons.csv", "attacks_vs_pgd.csv",
                                       "success_vs_queries.csv", "transfer_matrix.csv"]
    versus = pd.read_csv(out / "attacks_vs_pgd.csv")
    assert set(versus["attack"]) >= {"autoattack", "square", "transfer_baseline"} and (versus["diff"] == 0).all()
    assert logged["name"] == "report" and logged["tags"]["stage"] == "report" and logged["outputs_written"]
    assert logged["tags"]["finding.c1/pgd"] == "supported" and logged["metrics"]["sanity_checks_failed"] == 1
    assert inputs["summary"].read_text() == json.dumps(built.headline, indent=2) + "\n"
    assert logged["headline"]["lora_fc/pgd_robust_acc"] == built.headline["lora_fc"]["pgd_robust_acc"]
    assert "baseline/clean_acc_hi" in logged["headline"]
    printed = capsys.readouterr().out
    assert ("(findings: 8 supported, 2 contradicted, 0 equivalent, 0 paper's effect rejected, 2 underpowered, "
            "1 not testable in this "
            "configuration, 0 not converged, 0 not evaluated;") in printed
    assert "FAILED baseline seed 0: best epoch neither the first nor max_epochs" in printed


def test_stage_names_a_missing_input(tmp_path: Path) -> None:
    paths = stage_inputs(tmp_path)
    (paths["results_dir"] / "lora_fc.parquet").unlink()
    with pytest.raises(DataError, match=r"lora_fc\.parquet is missing; stage attack@lora_fc writes it"):
        stage_module().main(**paths)
