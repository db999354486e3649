"""The report's Defences section: adversarial fine-tuning, feature squeezing, dynamic adapter switching, as markdown
and one clean-vs-robust trade-off figure.

Pure functions of robustlora.analysis.Defences (the numbers) and robustlora.formatting (how they are written):
shares in % as 'value [95 % CI]', differences in signed percentage points, ε as k/255; each table is its own Holm
family, and 'What this shows' repeats only what a table's verdicts say — including, for the switching system, when
one adapter alone dominates it (robustlora.analysis.switching.switching_dominance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robustlora.analysis import ATTACK_NAMES, Defences, Settings, lookup_key, row_index
from robustlora.analysis.switching import switching_dominance
from robustlora.formatting import (MISSING, difference_cell, eps_key, format_eps, format_p, format_pct, interval_cell,
                                   md_table, p_phrase)
from robustlora.reporting.figures import arm_colors, new_figure, save_figure

__all__ = ["SQUEEZE_ATTACKS", "SWITCHING_ATTACKS", "format_bytes", "defences_section", "tradeoff_figure",
           "write_defence_figures"]

SQUEEZE_ATTACKS = {**ATTACK_NAMES, "adaptive": "adaptive (BPDA, knows squeezers and threshold)"}
SWITCHING_ATTACKS = {"pgd_standard": "PGD on the standard adapter (switching unknown)",
                     "pgd_robust": "PGD on the robust adapter", "adaptive_evade": "BPDA evading the detector",
                     "pgd_system": "PGD through the system (route recomputed per step)",
                     "worst": "worst case over the adaptive attacks"}
_MARKERS = {"arm": ("o", True), "adversarial": ("s", True), "squeeze": ("D", False), "switching": ("*", True)}


def _ci(r: Any) -> str:
    """'89.5 [87.1, 91.6]' (%) from a row with value / ci_low / ci_high; '—' for none."""
    return MISSING if r is None else interval_cell(r.value, r.ci_low, r.ci_high)


def _said(name: str, r: Any) -> str:
    """'<name> higher: +12.3 [+8.0, +16.5] points, Holm p < 0.001' for a row of a comparison table."""
    return f"{name} {r.verdict}: {difference_cell(r.diff, r.ci_low, r.ci_high)} points, {p_phrase('Holm p', r.p_holm)}"


def _gain(r: Any, name: str) -> str:
    """A squeeze verdict row's gain ('nonadaptive' / 'adaptive') in points with its CI."""
    return difference_cell(getattr(r, f"gain_{name}"), getattr(r, f"gain_{name}_lo"), getattr(r, f"gain_{name}_hi"))


def _quantity(q: str, eps: float) -> str:
    name = {"pgd_robust_accuracy": "PGD robust accuracy", "autoattack_robust_accuracy": "AutoAttack robust accuracy"}
    name = name.get(q, q.replace("_", " "))
    return name if not np.isfinite(eps) else f"{name} at ε = {format_eps(eps)}"


