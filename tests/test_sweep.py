"""The sweep report (robustlora.reporting.sweep*): records, Pareto front, table, markdown, figures, written files."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustlora.errors import DataError
from robustlora.reporting.figures import arm_colors
from robustlora.reporting.sweep import render_sweep, write_sweep
from robustlora.reporting.sweep_figures import pareto_figure, rank_figure, write_sweep_figures
from robustlora.reporting.sweep_records import (METRICS, RECORD_COLUMNS, swept_assignments, swept_text,
                                                validate_records)
from robustlora.reporting.sweep_table import (distinct_points, eps_values, pareto_front, sweep_table,
                                              unsuccessful_experiments)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")
RANKS = (2, 4, 16)  # 16 after 4: a string sort would put it first
# (clean, PGD robust) per LoRA arm and rank; the front is every row except lora_fc_conv1 at rank 2, which
# lora_fc_conv1 at rank 4 dominates (same robust accuracy, higher clean), and pretrained (baseline beats it)
POINTS = {("lora_fc", 2): (0.81, 0.20), ("lora_fc", 4): (0.82, 0.18), ("lora_fc", 16): (0.83, 0.15),
          ("lora_fc_conv1", 2): (0.85, 0.12), ("lora_fc_conv1", 4): (0.86, 0.12),
          ("lora_fc_conv1", 16): (0.88, 0.05)}
OOM_TAIL = ("Traceback (most recent call last):\n  File \"train.py\", line 12\n"
            "torch.OutOfMemoryError: CUDA out of memory")
FENCE_TAIL = "error in params.yaml:\n```yaml\nlr: -1\n```\nValueError: train.lr must be > 0"


def metric(value: float, lo: float | None = None, hi: float | None = None) -> dict[str, float]:
    return {"": value, "_lo": value - 0.03 if lo is None else lo, "_hi": value + 0.03 if hi is None else hi}


def record(experiment: str, swept: str, arm: str, *, status: str = "success", rank: float = NAN,
           targets: str = "", params: float = NAN, clean: float = NAN, robust: float = NAN,
           asr: dict[str, float] | None = None, fgsm: float = NAN, autoattack: float = NAN, eps_255: float = 8.0,
           log_tail: str = "") -> dict[str, Any]:
    """One (experiment, arm) row of the input contract; shares in [0,1]."""
    adaptation = "" if not arm else "lora" if np.isfinite(rank) else "none" if arm == "pretrained" else "full"
    row: dict[str, Any] = {"experiment": experiment, "rev": "0123456789abcdef" if status == "success" else "",
                           "status": status, "swept": swept, "log_tail": log_tail, "arm": arm,
                           "adaptation": adaptation, "rank": rank, "alpha": 2 * rank, "targets": targets,
                           "trainable_params": params, "n_seeds": 3 if arm else NAN, "eps_255": eps_255,
                           "val_acc": clean + 0.01 if np.isfinite(clean) else NAN, "val_acc_lo": NAN,
                           "val_acc_hi": NAN}
    asr = asr or (metric(1 - robust / clean) if np.isfinite(clean) else metric(NAN))
    for name, values in (("clean_acc", metric(clean)), ("pgd_robust_acc", metric(robust)), ("pgd_asr", asr),
                         ("fgsm_asr", metric(fgsm)), ("autoattack_robust_acc", metric(autoattack))):
        for suffix, v in values.items():
            row[name + suffix] = min(max(v, 0.0), 1.0) if np.isfinite(v) else NAN
    return row


def rank_sweep(*, autoattack: bool = False) -> pd.DataFrame:
    """A rank sweep: 3 successful experiments x 4 arms, two failed, one queued, one running."""
    rows = []
    for r in RANKS:
        exp, swept = f"exp-r{r}", f"lora.rank={r}"
        rows.append(record(exp, swept, "baseline", params=11_181_642, clean=0.90, robust=0.02, fgsm=0.70,
                           autoattack=0.01 if autoattack else NAN))
        rows.append(record(exp, swept, "pretrained", params=0, clean=0.70, robust=0.0, fgsm=NAN))
        for arm, targets, per_rank in (("lora_fc", "fc", 5_130), ("lora_fc_conv1", "fc+conv1", 7_000)):
            clean, robust = POINTS[(arm, r)]
            asr = metric(0.452, 0.393, 0.512) if (arm, r) == ("lora_fc", 16) else None
            rows.append(record(exp, swept, arm, rank=r, targets=targets, params=per_rank * r, clean=clean,
                               robust=robust, asr=asr, fgsm=0.6, autoattack=robust - 0.01 if autoattack else NAN))
    rows.append(record("exp-r32", "lora.rank=32", "", status="failed", log_tail=OOM_TAIL))
    rows.append(record("exp-lr", "train.lr=-1", "", status="failed", log_tail=FENCE_TAIL))
    rows.append(record("exp-r64", "lora.rank=64", "", status="queued"))
    rows.append(record("exp-r128", "lora.rank=128", "", status="running"))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # the table must not depend on the input order


def target_sweep() -> pd.DataFrame:
    """A sweep over lora_fc's target sets at one rank: nothing to plot against rank."""
    rows = [record("exp-t-fc", "variants.lora_fc.targets=fc", "lora_fc", rank=8, targets="fc", params=4_104,
                   clean=0.80, robust=0.10),
            record("exp-t-l4", "variants.lora_fc.targets=layer4", "lora_fc", rank=8, targets="layer4",
                   params=90_000, clean=0.86, robust=0.08),
            record("exp-t-all", "variants.lora_fc.targets=all_convs", "lora_fc", rank=8, targets="all_convs",
                   params=300_000, clean=0.89, robust=0.04)]
    return pd.DataFrame(rows)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The first markdown table as dicts keyed by header."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    header, body = split[0], split[2:]
    assert set(split[1]) == {"---"}
    return [dict(zip(header, row)) for row in body]


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1).strip()


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return rank_sweep()


