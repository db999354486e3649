"""Tests for robustlora.report: tables, figures and Carlini-style sanity checks on a synthetic attack table."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustlora.report import Check, build_report, format_eps, plot_files, sanity_checks

VARIANTS = ["baseline", "lora_fc", "lora_fc_conv1"]
EPS = [2 / 255, 8 / 255, 0.5]
N_IMAGES = 200
N_CORRECT = 150  # clean accuracy 0.75 on 200 images
# success per (attack, ε index) as an offset from the variant's base: monotone, PGD >= FGSM, PGD ≈ 1 at ε = 0.5
BASE = {"baseline": 0.3, "lora_fc": 0.25, "lora_fc_conv1": 0.2}
FGSM_OFFSET = [0.0, 0.2, None]  # None: absolute value below
PGD_OFFSET = [0.1, 0.3, None]
AT_HALF = {"fgsm": 0.9, "pgd": 1.0}
EXPECTED_FIGURES = ["success_rate_fgsm.png", "success_rate_pgd.png", "robustness_vs_eps_fgsm.png",
                    "robustness_vs_eps_pgd.png", "certainty_fgsm.png", "certainty_pgd.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TRAIN_METRICS = {
    "baseline": {"val_accuracy": 0.6123, "holdout_accuracy": 0.6, "trainable_params": 11_279_112,
                 "total_params": 11_279_112, "epochs_run": 5, "train_seconds": 123.45,
                 "images_per_second": 812.0},
    "lora_fc": {"val_accuracy": 0.5871, "holdout_accuracy": 0.58, "trainable_params": 2_848,
                "total_params": 11_279_080, "epochs_run": 7, "train_seconds": 60.0, "images_per_second": 1500.5},
    "lora_fc_conv1": {"val_accuracy": 0.5902, "holdout_accuracy": 0.59, "trainable_params": 3_692,
                      "total_params": 11_279_924, "epochs_run": 7, "train_seconds": 65.0, "images_per_second": 1400.0},
    "pretrained": {"val_accuracy": 0.1},  # trained only, never attacked
}
SPECS = {
    "baseline": {"adaptation": "full", "targets": [], "rank": None, "alpha": None},
    "lora_fc": {"adaptation": "lora", "targets": ["fc"], "rank": 4, "alpha": 1.0},
    "lora_fc_conv1": {"adaptation": "lora", "targets": ["fc", "conv1"], "rank": 4, "alpha": 1.0},
    "pretrained": {"adaptation": "none"},
}
ATTACK_PARAMS = {"n_images": N_IMAGES, "batch_size": 128, "fgsm": {"eps": EPS},
                 "pgd": {"eps": EPS, "steps": 10, "rel_step_size": 0.25, "random_start": True, "restarts": 1},
                 "n_boot": 1000, "seed": 0, "extra_knob": "xyz"}


def success_rate(variant: str, attack: str, i: int) -> float:
    offsets = FGSM_OFFSET if attack == "fgsm" else PGD_OFFSET
    return AT_HALF[attack] if offsets[i] is None else BASE[variant] + offsets[i]


def make_table(eps: list[float] = EPS, overrides: dict[tuple[str, str, int], float] | None = None) -> pd.DataFrame:
    """Tidy attack table for 3 variants × 2 attacks × len(eps); overrides set success at (variant, attack, ε index)."""
    overrides = overrides or {}
    rows = []

    def add(variant: str, attack: str, e: float, metric: str, value: float, n: int) -> None:
        label = f"eps_{round(e * 255)}" if abs(e * 255 - round(e * 255)) < 1e-9 else f"eps_{e:g}"
        rows.append({"variant": variant, "attack": attack, "eps": e, "eps_label": label, "metric": metric,
                     "value": value, "ci_low": max(value - 0.05, 0.0), "ci_high": min(value + 0.05, 1.0), "n": n})

    for variant in VARIANTS:
        for attack in ("fgsm", "pgd"):
            for i, e in enumerate(eps):
                asr = overrides.get((variant, attack, i), success_rate(variant, attack, i))
                add(variant, attack, e, "clean_accuracy", N_CORRECT / N_IMAGES, N_IMAGES)
                add(variant, attack, e, "robust_accuracy", N_CORRECT / N_IMAGES * (1 - asr), N_IMAGES)
                add(variant, attack, e, "attack_success_rate", asr, N_CORRECT)
                add(variant, attack, e, "certainty_clean", 0.8, N_IMAGES)
                add(variant, attack, e, "certainty_adv", 0.8 - 0.5 * asr, N_IMAGES)
                add(variant, attack, e, "certainty_clean_correct", 0.9, N_CORRECT)
                add(variant, attack, e, "certainty_adv_correct", 0.9 - 0.5 * asr, N_CORRECT)
                add(variant, attack, e, "true_class_prob_clean", 0.7, N_IMAGES)
                add(variant, attack, e, "true_class_prob_adv", 0.7 * (1 - asr), N_IMAGES)
    return pd.DataFrame(rows)


def build(tmp_path: Path, table: pd.DataFrame, name: str = "report", **kwargs) -> tuple[Path, str]:
    report = build_report(TRAIN_METRICS, table, ATTACK_PARAMS, tmp_path / name, variant_specs=SPECS, **kwargs)
    return report, report.read_text()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture(scope="module")
def good_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build(tmp_path_factory.mktemp("good"), make_table())


# ----------------------------------------------------------------------------- report content

def test_report_written_with_table1(good_report: tuple[Path, str]) -> None:
    report, text = good_report
    assert report.name == "report.md" and report.is_file()
    assert text.startswith("# Exploring the Robustness of LoRA-Adapted ResNet18")
    assert "## Table 1. Clean accuracy and trainable parameters" in text
    assert ("| baseline | full fine-tuning | 61.2 | 75.0 [70.0, 80.0] | 200 | 60.0 | "
            "11,279,112 (100% of 11,279,112) | 5 |") in text
    assert ("| lora_fc | LoRA r=4, α=1.0 on fc | 58.7 | 75.0 [70.0, 80.0] | 200 | 58.0 | "
            "2,848 (0.0253% of 11,279,080) | 7 |") in text
    assert "| lora_fc_conv1 | LoRA r=4, α=1.0 on fc, conv1 | 59.0 |" in text
    # a trained-but-not-attacked variant is listed with visible gaps, not dropped
    assert "| pretrained | no adaptation (pretrained weights) | 10.0 | — | — | — | — | — |" in text
    assert "| lora_fc | 60.0 | 1500.5 |" in text  # training cost


def test_report_success_robust_and_certainty_tables(good_report: tuple[Path, str]) -> None:
    _, text = good_report
    header = "| Variant | n (correct before) | ε = 2/255 | ε = 8/255 | ε = 0.5 |"
    assert text.count(header) == 2  # FGSM and PGD
    fgsm, pgd = text.split("### FGSM")[1], text.split("### PGD")[1]
    # the trained-only variant stays in Table 1 but out of every attack table
    assert "| pretrained |" not in text.split("## Attack success rate")[1].split("## Attack hyperparameters")[0]
    assert "| baseline | 150 | 30.0 [25.0, 35.0] | 50.0 [45.0, 55.0] | 90.0 [85.0, 95.0] |" in fgsm
    assert "| lora_fc_conv1 | 150 | 30.0 [25.0, 35.0] | 50.0 [45.0, 55.0] | 100.0 [95.0, 100.0] |" in pgd
    # robust accuracy = 0.75·(1 − 0.3) = 52.5% for baseline FGSM at 2/255
    assert "| baseline | 200 | 52.5 [47.5, 57.5] |" in text
    # certainty: before 0.8 / after 0.8 − 0.5·0.5 = 0.55 for baseline FGSM at 8/255
    assert ("| baseline | 8/255 | 0.800 [0.750, 0.850] | 0.550 [0.500, 0.600] | 0.900 [0.850, 0.950] | "
            "0.650 [0.600, 0.700] | 0.700 [0.650, 0.750] | 0.350 [0.300, 0.400] |") in text


def test_report_states_every_hyperparameter(good_report: tuple[Path, str]) -> None:
    _, text = good_report
    params = text.split("## Attack hyperparameters")[1]
    for line in ["n_images: 200", "batch_size: 128", "fgsm:", f"  eps: [{EPS[0]!r}, {EPS[1]!r}, 0.5]", "  steps: 10",
                 "  rel_step_size: 0.25", "  random_start: true", "  restarts: 1", "n_boot: 1000", "seed: 0",
                 'extra_knob: "xyz"']:
        assert line in params.splitlines(), line
    assert "- PGD: ε = 2/255, 8/255, 0.5" in params
    assert "rank: 4" in params  # variant settings printed too


def test_figures_exist_are_png_and_linked_relatively(good_report: tuple[Path, str]) -> None:
    report, text = good_report
    figures = plot_files(report.parent)
    assert [f.name for f in figures] == EXPECTED_FIGURES
    for figure in figures:
        data = figure.read_bytes()
        assert data[:8] == PNG_MAGIC, figure
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width >= 400 and height >= 300 and len(data) > 10_000, (figure, width, height, len(data))
        assert f"](figures/{figure.name})" in text
    assert str(report.parent) not in text  # no absolute paths
    leftovers = [p for p in report.parent.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes left no temp files


def test_certainty_figures_use_median_or_chosen_eps(tmp_path: Path, good_report: tuple[Path, str]) -> None:
    _, text = good_report
    # study ε excludes the ε = 0.5 sanity point; upper median of [2/255, 8/255] is 8/255
    assert "Fig. 3 — model certainty before/after FGSM at ε = 8/255" in text
    assert "Fig. 4 — model certainty before/after PGD at ε = 8/255" in text
    _, chosen = build(tmp_path, make_table(), report_eps=2 / 255)
    assert "Fig. 4 — model certainty before/after PGD at ε = 2/255" in chosen
    with pytest.raises(ValueError, match=r"report_eps 4/255 was not evaluated for fgsm; evaluated ε: 2/255, 8/255"):
        build(tmp_path, make_table(), name="bad", report_eps=4 / 255)


def test_output_is_deterministic(tmp_path: Path, good_report: tuple[Path, str]) -> None:
    report, text = good_report
    again, again_text = build(tmp_path, make_table())
    assert again_text == text
    for first, second in zip(plot_files(report.parent), plot_files(again.parent)):
        assert first.read_bytes() == second.read_bytes(), first.name
    _, stamped = build(tmp_path, make_table(), name="stamped", generated="2024-05-01")
    assert "_Generated: 2024-05-01_" in stamped and "Generated" not in text


def test_plot_files_ignores_stale_pngs_and_needs_a_report(tmp_path: Path, good_report: tuple[Path, str]) -> None:
    report, _ = good_report
    (report.parent / "figures" / "old_plot.png").write_bytes(PNG_MAGIC)
    assert "old_plot.png" not in [f.name for f in plot_files(report.parent)]
    with pytest.raises(FileNotFoundError, match="no report at"):
        plot_files(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- sanity checks

def test_sanity_checks_pass_on_monotone_table(good_report: tuple[Path, str]) -> None:
    checks = sanity_checks(make_table())
    # per variant: PGD ≥ FGSM, monotone × 2 attacks, PGD at ε = 0.5, clean accuracy consistent
    assert len(checks) == 3 * 5
    assert all(c.passed and c.evaluated and c.status == "passed" for c in checks), [c for c in checks if not c.passed]
    _, text = good_report
    assert "All 15 checks passed." in text
    assert "FAILED" not in text and "NOT EVALUATED" not in text


def test_pgd_weaker_than_fgsm_is_flagged(tmp_path: Path) -> None:
    fgsm = success_rate("lora_fc", "fgsm", 1)
    table = make_table(overrides={("lora_fc", "pgd", 1): fgsm - 3 / N_CORRECT})  # 3 images below FGSM
    checks = by_name(sanity_checks(table))
    failed = [c for c in checks.values() if not c.passed]
    assert [c.name for c in failed] == ["lora_fc: PGD success ≥ FGSM success at every shared ε"]
    assert failed[0].status == "FAILED" and "ε=8/255: PGD 43.0% < FGSM 45.0%" in failed[0].detail
    _, text = build(tmp_path, table)
    assert "| **FAILED** | lora_fc: PGD success ≥ FGSM success at every shared ε |" in text
    assert "**1 of 15 checks flagged: 1 FAILED, 0 NOT EVALUATED.**" in text
    # half an image below FGSM is within the stated one-image tolerance
    within = make_table(overrides={("lora_fc", "pgd", 1): fgsm - 0.5 / N_CORRECT})
    assert all(c.passed for c in sanity_checks(within))


def test_success_decreasing_in_eps_is_flagged(tmp_path: Path) -> None:
    table = make_table(overrides={("baseline", "fgsm", 2): 0.4})  # 50% at 8/255 -> 40% at 0.5
    failed = [c for c in sanity_checks(table) if not c.passed]
    assert [c.name for c in failed] == ["baseline/fgsm: success non-decreasing in ε"]
    assert "50.0% at ε=8/255 → 40.0% at ε=0.5" in failed[0].detail
    _, text = build(tmp_path, table)
    assert "| **FAILED** | baseline/fgsm: success non-decreasing in ε |" in text
    # a slow drift (0.8 image per step, 1.6 overall) is caught even though each step is within tolerance
    drift = {("baseline", "fgsm", i): 0.5 - 0.8 * i / N_CORRECT for i in range(3)}
    drift.update({("baseline", "pgd", i): 0.99 + 0.005 * i for i in range(3)})
    failed = [c for c in sanity_checks(make_table(overrides=drift)) if not c.passed]
    assert [c.name for c in failed] == ["baseline/fgsm: success non-decreasing in ε"]


def test_low_success_at_half_is_flagged(tmp_path: Path) -> None:
    table = make_table(overrides={("lora_fc_conv1", "pgd", 2): 0.9})
    failed = [c for c in sanity_checks(table) if not c.passed]
    assert [c.name for c in failed] == ["lora_fc_conv1/pgd: success ≥ 99% at ε = 0.5 (image can turn grey)"]
    assert failed[0].evaluated and "PGD success 90.0% at ε = 0.5 (n = 150)" in failed[0].detail
    _, text = build(tmp_path, table)
    assert "| **FAILED** | lora_fc_conv1/pgd: success ≥ 99% at ε = 0.5" in text


def test_missing_half_is_flagged_not_evaluated(tmp_path: Path) -> None:
    table = make_table(eps=[2 / 255, 4 / 255, 8 / 255])
    checks = sanity_checks(table)
    skipped = [c for c in checks if not c.evaluated]
    assert len(skipped) == 3 and all(not c.passed and c.status == "not evaluated" for c in skipped)
    assert all("ε = 0.5 not evaluated for PGD" in c.detail for c in skipped)
    assert all(c.passed for c in checks if c.evaluated)
    _, text = build(tmp_path, table)
    assert "| **NOT EVALUATED** | baseline/pgd: success ≥ 99% at ε = 0.5" in text
    assert "**3 of 15 checks flagged: 0 FAILED, 3 NOT EVALUATED.**" in text
    assert "model certainty before/after FGSM at ε = 4/255" in text  # median of three study ε


def test_inconsistent_clean_accuracy_is_flagged() -> None:
    table = make_table()
    rows = (table["variant"] == "lora_fc") & (table["attack"] == "pgd") & (table["metric"] == "clean_accuracy")
    table.loc[rows, "value"] = 0.7
    failed = [c for c in sanity_checks(table) if not c.passed]
    assert [c.name for c in failed] == ["lora_fc: clean accuracy identical across attacks and ε"]


# ----------------------------------------------------------------------------- input errors and hygiene

def test_bad_tables_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attack table is missing column.s. variant"):
        sanity_checks(make_table().drop(columns="variant"))
    wrong_units = make_table()
    wrong_units.loc[0, "eps"] = 8.0
    with pytest.raises(ValueError, match=r"eps must be in \[0,1\] pixel units, got 8 .*pass k/255, not k"):
        build(tmp_path, wrong_units)
    table = make_table()
    with pytest.raises(ValueError, match=r"attack table has 2 rows for .*baseline, fgsm, 2/255, clean_accuracy"):
        sanity_checks(pd.concat([table, table.iloc[:1]]))
    with pytest.raises(ValueError, match="attack table is empty"):
        sanity_checks(table.iloc[:0])
    assert not (tmp_path / "report").exists() or not (tmp_path / "report" / "report.md").exists()


def test_format_eps() -> None:
    assert [format_eps(e) for e in (0.0, 2 / 255, 8 / 255, 0.5, 1.0, 1 / 510)] == [
        "0/255", "2/255", "8/255", "0.5", "255/255", "0.001961"]


def test_import_leaves_pyplot_and_backend_alone() -> None:
    # read rcParams raw: matplotlib.get_backend() may itself resolve the backend via pyplot
    code = ("import matplotlib; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); before = raw(); "
            "import sys, robustlora.report; print('matplotlib.pyplot' in sys.modules, raw() == before)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "True"]
