"""Tests for the report: markdown (robustlora.reporting.report), figures (robustlora.reporting.figures) and the stage's wiring."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustlora.analysis import checks as checks_mod
from robustlora.reporting import figures
from robustlora.reporting import report
from robustlora.analysis.results import analyse, train_table
from robustlora.errors import DataError
from robustlora.reporting.report import ArmInfo, ReportInputs, ThreatModel, render
from test_analysis import GRID, SANITY, SEEDS, arm_frame, first_correct, robust_on_grid, settings, study

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CI_CELL = re.compile(r"^-?\d+\.\d \[-?\d+\.\d, -?\d+\.\d\]( \((sd \d+\.\d|1 seed)\))?$")

RESULTS = study(
    p=arm_frame("pretrained", first_correct(24), seeds=(0,)),
    b=arm_frame("baseline", first_correct(36)),
    l=arm_frame("lora_fc", first_correct(38), robust_on_grid(first_correct(38))),
    c=arm_frame("lora_fc_conv1", first_correct(39)),
)


ANALYSIS = analyse(RESULTS, settings())


def seed_metrics(best: int, run: int, val: float) -> dict[str, Any]:
    return {"val_accuracy": val, "holdout_accuracy": val, "best_epoch": best, "epochs_run": run, "max_epochs": 15,
            "trainable_params": 2_052, "total_params": 11_178_564}


TRAIN = {
    "pretrained": {"seeds": {"0": {"val_accuracy": 0.6, "best_epoch": 0, "epochs_run": 0, "max_epochs": 15,
                                   "trainable_params": 0, "total_params": 11_176_512}}},
    "baseline": {"seeds": {"0": seed_metrics(1, 6, 0.9), "1": seed_metrics(8, 13, 0.88),
                           "2": seed_metrics(9, 14, 0.92)}},
    "lora_fc": {"seeds": {str(s): seed_metrics(7, 12, 0.95) for s in SEEDS}},
    "lora_fc_conv1": {"seeds": {str(s): seed_metrics(6 + s, 12, 0.96) for s in SEEDS}},
}
HISTORIES = {arm: {s: pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.5, 1.0, 0.8 + 0.01 * s],
                                    "holdout_accuracy": [0.6, 0.8, 0.85 + 0.01 * s]}) for s in SEEDS}
             for arm in ("baseline", "lora_fc", "lora_fc_conv1")} | {"pretrained": {}}
INFO = {"pretrained": ArmInfo("no adaptation (pretrained weights)", False),
        "baseline": ArmInfo("full fine-tuning (BatchNorm statistics re-estimated)", True),
        "lora_fc": ArmInfo("LoRA r=4, α=1 on fc", False),
        "lora_fc_conv1": ArmInfo("LoRA r=4, α=1 on fc, conv1", False)}
THREAT = ThreatModel(eps=GRID, image_size=64, input_size=32, pgd_steps=10, pgd_step_sizes=tuple(0.25 * e for e in GRID),
                     pgd_rel_step_size=0.25, pgd_random_start=True, pgd_restarts=1, sanity_eps=SANITY,
                     n_images_requested=300, attack_seed=0)
PARAMS = {"attack": {"n_images": 300, "eps": list(GRID), "pgd": {"steps": 10, "rel_step_size": 0.25}},
          "report": {"n_boot": 200, "alpha": 0.05}, "lora": {"rank": 4, "alpha": 1.0}}


def build(tmp: Path) -> tuple[str, dict[str, Path]]:
    """Analysis, checks, figures and markdown of the synthetic study, as the stage wires them."""
    result = ANALYSIS
    found = checks_mod.run_checks(RESULTS, TRAIN, eps_grid=GRID, sanity_eps=SANITY)
    figs = figures.write_figures(tmp / "figures", arm_table=result.arm_table, comparisons=result.comparisons,
                                 histories=HISTORIES, arms=result.arms, report_eps=8 / 255, baseline="baseline")
    text = render(ReportInputs(analysis=result, settings=settings(), checks=found, train=train_table(TRAIN),
                               arm_info=INFO, threat=THREAT, params=PARAMS,
                               figures={k: f"figures/{p.name}" for k, p in figs.items()}))
    return text, figs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    return build(tmp_path_factory.mktemp("report"))


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)]
    return rest[:ends[0]] if ends else rest


def table_cells(block: str) -> list[list[str]]:
    """Body cells of the first markdown table in `block`."""
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


# ----------------------------------------------------------------------------- markdown

def test_findings_come_first_with_bold_verdicts(built: tuple[str, dict]) -> None:
    text, _ = built
    assert text.startswith(f"# {report.TITLE}\n\n## Findings\n")
    assert re.findall(r"^## .*", text, flags=re.M)[0] == "## Findings"
    findings = section(text, "## Findings")
    lines = [ln for ln in findings.splitlines() if ln.startswith("- ")]
    assert len(lines) == 2 + 1 + 4 + 6  # (a) x 2, (b), (c) x 4, (d) x 3 arms x 2 attacks
    assert all(re.match(r"- \*\*(supported|contradicted|inconclusive|not evaluated)\*\* \(", ln) for ln in lines)
    c1 = next(ln for ln in lines if "(c1) lora_fc lowers the PGD" in ln)
    # the common-correct set is the unadapted arm's 24 images: the baseline's PGD flips all, lora_fc's none. The
    # bootstrap sees no variation; the interval is Wilson's bound for 24 images, 1.96² / (24 + 1.96²) = 13.8 points
    assert c1.startswith("- **supported**") and ": -100.0 [-100.0, -86.2] points; p < 0.001, Holm p < 0.001" in c1
    assert "on the 24 common-correct images (correct in every seed of every adapted arm)" in c1
    # one baseline seed has best epoch 1: the failed check is flagged above the findings
    assert "**Sanity checks: 1 failed" in findings


def test_every_estimate_cell_carries_its_interval(built: tuple[str, dict]) -> None:
    text, _ = built
    for attack in ("FGSM", "PGD"):
        block = section(text, f"## {attack}")
        for sub in ("### Attack success rate", "### Robust accuracy", "### Certainty"):
            heading = next(ln for ln in block.splitlines() if ln.startswith(sub))
            rows = table_cells(section(block, heading))
            assert [r[0] for r in rows] == ["pretrained", "baseline", "lora_fc", "lora_fc_conv1"]
            for row in rows:
                for cell in row[1:]:
                    assert CI_CELL.match(cell), (attack, sub, cell)
        seeds = table_cells(section(block, next(ln for ln in block.splitlines() if ln.startswith("### Per seed"))))
        assert len(seeds) == 1 + 3 + 3 + 3
        assert all(re.match(r"^\d+\.\d \[\d+\.\d, \d+\.\d\] \(\d+/\d+\)$", c) for r in seeds for c in r[2:])
    comparisons = table_cells(section(text, "## Paired comparisons against baseline"))
    assert len(comparisons) == 3 * 2 * 2 * 2
    assert all(re.match(r"^[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]$", r[4]) for r in comparisons)


def test_threat_model_and_table1(built: tuple[str, dict]) -> None:
    text, _ = built
    threat = section(text, "## Threat model")
    assert "ε ∈ {2/255, 8/255} in [0,1] pixel units, the same grid for FGSM and PGD" in threat
    assert "images of 64 px are resized to 32 px inside the model" in threat
    assert "PGD: 10 steps, step size (0.25 · ε): 0.5/255 at ε = 2/255, 2/255 at ε = 8/255" in threat
    assert "random start: yes; restarts: 1" in threat and "float32" in threat and "eval mode" in threat
    assert "40 val images (attack.n_images = 300)" in threat and "pretrained: 0; baseline: 0, 1, 2" in threat
    rows = {r[0]: r for r in table_cells(section(text, "## Table 1. Arms: accuracy, parameters, training"))}
    assert rows["baseline"][1:4] == ["full fine-tuning (BatchNorm statistics re-estimated)", "yes", "90.0 ± 2.0 (3)"]
    assert rows["baseline"][6] == "1/6, 8/13, 9/14"
    assert rows["lora_fc"][2] == "no" and rows["lora_fc"][5] == "2,052 (0.0184 % of 11,178,564)"
    assert CI_CELL.match(rows["lora_fc"][4]) and rows["lora_fc"][4].startswith("95.0 [")
    assert rows["pretrained"][6] == "0/0" and rows["pretrained"][4].endswith("(1 seed)")


def test_checks_definitions_and_params_are_all_shown(built: tuple[str, dict]) -> None:
    text, _ = built
    checks = section(text, "## Sanity checks")
    rows = table_cells(checks)
    assert len(rows) == 3 * 3 + (1 + 3 * 3) * 7  # best epoch per trained seed + 7 attack checks per arm x seed
    assert rows[0][0] == "**FAILED**" and rows[0][2:4] == ["baseline", "0"]  # flagged first
    assert "**1 of 79 checks flagged: 1 failed.**" in checks
    definitions = section(text, "## Definitions")
    assert "correctly before AND after the attack" in definitions and "Wilson" in definitions
    assert "McNemar" in definitions and "Holm" in definitions and "hierarchical" in definitions
    params = section(text, "## Parameters").splitlines()
    for line in ["  n_images: 300", "    steps: 10", "    rel_step_size: 0.25", "  n_boot: 200", "  rank: 4"]:
        assert line in params, line


def test_not_evaluated_is_kept_apart_from_failed(tmp_path: Path) -> None:
    result = analyse(RESULTS, settings(arms={"baseline": "baseline", "lora_fc": "lora_fc", "lora_fc_conv1": None}))
    found = checks_mod.attack_checks(RESULTS, eps_grid=GRID, sanity_eps=None)
    text = render(ReportInputs(analysis=result, settings=settings(), checks=found, train=train_table(TRAIN),
                               arm_info=INFO, threat=THREAT, params=PARAMS, figures={}))
    findings = section(text, "## Findings")
    assert "- **not evaluated** (a) lora_fc_conv1 reaches higher clean accuracy" in findings
    assert "Report.arms.lora_fc_conv1 is null." in findings
    assert "**Sanity checks: 0 failed, 0 warning(s), 10 not evaluated**" in findings
    assert "| **NOT EVALUATED** | PGD success ≥ 99 % at the sanity ε |" in text and "**FAILED**" not in text
    assert "![" not in text  # no figures passed, no dangling links


def test_markdown_links_every_figure_relatively(built: tuple[str, dict]) -> None:
    text, figs = built
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert sorted(links) == sorted(f"figures/{p.name}" for p in figs.values())
    assert "/tmp" not in text and not re.search(r"\bnan\b", text, flags=re.I)


# ----------------------------------------------------------------------------- figures

def test_figures_are_pngs_and_byte_identical_across_runs(built: tuple[str, dict], tmp_path: Path) -> None:
    _, figs = built
    assert list(figs) == ["training", "success_fgsm", "robust_fgsm", "certainty_fgsm", "success_pgd", "robust_pgd",
                          "certainty_pgd", "forest"]
    for key, path in figs.items():
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, key
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width >= 400 and height >= 150 and len(data) > 5_000, (key, width, height)
    # each kind of figure drawn again from the same inputs gives the same bytes
    colors = figures.arm_colors(ANALYSIS.arms)
    again = {"training": figures.training_figure(HISTORIES, colors),
             "success_pgd": figures.eps_curve_figure(ANALYSIS.arm_table, "pgd", "attack_success_rate", colors),
             "certainty_fgsm": figures.certainty_figure(ANALYSIS.arm_table, "fgsm", 8 / 255, colors),
             "forest": figures.forest_figure(ANALYSIS.comparisons, 8 / 255, "baseline")}
    for key, fig in again.items():
        assert figures.save_figure(fig, tmp_path / f"{key}.png").read_bytes() == figs[key].read_bytes(), key
    assert [p.name for p in tmp_path.rglob(".*")] == []  # atomic writes left no temp files


def test_markdown_is_deterministic(built: tuple[str, dict]) -> None:
    text, figs = built
    found = checks_mod.run_checks(RESULTS, TRAIN, eps_grid=GRID, sanity_eps=SANITY)
    again = render(ReportInputs(analysis=analyse(RESULTS, settings()), settings=settings(), checks=found,
                                train=train_table(TRAIN), arm_info=INFO, threat=THREAT, params=PARAMS,
                                figures={k: f"figures/{p.name}" for k, p in figs.items()}))
    assert again == text


# ----------------------------------------------------------------------------- the stage

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


def stage_module() -> Any:
    sys.path.insert(0, str(ROOT / "stages"))  # the stage imports its sibling _common
    spec = importlib.util.spec_from_file_location("stage_report", ROOT / "stages" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_inputs(root: Path) -> dict[str, Path]:
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
    (paths["prepared"] / "info.json").write_text(json.dumps({"image_size": 64}))
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
    # the defences stage: no detector rows and no switching system here (robustlora.analysis.defences has its tests)
    from robustlora.defences.evaluation import SQUEEZE_COLUMNS, SWITCHING_COLUMNS

    paths["defences_dir"], paths["defences_metrics"] = root / "results" / "defences", root / "metrics" / "defences.json"
    paths["defences_dir"].mkdir(parents=True)
    pd.DataFrame(columns=["variant", "seed", *SQUEEZE_COLUMNS]).to_parquet(paths["defences_dir"] / "squeeze.parquet")
    pd.DataFrame(columns=["system", "standard", "robust", "seed", *SWITCHING_COLUMNS]).to_parquet(
        paths["defences_dir"] / "switching.parquet")
    paths["defences_metrics"].write_text(json.dumps({"squeeze": {}, "switching": {}, "switching_cost": None}))
    return paths


def test_stage_writes_every_output_and_logs_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from contextlib import contextmanager

    from robustlora import tracking

    logged: dict[str, Any] = {"artifacts": [], "metrics": {}}

    @contextmanager
    def fake_run(experiment: str, name: str, params: Any = None, tags: Any = None, repo_root: Any = None):
        logged.update(experiment=experiment, name=name, params=params, tags=tags)
        yield None

    monkeypatch.setattr(tracking, "start_run", fake_run)
    monkeypatch.setattr(tracking, "log_artifact", lambda path, where=None: logged["artifacts"].append(Path(path).name))
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged["metrics"].update(metrics))
    monkeypatch.setattr(tracking, "log_to_experiment_run", lambda experiment, metrics: logged.update(headline=metrics))
    # rendering PNGs is tested above; here a stub keeps the wiring test fast
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: (path.parent.mkdir(parents=True, exist_ok=True),
                                                                   path.write_bytes(PNG_MAGIC), path)[-1])
    paths = stage_inputs(tmp_path)
    stage = stage_module()
    stage.main(**paths)
    out = paths["out"]
    text = (out / "report.md").read_text()
    assert text.startswith(f"# {report.TITLE}\n\n## Findings")
    assert "## Defences" in text and "### Dynamic adapter switching" in text
    assert "images of 64 px are resized to 32 px" in text and "LoRA r=4, α=1 on fc+conv1 (fc, conv1)" in text
    findings = json.loads((out / "findings.json").read_text())
    assert findings["verdicts"]["c1/pgd"] == "supported" and findings["checks"]["failed"] == 1
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert len(comparisons) == 3 * 2 * 2 * 2 and set(comparisons["verdict"]) <= {"higher", "lower", "inconclusive"}
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(
        n for n in logged["artifacts"] if n.endswith(".png"))
    assert {"report.md", "findings.json", "comparisons.csv", "attacks_vs_pgd.csv", "transfer_matrix.csv"} <= set(
        logged["artifacts"])
    assert "## Beyond FGSM and PGD" in text and "| Square | baseline |" in text and "Transfer: PGD examples" in text
    versus = pd.read_csv(out / "attacks_vs_pgd.csv")
    assert set(versus["attack"]) >= {"autoattack", "square", "transfer_baseline"} and (versus["diff"] == 0).all()
    assert logged["tags"]["finding.c1/pgd"] == "supported" and logged["metrics"]["sanity_checks_failed"] == 1
    # the headline figures: one flat key per arm and figure, its interval around it, also on the experiment's run
    summary = json.loads(paths["summary"].read_text())
    pgd = summary["lora_fc"]["pgd_robust_acc"]
    assert summary["lora_fc"]["pgd_robust_acc_lo"] <= pgd <= summary["lora_fc"]["pgd_robust_acc_hi"]
    table = pd.read_parquet(paths["results_dir"] / "lora_fc.parquet").query("attack == 'pgd'")
    table = table[(table["eps"] - summary["eps_255"] / 255).abs() < 1e-6]
    assert pgd == pytest.approx((table["clean_correct"] & table["adv_correct"]).mean(), abs=1e-6)
    assert logged["headline"]["lora_fc/pgd_robust_acc"] == pgd and "baseline/clean_acc_hi" in logged["headline"]
    printed = capsys.readouterr().out
    assert "FAILED baseline seed 0: best epoch neither the first nor max_epochs" in printed
    # a missing input names the file and the stage that writes it
    (paths["results_dir"] / "lora_fc.parquet").unlink()
    with pytest.raises(DataError, match=r"lora_fc\.parquet is missing; stage attack@lora_fc writes it"):
        stage.main(**paths)