@pytest.fixture(scope="module")
def table(records: pd.DataFrame) -> pd.DataFrame:
    return sweep_table(records)


@pytest.fixture(scope="module")
def markdown(records: pd.DataFrame, table: pd.DataFrame) -> str:
    figures = {"rank": Path("/elsewhere/metrics_vs_rank.png"), "pareto": Path("/elsewhere/pareto.png")}
    return render_sweep(table, unsuccessful_experiments(records), figures)


# ----------------------------------------------------------------------------- pareto_front

def test_pareto_front_known_answer_with_ties_and_nan() -> None:
    points = pd.DataFrame({
        "acc": [0.90, 0.80, 0.70, 0.80, NAN, 0.90, 0.60, 0.75, 0.50],
        "rob": [0.10, 0.30, 0.20, 0.30, 0.90, 0.05, NAN, 0.30, 0.30],
    }, index=[10, 11, 12, 13, 14, 15, 16, 17, 18])
    front = pareto_front(points, x="acc", y="rob")
    # 11 and 13 tie (neither dominates the other); 12 is below them; 15 has 10's accuracy but less robustness;
    # 17 and 18 match 11's robustness with less accuracy; NaN rows (14, 16) are neither on it nor dominate anyone
    expected = {10: True, 11: True, 12: False, 13: True, 14: False, 15: False, 16: False, 17: False, 18: False}
    assert front.dtype == bool
    assert list(front.index) == list(points.index)
    assert front.to_dict() == expected


def test_pareto_front_edge_cases() -> None:
    assert pareto_front(pd.DataFrame({"clean_acc": [], "pgd_robust_acc": []})).empty
    one = pd.DataFrame({"clean_acc": [0.5], "pgd_robust_acc": [0.1]})
    assert pareto_front(one).tolist() == [True]
    same = pd.DataFrame({"clean_acc": [0.5, 0.5, 0.5], "pgd_robust_acc": [0.1, 0.1, 0.1]})
    assert pareto_front(same).tolist() == [True, True, True]
    all_nan = pd.DataFrame({"clean_acc": [NAN, 0.4], "pgd_robust_acc": [0.3, NAN]})
    assert pareto_front(all_nan).tolist() == [False, False]


# ----------------------------------------------------------------------------- validate_records

def test_validate_records_names_the_first_missing_column(records: pd.DataFrame) -> None:
    validate_records(records)
    with pytest.raises(DataError, match="lack column 'pgd_asr_hi'") as err:
        validate_records(records.drop(columns=["pgd_asr_hi"]))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="lack column 'targets'"):
        validate_records(records.drop(columns=["fgsm_asr", "targets"]))  # targets comes first in the contract