def _adversarial_md(d: Defences, settings: Settings) -> tuple[list[str], list[str]]:
    if not d.at_arms:
        return ["Not evaluated: no variant is adversarially trained. Add one with `variants.<name>.adversarial` in "
                "params.yaml (method pgd or trades, eps, steps, step size) and name its standard twin."], []
    t, at = d.adversarial, {a.name: a for a in d.at_arms}
    idx = row_index(t, ["arm", "quantity", "attack", "eps"])
    cols = list(dict.fromkeys((q, a, e) for q, a, e in zip(t["quantity"], t["attack"], t["eps"])
                              if q in ("pgd_robust_accuracy", "autoattack_robust_accuracy")))
    cols.sort(key=lambda c: (c[0] != "pgd_robust_accuracy", c[2]))
    rows = []
    for arm in dict.fromkeys(t["arm"]):
        params, secs = idx.get((arm, "trainable_params", "", None)), idx.get((arm, "train_seconds", "", None))
        mark = eps_key(at[arm].eps) if arm in at else None
        rows.append([arm, at[arm].label if arm in at else "standard", f"{int(params.value):,}" if params else MISSING,
                     f"{secs.value:,.1f} [{secs.ci_low:,.1f}, {secs.ci_high:,.1f}]" if secs else MISSING,
                     _ci(idx.get((arm, "clean_accuracy", "", None)))]
                    + [_ci(idx.get((arm, q, a, lookup_key(e)))) + (" †" if q.startswith("pgd") and e == mark else "")
                       for q, a, e in cols])
    header = (["Arm", "Training", "Trainable params", "Training time (s/seed) [min, max]", "Clean acc. (%)"]
              + [f"{'PGD' if q.startswith('pgd') else 'AutoAttack'} robust acc. (%), ε = {format_eps(e)}"
                 for q, _, e in cols])
    parts = ["Accuracies: mean over seeds [95% CI] on the attacked images (AutoAttack: its first images). † the "
             "arm's training ε. Training time: wall-clock seconds per run, mean over seeds [min, max over seeds].",
             md_table(header, rows)]
    diffs = d.differences
    if diffs.empty:
        return parts + ["No adversarially trained arm names a standard twin, so no difference is tested."], []
    parts += [f"Adversarially trained minus standard twin, percentage points on the same images [95% paired CI]; "
              f"p: exact McNemar on per-image majority votes; Holm over the {len(diffs)} rows; 'higher'/'lower' "
              f"needs the CI to exclude 0 and Holm p < {settings.alpha:g}.",
              md_table(["Arm", "Twin", "Quantity", "Difference (points) [95% CI]", "p", "Holm p", "n images",
                        "Verdict"],
                       [[r.arm, r.standard, _quantity(r.quantity, r.eps), difference_cell(r.diff, r.ci_low, r.ci_high),
                         format_p(r.p), format_p(r.p_holm), str(r.n_images), r.verdict] for r in diffs.itertuples()])]
    shows = []
    for arm, g in diffs.groupby("arm", sort=False):
        train_eps = eps_key(at[arm].eps)
        said = [_said(_quantity(r.quantity, r.eps), r) for r in g.itertuples() if r.verdict != "not evaluated"
                and (r.quantity != "pgd_robust_accuracy" or r.eps == train_eps)]
        shows.append(f"Adversarial fine-tuning, {arm} vs its standard twin {g['standard'].iloc[0]}: "
                     + ("; ".join(said) if said else "not evaluated (an arm has no attack results)") + ".")
    return parts, shows


