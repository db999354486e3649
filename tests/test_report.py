"""Tests for the study report's markdown (robustlora.reporting.report and its sections) and figures
(robustlora.reporting.figures); the report from files and the stage: tests/test_report_study.py."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustlora.analysis import VERDICTS, analyse, train_table
from robustlora.analysis import checks as checks_mod
from robustlora.analysis.settings import Scope
from robustlora.formatting import MISSING
from robustlora.reporting import cells, figures, report
from robustlora.reporting.overview import ArmInfo, ThreatModel
from robustlora.reporting.report import ReportInputs, render
from rows import GRID, SANITY, SEEDS, arm_frame, first_correct, robust_on_grid, settings, study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CI_CELL = re.compile(r"^-?\d+\.\d \[-?\d+\.\d, -?\d+\.\d\]( \((sd \d+\.\d|1 seed)\))?$")

RESULTS = study(
    p=arm_frame("pretrained", first_correct(24), seeds=(0,)),
    b=arm_frame("baseline", first_correct(36)),
    l=arm_frame("lora_fc", first_correct(38), robust_on_grid(first_correct(38))),
    c=arm_frame("lora_fc_conv1", first_correct(39)),
)


# the default's kind of configuration: synthetic data, a 32 px model input, 40 of the 500 val images attacked
SCOPE = Scope(source="synthetic", classes=10, image_size=64, input_size=32, weights="pretrain", max_epochs=15,
              n_val=500)
SETTINGS = settings(scope=SCOPE)


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
ANALYSIS = analyse(RESULTS, SETTINGS, train_metrics=TRAIN)
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
    text = render(ReportInputs(analysis=result, settings=SETTINGS, checks=found, train=train_table(TRAIN),
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

def test_the_report_opens_with_the_scope_then_the_findings(built: tuple[str, dict]) -> None:
    text, _ = built
    assert text.startswith(f"# {report.TITLE}\n\n## Scope of the data\n")
    assert re.findall(r"^## .*", text, flags=re.M)[:2] == ["## Scope of the data", "## Findings"]
    scope = section(text, "## Scope of the data")
    assert ("the synthetic miniature of ImageNet → Tiny ImageNet the pipeline generates "
            "(data.source: synthetic)") in scope
    assert "Model input: 32 px (model.input_size); the paper: 64 px." in scope
    assert "one backbone: every figure is conditional on it" in scope
    assert "Evaluated: 40 of the 500 val images" in scope and "up to 15 epochs" in scope
    assert "Claims about absolute levels (b) are not testable in this configuration (synthetic data;" in scope


def test_every_finding_has_estimate_interval_paper_effect_equivalence_and_mde(built: tuple[str, dict]) -> None:
    text, _ = built
    findings = section(text, "## Findings")
    lines = [ln for ln in findings.splitlines() if ln.startswith("- ")]
    assert len(lines) == 2 + 1 + 4 + 6  # (a) x 2, (b), (c) x 4, (d) x 3 arms x 2 attacks
    verdicts = "|".join(re.escape(v) for v in VERDICTS)
    assert all(re.match(rf"- \*\*({verdicts})\*\* \(", ln) for ln in lines)
    for ln in lines:
        assert re.search(r"[+-]?\d+\.\d (points|%) \[[+-]?\d+\.\d, [+-]?\d+\.\d\]", ln), ln  # estimate + interval
        assert "Paper's effect (" in ln and re.search(r": (not )?excluded", ln), ln
        assert re.search(r"(Equivalent within ±5\.0 points|Within 55\.0–75\.0 %)[^:]*: (yes|no) \(90 % interval", ln)
        assert re.search(r"MDE \(80 % power\)[^:]*: \d+\.\d points", ln), ln
    c1 = next(ln for ln in lines if "(c1) lora_fc lowers the PGD" in ln)
    # the paper arms' common-correct set: baseline's 36 images (the unadapted arm's 24 do not shrink it); the
    # baseline's PGD flips 28 of them, lora_fc's none
    assert c1.startswith("- **supported**") and "Difference -77.8 points [" in c1 and "p < 0.001, Holm p < 0.001" in c1
    assert "on the 36 images every paper arm (baseline, lora_fc, lora_fc_conv1) classifies correctly" in c1
    assert "Sensitivity, on each arm's own clean-correct images: 0.0 % vs 77.8 %" in c1
    b = next(ln for ln in lines if "(b)" in ln)
    assert b.startswith("- **not testable in this configuration**") and "FGSM success 55.6 % [" in b
    a = next(ln for ln in lines if "(a) lora_fc reaches" in ln)
    assert "on 40 of the 500 val images (attack.n_images)" in a and "Paper's effect (+6.0 points)" in a
    # one baseline seed has best epoch 1: the failed check is flagged above the findings
    assert "**Sanity checks: 1 failed" in findings
    assert "TOST at α = 0.05" in findings and "report.equivalence_margin" in findings


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
    assert "Holm" in definitions and "hierarchical" in definitions
    for verdict in VERDICTS:  # the verdicts are defined once, under Definitions
        assert f"- Verdict '{verdict}': " in definitions, verdict
    params = section(text, "## Parameters").splitlines()
    for line in ["  n_images: 300", "    steps: 10", "    rel_step_size: 0.25", "  n_boot: 200", "  rank: 4"]:
        assert line in params, line


def test_not_evaluated_is_kept_apart_from_failed(tmp_path: Path) -> None:
    result = analyse(RESULTS, settings(arms={"baseline": "baseline", "lora_fc": "lora_fc", "lora_fc_conv1": None}))
    # no scope given: no scope section, the findings come first
    found = checks_mod.attack_checks(RESULTS, eps_grid=GRID, sanity_eps=None)
    text = render(ReportInputs(analysis=result, settings=settings(), checks=found, train=train_table(TRAIN),
                               arm_info=INFO, threat=THREAT, params=PARAMS, figures={}))
    findings = section(text, "## Findings")
    assert "- **not evaluated** (a) lora_fc_conv1 reaches higher clean accuracy" in findings
    assert ("reaches higher clean accuracy than baseline (paper: 98 vs 90 %): not evaluated: "
            "report.arms.lora_fc_conv1 is null.") in findings
    assert text.startswith(f"# {report.TITLE}\n\n## Findings\n")
    assert "**Sanity checks: 0 failed, 0 warning(s), 0 not informative, 10 not evaluated**" in findings
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
    again = render(ReportInputs(analysis=analyse(RESULTS, SETTINGS, train_metrics=TRAIN), settings=SETTINGS,
                                checks=found,
                                train=train_table(TRAIN), arm_info=INFO, threat=THREAT, params=PARAMS,
                                figures={k: f"figures/{p.name}" for k, p in figs.items()}))
    assert again == text


# ----------------------------------------------------------------------------- the cells every section shares

def test_estimate_cell_shows_interval_and_spread() -> None:
    row = pd.Series({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n_seeds": 3, "seed_std": 0.012})
    assert cells.estimate_cell(row) == "50.0 [25.0, 75.0] (sd 1.2)"
    assert cells.estimate_cell(pd.Series({**row, "n_seeds": 1})) == "50.0 [25.0, 75.0] (1 seed)"
    assert cells.estimate_cell(pd.Series({**row, "value": np.nan})) == MISSING and cells.estimate_cell(None) == MISSING


def test_find_row_matches_eps_from_params_and_files() -> None:
    table = ANALYSIS.arm_table
    row = cells.find_row(table, "lora_fc", "pgd", 8 / 255 + 1e-12, "robust_accuracy")  # ε as a float sum may drift
    assert row is not None and (row["arm"], row["attack"], row["metric"]) == ("lora_fc", "pgd", "robust_accuracy")
    assert cells.find_row(table, "lora_fc", "pgd", 4 / 255, "robust_accuracy") is None


def test_attack_order_links_and_steps() -> None:
    assert cells.attacks_in_order(["zoo", "pgd", "autoattack", "pgd", "fgsm"]) == ["fgsm", "pgd", "autoattack", "zoo"]
    link = cells.figure_link({"forest": "figures/f.png"}, "forest", "Caption")
    assert link == "![Caption](figures/f.png)\n\n*Caption*"
    assert cells.figure_link({}, "forest", "Caption") == ""
    assert cells.step_text(0.25 * 2 / 255) == "0.5/255" and cells.step_text(2 / 255) == "2/255"
    assert cells.transfer_figure_key(8 / 255) == "transfer_8/255"
    assert cells.transfer_figure_key(0.5) == "transfer_0.5"