def test_validate_records_refuses_silently_wrong_values(records: pd.DataFrame) -> None:
    percent = records.copy()
    percent["clean_acc"] = 100 * percent["clean_acc"]
    with pytest.raises(DataError, match=r"clean_acc.*\[0,1\], not in %"):
        validate_records(percent)
    status = records.copy()
    status.loc[status["experiment"] == "exp-r64", "status"] = "Queued"
    with pytest.raises(DataError, match="exp-r64.*'Queued'"):
        validate_records(status)
    text = records.copy().astype({"rank": object})
    text.loc[text.index[0], "rank"] = "eight"
    with pytest.raises(DataError, match="'rank'.*'eight'"):
        validate_records(text)
    twice = pd.concat([records, records[records["experiment"] == "exp-r4"].head(1)])
    with pytest.raises(DataError, match="exp-r4.*twice"):
        validate_records(twice)


# ----------------------------------------------------------------------------- sweep_table

def test_sweep_table_keeps_successful_rows_sorted(table: pd.DataFrame) -> None:
    assert set(table["status"]) == {"success"}
    assert len(table) == 12
    order = [(arm, None if math.isnan(r) else int(r), e)
             for arm, r, e in zip(table["arm"], table["rank"], table["experiment"])]
    expected = ([("baseline", None, e) for e in ("exp-r16", "exp-r2", "exp-r4")]
                + [(arm, r, f"exp-r{r}") for arm in ("lora_fc", "lora_fc_conv1") for r in RANKS]
                + [("pretrained", None, e) for e in ("exp-r16", "exp-r2", "exp-r4")])
    assert order == expected
    assert list(table.index) == list(range(12))
    assert set(RECORD_COLUMNS) < set(table.columns)
    unknown_size = rank_sweep().assign(trainable_params=NAN)  # rank alone must give the order, numerically
    assert sweep_table(unknown_size).loc[lambda t: t["arm"] == "lora_fc", "rank"].tolist() == [2.0, 4.0, 16.0]


def test_sweep_table_marks_the_front_per_experiment_and_arm(table: pd.DataFrame) -> None:
    assert table["pareto"].dtype == bool
    off = {(a, None if math.isnan(r) else int(r)) for a, r, p in zip(table["arm"], table["rank"], table["pareto"])
           if not p}
    assert off == {("lora_fc_conv1", 2), ("pretrained", None)}
    assert table.loc[table["arm"] == "baseline", "pareto"].tolist() == [True] * 3  # identical points tie


def test_unsuccessful_experiments_lists_each_once_failed_first(records: pd.DataFrame) -> None:
    rest = unsuccessful_experiments(records)
    assert list(rest["experiment"]) == ["exp-lr", "exp-r32", "exp-r128", "exp-r64"]
    assert list(rest["status"]) == ["failed", "failed", "running", "queued"]
    assert rest.loc[rest["experiment"] == "exp-r32", "log_tail"].item() == OOM_TAIL


def test_distinct_points_merge_an_unchanged_arm_across_experiments(table: pd.DataFrame) -> None:
    points = distinct_points(table)
    assert len(points) == 8  # 2 LoRA arms x 3 ranks, baseline and pretrained once each
    baseline = points[points["arm"] == "baseline"].iloc[0]
    assert baseline["experiments"] == ("exp-r16", "exp-r2", "exp-r4") and bool(baseline["pareto"])
    lora = points[points["arm"] == "lora_fc"]
    assert [e for (e,) in lora["experiments"]] == ["exp-r2", "exp-r4", "exp-r16"]
    assert points["pareto"].dtype == bool and int(points["pareto"].sum()) == 6


def test_eps_values_are_distinct_sorted_and_skip_missing() -> None:
    frame = pd.DataFrame({"eps_255": [8.0, NAN, 4.0, 8.0, 8.000000000000002]})
    assert eps_values(frame) == [4.0, 8.0]
    assert eps_values(pd.DataFrame({"eps_255": [NAN]})) == []


def test_swept_text_and_assignments_round_trip() -> None:
    changed = {"lora.rank": "8", "lora.alpha": "16", "variants.lora_fc.targets": "fc,conv1"}
    text = swept_text(changed)
    assert text == "lora.alpha=16, lora.rank=8, variants.lora_fc.targets=fc,conv1"  # keys sorted
    assert dict(swept_assignments(text)) == changed  # a comma inside a value stays in the value
    assert swept_assignments("lora.rank=8,lora.alpha=16") == [("lora.rank", "8"), ("lora.alpha", "16")]
    assert swept_assignments("") == [] and swept_text({}) == ""


# ----------------------------------------------------------------------------- markdown