def _squeeze_md(d: Defences, settings: Settings) -> tuple[list[str], list[str]]:
    if d.squeeze.empty:
        return ["Not evaluated: no squeezing results. Enable the detector with the `squeeze` section of params.yaml "
                "(squeezers, holdout FPR, attacks)."], []
    t, quantities = d.squeeze, ("clean_fpr", "detection_rate", "robust_accuracy", "detector_robust_accuracy",
                                "detector_clean_accuracy")
    idx = row_index(t, ["variant", "attack", "eps", "quantity"])
    rows = [[v, SQUEEZE_ATTACKS.get(a, a), format_eps(e)] + [_ci(idx.get((v, a, lookup_key(e), q))) for q in quantities]
            for v, a, e in dict.fromkeys(zip(t["variant"], t["attack"], t["eps"]))]
    parts = [md_table(["Arm", "Attack", "ε", "Clean FPR (%)", "Detection rate (%)", "Robust acc. alone (%)",
                       "Robust acc. with detector (%)", "Clean acc. with detector (%)"], rows),
             "Mean over seeds [95% CI]. Detection rate: flagged among each seed's successful adversarial examples. "
             "With detector: an attacked input counts as defended when still correct or rejected; a rejected clean "
             "input counts as an error."]
    if len(th := d.squeeze_thresholds):
        fpr = "; ".join(f"{r.variant} {format_pct(r.holdout_fpr)} % (seeds {format_pct(r.holdout_fpr_min)}–"
                        f"{format_pct(r.holdout_fpr_max)} %)" for r in th.itertuples())
        parts.append(f"The threshold was fitted per seed on clean holdout images at the FPR stated above; FPR "
                     f"measured on that holdout: {fpr}; on the val images: the clean FPR column.")
    v = d.squeeze_verdicts
    if v.empty:
        return parts + ["No verdict: the adaptive attack did not run at any PGD ε (add 'adaptive' to the squeeze "
                        "attacks)."], []
    parts += [f"Gain of the detector in robust accuracy (points, same seeds and images, 95% CI) against PGD and "
              f"against the adaptive attack, both relative to the classifier alone under PGD. Holm over the "
              f"{2 * len(v)} gains; a gain counts when its CI lies above 0 and Holm p < {settings.alpha:g}. Verdict: "
              "'survives the adaptive attack' if the adaptive gain counts; 'only against non-adaptive attacks' if "
              "only the PGD gain counts; 'no gain' if neither gain is above 0 (the detector made no image robust; "
              "the CI still shows the gain these images cannot rule out); else 'inconclusive'.",
              md_table(["Arm", "ε", "Gain vs PGD [95% CI]", "Holm p", "Gain vs adaptive [95% CI]", "Holm p",
                        "Verdict"],
                       [[r.variant, format_eps(r.eps), _gain(r, "nonadaptive"), format_p(r.p_holm_nonadaptive),
                         _gain(r, "adaptive"), format_p(r.p_holm_adaptive), f"**{r.verdict}**"]
                        for r in v.itertuples()])]
    shows = [f"Feature squeezing on {r.variant} at ε = {format_eps(r.eps)}: {r.verdict} — the detector adds "
             f"{_gain(r, 'nonadaptive')} points of robust accuracy against PGD "
             f"({p_phrase('Holm p', r.p_holm_nonadaptive)}) and {_gain(r, 'adaptive')} against the adaptive attack "
             f"({p_phrase('Holm p', r.p_holm_adaptive)})." for r in v.itertuples()]
    return parts, shows


def _ms(cost: Mapping[str, Any], key: str) -> str:
    """Seconds per batch as 'median [q05, q95]' in ms; a bare float (one mean, older outputs) says so."""
    s = cost[key]
    if not isinstance(s, Mapping):
        return f"{1000 * float(s):.2f} (mean, no spread measured)"
    return f"{1000 * s['median']:.2f} [{1000 * s['q05']:.2f}, {1000 * s['q95']:.2f}]"