def test_render_summary_counts_swept_values_and_eps(markdown: str) -> None:
    assert markdown.startswith("# Sweep report\n\n")
    summary = markdown.split("\n\n")[1]
    assert "7 experiments: 3 succeeded, 2 failed, 1 still queued, 1 running (see Failed experiments)." in summary
    assert "lora.rank ∈ {2, 4, 16, 32, 64, 128}" in summary  # numeric order, failed and pending included
    assert "train.lr ∈ {-1}" in summary
    assert "ε = 8/255" in summary
    assert "12 rows (experiment × arm, 8 distinct points), 6 on the accuracy-robustness Pareto front" in summary
    assert "Not evaluated in any experiment: AutoAttack robust accuracy." in summary


def test_render_table_formats_intervals_and_marks_the_front(markdown: str, table: pd.DataFrame) -> None:
    rows = table_rows(markdown)
    assert len(rows) == len(table)
    assert list(rows[0])[:7] == ["Experiment", "Swept", "Arm", "Targets", "Rank", "Trainable params", "Seeds"]
    assert not any("AutoAttack" in h for h in rows[0])  # all-NaN metric: no column, said in the summary
    by_key = {(r["Arm"], r["Experiment"]): r for r in rows}
    top = by_key[("lora_fc", "exp-r16")]
    assert top["PGD attack success rate (%) [95% CI]"] == "45.2 [39.3, 51.2]"
    assert top["clean accuracy (%) [95% CI]"] == "83.0 [80.0, 86.0]"
    assert top["val accuracy (%) [95% CI]"] == "84.0"  # no interval reported: the value alone
    assert (top["Rank"], top["Trainable params"], top["Seeds"], top["Swept"]) == ("16", "82,080", "3",
                                                                                  "lora.rank=16")
    assert by_key[("baseline", "exp-r2")]["Rank"] == "—"
    assert by_key[("pretrained", "exp-r2")]["FGSM attack success rate (%) [95% CI]"] == "—"
    assert by_key[("pretrained", "exp-r2")]["PGD robust accuracy (%) [95% CI]"] == "0.0 [0.0, 3.0]"
    marks = {k: r["Pareto"] for k, r in by_key.items()}
    assert marks[("lora_fc_conv1", "exp-r2")] == "" and marks[("pretrained", "exp-r4")] == ""
    assert sum(m == "✓" for m in marks.values()) == 8


def test_render_lists_the_front_once_per_distinct_point(markdown: str) -> None:
    front = section(markdown, "Pareto front")
    items = [line for line in front.splitlines() if line.startswith("- ")]
    assert len(items) == 6
    assert items[0] == ("- **baseline**, experiments `exp-r16`, `exp-r2`, `exp-r4`: clean accuracy 90.0 [87.0, "
                        "93.0] %, PGD robust accuracy 2.0 [0.0, 5.0] %")  # highest clean accuracy first
    assert items[-1] == ("- **lora_fc** (targets fc, rank 2), experiment `exp-r2` (lora.rank=2): clean accuracy "
                         "81.0 [78.0, 84.0] %, PGD robust accuracy 20.0 [17.0, 23.0] %")
    assert "lora_fc_conv1** (targets fc+conv1, rank 2" not in front


def test_render_lists_every_failed_experiment_with_its_log_tail(markdown: str) -> None:
    failed = section(markdown, "Failed experiments")
    assert "### `exp-r32`, lora.rank=32\n\n```text\n" + OOM_TAIL + "\n```" in failed
    # a tail with its own ``` fence is wrapped in a longer fence, so it cannot end the block early
    assert "### `exp-lr`, train.lr=-1\n\n````text\n" + FENCE_TAIL + "\n````" in failed
    pending = section(markdown, "Queued or running experiments")
    assert pending.splitlines() == ["- `exp-r128`: running, lora.rank=128", "- `exp-r64`: queued, lora.rank=64"]


def test_render_figures_and_how_to_read(markdown: str) -> None:
    figures = section(markdown, "Figures")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", figures)
    assert links == ["figures/metrics_vs_rank.png", "figures/pareto.png"]  # relative to the page
    note = section(markdown, "How to read")
    assert "95 % hierarchical-bootstrap intervals over training seeds and images" in note
    assert "whose intervals overlap are not established" in note


def test_render_says_none_when_nothing_failed() -> None:
    records = target_sweep()
    text = render_sweep(sweep_table(records), unsuccessful_experiments(records), {})
    assert section(text, "Failed experiments") == "none"
    assert section(text, "Queued or running experiments") == "none"
    assert section(text, "Figures").startswith("None")
    assert "3 experiments: 3 succeeded, 0 failed, 0 still queued, 0 running." in text
    assert "variants.lora_fc.targets ∈ {all_convs, fc, layer4}" in text


def test_render_without_any_success_still_lists_failures() -> None:
    records = rank_sweep()
    records = records[records["status"] != "success"]
    text = render_sweep(sweep_table(records), unsuccessful_experiments(records), {})
    assert "No experiment succeeded." in text
    assert "`exp-r32`" in section(text, "Failed experiments") and "`exp-lr`" in text
    assert "0 succeeded, 2 failed" in text


# ----------------------------------------------------------------------------- figures

@pytest.fixture(scope="module")
def written(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sweep_figures(table, tmp_path_factory.mktemp("figures"))


def test_figures_are_deterministic_pngs(table: pd.DataFrame, written: dict[str, Path], tmp_path: Path) -> None:
    again = write_sweep_figures(table, tmp_path)
    assert list(written) == ["rank", "params", "targets", "pareto"]
    for key, path in written.items():
        width, height = png_size(path)
        assert width > 300 and height > 200
        assert path.read_bytes() == again[key].read_bytes(), key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_autoattack_adds_a_panel() -> None:
    colors = arm_colors(["baseline", "lora_fc", "lora_fc_conv1", "pretrained"])
    without = rank_figure(sweep_table(rank_sweep()), colors)
    with_aa = rank_figure(sweep_table(rank_sweep(autoattack=True)), colors)
    assert (len(without.axes), len(with_aa.axes)) == (3, 4)
    assert with_aa.axes[3].get_ylabel().startswith("AutoAttack robust accuracy (%)")


def test_rank_figure_draws_lora_lines_and_reference_bands(table: pd.DataFrame) -> None:
    fig = rank_figure(table, arm_colors(sorted(set(table["arm"]))))
    ax = fig.axes[0]  # clean accuracy
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["baseline (no LoRA)", "lora_fc · fc", "lora_fc_conv1 · fc+conv1",
                              "pretrained (no LoRA)"]  # the baseline once, not once per experiment
    series = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(series["lora_fc · fc"].get_xdata(), RANKS)
    np.testing.assert_allclose(series["lora_fc · fc"].get_ydata(), [81, 82, 83])
    np.testing.assert_allclose(series["lora_fc_conv1 · fc+conv1"].get_ydata(), [85, 86, 88])
    np.testing.assert_allclose(lines["baseline (no LoRA)"].get_ydata(), [90, 90])
    assert [float(t) for t in ax.get_xticks()] == list(RANKS)


def test_rank_figure_splits_lines_by_alpha_when_ranks_repeat() -> None:
    rows = [record(f"exp-{r}-{a}", f"lora.rank={r},lora.alpha={a}", "lora_fc", rank=r, targets="fc", params=100 * r,
                   clean=0.5 + r / 100 + a / 1000, robust=0.1) for r in (4, 8) for a in (4, 16)]
    frame = pd.DataFrame(rows)
    frame["alpha"] = [4.0, 16.0, 4.0, 16.0]
    fig = rank_figure(sweep_table(frame), {"lora_fc": "C0"})
    assert fig.axes[0].get_legend_handles_labels()[1] == ["lora_fc · fc · α=4", "lora_fc · fc · α=16"]
    assert "lora.alpha ∈ {4, 16}" in render_sweep(sweep_table(frame), unsuccessful_experiments(frame), {})


def test_pareto_figure_joins_the_front_by_a_step_line(table: pd.DataFrame) -> None:
    fig = pareto_figure(table, arm_colors(sorted(set(table["arm"]))))
    (step,) = [line for line in fig.axes[0].lines if line.get_label() == "Pareto front"]
    # through the front points by clean accuracy; 'pre': from each point down, then across to the next, which
    # traces the edge of the region the front dominates
    np.testing.assert_allclose(step.get_xdata(), [81, 82, 83, 86, 88, 90])
    np.testing.assert_allclose(step.get_ydata(), [20, 18, 15, 12, 5, 2])
    assert step.get_drawstyle() == "steps-pre"
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == sorted(["baseline", "pretrained", "lora_fc · rank=2", "lora_fc · rank=4", "lora_fc · rank=16",
                             "lora_fc_conv1 · rank=2", "lora_fc_conv1 · rank=4", "lora_fc_conv1 · rank=16"])


def test_figures_with_nothing_to_show_are_skipped(tmp_path: Path) -> None:
    one_rank = write_sweep_figures(sweep_table(target_sweep()), tmp_path / "t")
    assert list(one_rank) == ["params", "targets", "pareto"]  # a single rank: nothing to plot against rank
    assert not (tmp_path / "t" / "metrics_vs_rank.png").exists()
    single = sweep_table(target_sweep().head(1))
    assert write_sweep_figures(single, tmp_path / "s") == {}
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


# ----------------------------------------------------------------------------- write_sweep

def test_write_sweep_writes_csv_markdown_and_removes_stale_figures(records: pd.DataFrame, tmp_path: Path) -> None:
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    (figures_dir / "old_figure.png").write_bytes(PNG_MAGIC)
    (figures_dir / "notes.txt").write_text("not ours")
    paths = write_sweep(records, tmp_path)
    names = ["metrics_vs_rank.png", "metrics_vs_trainable_params.png", "metrics_per_target_set.png", "pareto.png"]
    assert paths == {"sweep.csv": tmp_path / "sweep.csv", "sweep.md": tmp_path / "sweep.md"} | {
        f"figures/{n}": figures_dir / n for n in names}
    assert sorted(p.name for p in figures_dir.glob("*.png")) == sorted(names)
    assert (figures_dir / "notes.txt").exists()  # only PNGs are ours to remove
    csv = pd.read_csv(paths["sweep.csv"], keep_default_na=False, na_values=[""])
    expected = sweep_table(records)
    assert list(csv.columns) == list(expected.columns)
    assert list(csv["experiment"]) == list(expected["experiment"])
    assert csv["pareto"].tolist() == expected["pareto"].tolist()
    np.testing.assert_allclose(csv["pgd_asr"].to_numpy(float), expected["pgd_asr"].to_numpy(float))
    text = paths["sweep.md"].read_text()
    figure_keys = {"metrics_vs_rank.png": "rank", "metrics_vs_trainable_params.png": "params",
                   "metrics_per_target_set.png": "targets", "pareto.png": "pareto"}
    assert text == render_sweep(expected, unsuccessful_experiments(records),
                                {figure_keys[p.name]: p for k, p in paths.items() if k.startswith("figures/")})
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (tmp_path / link).is_file()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind

    # the next sweep has a single rank: the rank figure of the previous run must go
    again = write_sweep(target_sweep(), tmp_path)
    assert not (figures_dir / "metrics_vs_rank.png").exists()
    assert sorted(p.name for p in figures_dir.glob("*.png")) == sorted(
        p.name for k, p in again.items() if k.startswith("figures/"))
    assert "figures/metrics_per_target_set.png" in again
    assert "metrics_vs_rank" not in again["sweep.md"].read_text()


def test_write_sweep_validates_first(records: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'experiment'"):
        write_sweep(records.drop(columns=["experiment"]), tmp_path)
    assert not any(tmp_path.iterdir())


def test_metrics_cover_the_contract() -> None:
    assert list(METRICS) == ["val_acc", "clean_acc", "pgd_robust_acc", "pgd_asr", "fgsm_asr",
                             "autoattack_robust_acc"]
    assert METRICS["pgd_asr"] == "PGD attack success rate"
    assert all(f"{m}_lo" in RECORD_COLUMNS and f"{m}_hi" in RECORD_COLUMNS for m in METRICS)


def test_records_with_missing_values_as_none_and_extra_columns(tmp_path: Path) -> None:
    records = rank_sweep().astype({"rank": object, "arm": object, "log_tail": object})
    failed = records["status"] != "success"
    records.loc[failed, "arm"] = None
    records.loc[records["arm"] == "baseline", "rank"] = None
    records.loc[records["experiment"] == "exp-r64", "log_tail"] = None
    records["baseline"] = "main"  # a column the contract does not name is kept, not refused
    table = sweep_table(records)
    assert table["rank"].dtype == float and table.loc[table["arm"] == "baseline", "rank"].isna().all()
    assert table["baseline"].eq("main").all()
    rest = unsuccessful_experiments(records)
    assert rest.loc[rest["experiment"] == "exp-r64", "log_tail"].item() == ""
    assert "### `exp-r32`" in render_sweep(table, rest, {})