def format_bytes(n: float) -> str:
    """'42.7 MiB', '11.5 KiB' (an adapter is far below a MiB)."""
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _cost_md(cost: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    if not cost:
        return ["No serving-cost measurement (the switching stage's cost output is missing)."], []
    n, full = int(cost.get("n_adapters", 2)), cost.get("full_models_bytes")
    ways = {"switch_s": ("switch adapters on one backbone", cost.get("bank_bytes")),
            "merged_s": (f"hold {n} merged models", full),
            "reload_s": ("reload a full state_dict from memory", cost.get("reload_bytes", full)),
            "reload_disk_s": ("reload a full checkpoint from disk",
                              cost.get("reload_disk_bytes", None if full is None else full / n))}
    mib = {k: MISSING if b is None else format_bytes(b) for k, (_, b) in ways.items()}
    one = f" One adapter: {format_bytes(cost['adapter_bytes'])}." if cost.get("adapter_bytes") else ""
    parts = [f"Serving {n} adapters, batches of {cost.get('batch_size', '?')} on {cost.get('device', '?')}, "
             f"{cost.get('repeats', '?')} repeats: ms per batch, median [5 %, 95 % over repeats]. Memory: parameter "
             f"bytes resident (reload from memory: the {n} full state_dicts held; from disk: one model).{one}",
             md_table(["Serving", "Time (ms/batch) [5 %, 95 %]", "Memory"],
                      [[name, _ms(cost, k), mib[k]] for k, (name, _) in ways.items() if k in cost])]
    shows = [f"Serving {n} adapters by switching takes {_ms(cost, 'switch_s')} ms per batch and {mib['switch_s']}, "
             f"against {_ms(cost, 'merged_s')} ms and {mib['merged_s']} with the merged models held in memory."
             ] if "switch_s" in cost and "merged_s" in cost else []
    return parts, shows


def _dominance_lines(d: Defences, settings: Settings) -> list[str]:
    """Per system and ε: which adapter alone dominates the system, with the numbers, or that none is shown to."""
    dom = switching_dominance(d.switching_comparisons, settings.alpha)
    lines = []
    for (system, eps), g in dom.groupby(["system", "eps"], sort=False):
        winners = [r for r in g.itertuples() if r.dominates]
        where = f"Switching system {system} at ε = {format_eps(eps)}"
        if not winners:
            lines.append(f"{where}: no adapter alone is shown to dominate it (none has a significantly higher robust "
                         "accuracy than the system's worst case without a significant clean-accuracy cost).")
        for r in winners:
            lines.append(
                f"{where}: the {r.role} adapter {r.adapter} alone dominates the switching system — its robust "
                f"accuracy is {difference_cell(r.robust_gain, r.robust_ci_low, r.robust_ci_high)} points above the "
                f"system's worst case ({p_phrase('Holm p', r.robust_p_holm)}) and the system's clean accuracy differs "
                f"from it by {difference_cell(r.clean_diff, r.clean_ci_low, r.clean_ci_high)} points (not "
                f"significantly higher): always serving {r.adapter} is no worse on clean images within the noise "
                "and more robust, so switching buys nothing here.")
    return lines


def _switching_md(d: Defences, settings: Settings) -> tuple[list[str], list[str]]:
    if d.switching.empty:
        return ["Not evaluated: no switching results. Enable it with the `switching` section of params.yaml (the "
                "standard and the robust adapter, the detector that routes)."], []
    t, parts, shows = d.switching, [], []
    idx = row_index(t, ["system", "attack", "eps", "quantity"])
    quantities = ("clean_accuracy", "robust_accuracy", "switch_rate_clean", "switch_rate_attacked")
    for system, g in t.groupby("system", sort=False):
        parts += [f"System {system}: standard adapter {g['standard'].iloc[0]}, robust adapter {g['robust'].iloc[0]}; "
                  "inputs the detector flags go to the robust adapter. Mean over seeds [95% CI], in %.",
                  md_table(["Attack", "ε", "Clean acc.", "Robust acc.", "Switched, clean", "Switched, attacked"],
                           [[SWITCHING_ATTACKS.get(a, a), format_eps(e)]
                            + [_ci(idx.get((system, a, lookup_key(e), q))) for q in quantities]
                            for a, e in dict.fromkeys(zip(g["attack"], g["eps"]))])]
    c = d.switching_comparisons
    if c.empty:
        parts.append("No comparison with the adapters alone: the switching results hold no 'worst' rows.")
    else:
        parts += [f"System minus each adapter alone on the switching images, points [95% paired CI]; robust "
                  f"accuracy: the system's worst case vs the adapter's worst case over attacks (PGD where that is "
                  f"absent). Holm over the {len(c)} rows. An adapter dominates the system when its robust accuracy "
                  f"is significantly higher and the system's clean accuracy is not significantly higher.",
                  md_table(["System", "Versus", "Quantity", "ε", "Difference (points) [95% CI]", "p", "Holm p",
                            "n images", "Verdict"],
                           [[r.system, f"{r.versus} ({r.role})", r.quantity.replace("_", " "), format_eps(r.eps),
                             difference_cell(r.diff, r.ci_low, r.ci_high), format_p(r.p), format_p(r.p_holm),
                             str(r.n_images), r.verdict] for r in c.itertuples()])]
        for (system, eps), g in c.groupby(["system", "eps"], sort=False):
            said = [_said(f"{r.quantity.replace('_', ' ')} vs the {r.role} adapter {r.versus}", r)
                    for r in g.itertuples() if r.verdict != "not evaluated"]
            shows.append(f"Switching system {system} at ε = {format_eps(eps)}: worst-case robust accuracy "
                         f"{_ci(idx.get((system, 'worst', lookup_key(eps), 'robust_accuracy')))} %"
                         + "".join(f"; {s}" for s in said) + ".")
        shows += _dominance_lines(d, settings)
    cost, cost_shows = _cost_md(d.cost)
    return parts + ["#### Serving cost"] + cost, shows + cost_shows


def defences_section(d: Defences, settings: Settings, figures: Mapping[str, str], *, squeeze_settings: str = "",
                     switching_settings: str = "") -> str:
    """The '## Defences' markdown: three subsections, the trade-off figure, and 'What this shows' from the verdicts.

    figures: figure key -> path relative to the report (key 'defences_tradeoff'); *_settings: a line each on how
    the defence ran (squeezers and target holdout FPR; adapters and router), written by the caller from params.
    """
    (adv, s1), (sq, s2), (sw, s3) = _adversarial_md(d, settings), _squeeze_md(d, settings), _switching_md(d, settings)
    parts = ["## Defences",
             "Every share in %, mean over training seeds [95% hierarchical-bootstrap CI over seeds and images]; "
             "differences in percentage points on the same images. Each table is its own Holm family.",
             "### Adversarial fine-tuning", *adv,
             "### Feature squeezing", *([squeeze_settings] if not d.squeeze.empty else []), *sq,
             "### Dynamic adapter switching", *([switching_settings] if not d.switching.empty else []), *sw]
    if path := figures.get("defences_tradeoff"):
        caption = (f"Clean vs robust accuracy at ε = {format_eps(settings.report_eps)} (95% CIs); dashed: an "
                   "adversarially trained arm and its standard twin. Detector and switching points are on their own "
                   "image subsets.")
        parts.append(f"![{caption}]({path})\n\n*{caption}*")
    shows = s1 + s2 + s3
    parts.append("### What this shows\n\n" + ("\n".join(f"- {s}" for s in shows) if shows
                                              else "No defence produced a tested comparison."))
    return "\n\n".join(p.strip("\n") for p in parts if p)


def tradeoff_figure(points: pd.DataFrame, eps: float) -> Figure:
    """Robust accuracy at ε vs clean accuracy (%), 95 % CI error bars on both axes; dashed: AT arm to its twin."""
    fig, (ax,) = new_figure(7.5, 5.0)
    colors = arm_colors(list(dict.fromkeys(points["arm"])))
    standard = {r.arm: r for r in points.itertuples() if r.kind == "arm"}
    for r in points.itertuples():
        if r.kind == "adversarial" and (twin := standard.get(r.twin)) is not None:
            ax.plot([100 * twin.clean, 100 * r.clean], [100 * twin.robust, 100 * r.robust], "--", color="grey", lw=1)
    for r in points.itertuples():
        marker, filled = _MARKERS[r.kind]
        ax.errorbar(100 * r.clean, 100 * r.robust, fmt=marker, color=colors[r.arm], capsize=2, label=r.label,
                    xerr=[[100 * max(r.clean - r.clean_lo, 0)], [100 * max(r.clean_hi - r.clean, 0)]],
                    yerr=[[100 * max(r.robust - r.robust_lo, 0)], [100 * max(r.robust_hi - r.robust, 0)]],
                    mfc=colors[r.arm] if filled else "white", markersize=10 if marker == "*" else 7)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy at ε = {format_eps(eps)} (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Clean vs robust accuracy at ε = {format_eps(eps)} (95% CI)\n● standard, ■ adversarially "
                 "trained, ◇ + squeezing (adaptive attack), ★ switching (worst case)", fontsize=8)
    if len(points):
        fig.legend(loc="outside lower center", ncols=2, fontsize=7)
    return fig


def write_defence_figures(out_dir: str | Path, points: pd.DataFrame, eps: float) -> dict[str, Path]:
    """The trade-off figure as `defences_tradeoff.png` under out_dir; {} when there is no point to draw."""
    if points.empty:
        return {}
    return {"defences_tradeoff": save_figure(tradeoff_figure(points, eps), Path(out_dir) / "defences_tradeoff.png")}
