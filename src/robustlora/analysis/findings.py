"""The paper's claims (a)-(d), each decided from the per-image results: estimate, interval, test, the paper's own
effect, an equivalence test and the minimal detectable effect, so "no effect" is told apart from "no power".

(a) the LoRA arms reach higher clean accuracy than the baseline (every attacked val image); (b) the baseline's FGSM
success rate at the report ε is about the paper's (an absolute level: testable on the paper's configuration only);
(c) LoRA on fc lowers the FGSM / PGD success rate marginally, on fc and conv1 further (on the images every paper arm
gets right in every seed; a sensitivity line on each arm's own clean-correct images); (d) every paper arm's
certainty (max-softmax) drops under attack, at every ε of the grid (true-class probability shown beside it).
Comparisons of arms use the one engine (robustlora.analysis.compare) and ONE Holm family over every finding with a
p-value. One-arm estimates ((b), (d)) are hierarchical-bootstrap intervals; their standard error is the interval's
half-width over z (a normal approximation), which gives their equivalence interval and minimal detectable effect.
Shares and differences in [0,1], ε in [0,1] pixel units. `VERDICT_DEFINITIONS` is the vocabulary, defined once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import norm

from robustlora import stats
from robustlora.analysis.compare import Comparison, common_correct, compare, direction, holm_family
from robustlora.analysis.estimates import cell_estimate
from robustlora.analysis.names import ATTACK_NAMES
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import Outcomes, ResultSet
from robustlora.formatting import eps_key, format_eps, format_pct, format_points, p_phrase

__all__ = ["VERDICTS", "VERDICT_DEFINITIONS", "PAPER_CLEAN", "Finding", "unconverged_arms", "findings",
           "findings_json"]

VERDICTS = ("supported", "contradicted", "equivalent", "paper's effect rejected", "underpowered",
            "not testable in this configuration", "not converged", "not evaluated")
VERDICT_DEFINITIONS = {
    "supported": "the 95 % interval lies on the claimed side of 0 (and, for a tested claim, the Holm-adjusted p < "
                 "α); claim (b): the 1 − 2α interval lies inside the reference ± tolerance (TOST); claim (d): at "
                 "every ε of the grid",
    "contradicted": "the 95 % interval lies on the other side of 0 (tested: Holm p < α); claim (b): it lies entirely "
                    "outside the reference ± tolerance; claim (d): at some ε certainty rises",
    "equivalent": "no effect as large as the equivalence margin: the 1 − 2α interval lies inside ± the margin "
                  "(TOST at α); the claim's effect and its opposite are both ruled out beyond the margin",
    "paper's effect rejected": "no verdict on 0 (the interval includes it) and no equivalence, but the 95 % interval "
                               "excludes the effect the paper reports (or, without a size, an effect of one margin "
                               "on the claimed side): the data show less than the paper claims",
    "underpowered": "none of the above: the interval includes 0, effects beyond the margin and the paper's effect; "
                    "the line gives the minimal "
                    "detectable effect (MDE), the smallest |effect| this run finds with 80 % power at α, two-sided",
    "not testable in this configuration": "a claim about an absolute level (b) on data or a model unlike the "
                                          "paper's; its figures are shown, not judged",
    "not converged": "the claim rests on an arm with a seed whose best epoch is its last at max_epochs (still "
                     "improving when training stopped); its figures are shown, not judged",
    "not evaluated": "an arm or result the claim needs is absent",
}
PAPER_CLEAN = {"baseline": 0.90, "lora_fc": 0.96, "lora_fc_conv1": 0.98}  # the paper's Table 1, claim (a)
_SEVERITY = ("contradicted", "equivalent", "underpowered", "supported")  # (d): the grid's verdict is its worst ε's


@dataclass(frozen=True)
class Finding:
    """One claim of the study, decided from the data. Shares and differences in [0,1]; p None when untested."""

    claim: str  # 'a', 'b', 'c1', 'c2', 'd'
    key: str  # unique, e.g. 'a/lora_fc', 'c1/pgd'
    statement: str  # what the paper claims, in this row's terms
    verdict: str  # one of VERDICTS
    effect: float
    ci_low: float
    ci_high: float
    p: float | None
    p_holm: float | None
    n_images: int
    n_seeds: int
    test: str
    detail: str  # the measured numbers behind the effect, or why the claim was not evaluated
    sentence: str  # the whole finding in one line
    evidence: str = ""  # the sentence after the statement and verdict: numbers, paper's effect, equivalence, MDE
    paper_effect: float | None = None  # the paper's effect in the effect's units (a share for (b))
    paper_effect_text: str = ""  # what the paper's effect is taken as
    paper_rejected: bool | None = None  # the 95 % interval excludes the paper's effect; None when not evaluated
    equivalence: bool | None = None  # TOST: the 1 − 2α interval inside ± margin (around the reference for (b))
    margin: float = math.nan
    eq_low: float = math.nan  # the 1 − 2α interval of the TOST
    eq_high: float = math.nan
    mde: float = math.nan  # minimal detectable |effect| at settings.power, two-sided at α
    eps: float | None = None  # the ε the effect is at ((d): the ε that decides the grid's verdict)
    sensitivity: str = ""  # (c): the same comparison on each arm's own clean-correct images
    note: str = ""  # why a claim is not converged / not testable


@dataclass(frozen=True)
class _Effect:
    """An effect with all a verdict needs: a comparison's, or a one-arm estimate's by the normal approximation."""

    value: float
    ci_low: float
    ci_high: float
    mde: float
    eq_low: float
    eq_high: float
    n_images: int
    n_seeds: int
    method: str

    @classmethod
    def of(cls, result: Comparison | stats.Estimate, settings: Settings, method: str) -> _Effect:
        if isinstance(result, Comparison):
            return cls(*map(float, (result.diff, result.ci_low, result.ci_high, result.mde, result.eq_low,
                                    result.eq_high)), result.n_images, result.n_seeds, result.method)
        se = (result.ci_high - result.ci_low) / (2 * float(norm.ppf(0.5 + settings.confidence / 2)))
        mde = float(norm.ppf(1 - settings.alpha / 2) + norm.ppf(settings.power)) * se
        half = float(norm.ppf(1 - settings.alpha)) * se
        return cls(result.value, result.ci_low, result.ci_high, mde, result.value - half, result.value + half,
                   result.n_images, result.n_seeds, method)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.ci_low, self.ci_high, self.eq_low, self.eq_high))

    def inside(self, low: float, high: float) -> bool:
        """The TOST: the 1 − 2α interval inside (low, high)."""
        return bool(self.finite and low < self.eq_low and self.eq_high < high)


@dataclass(frozen=True)
class _Raw:
    """A finding before the family's Holm correction decides its verdict."""

    claim: str
    key: str
    statement: str
    effect: _Effect | None  # None: not evaluated
    expect: int  # +1: the claim says the effect is > 0; -1: < 0; 0: about a level (claim b)
    test: str
    detail: str  # the data half of the sentence, or why it was not evaluated
    arms: tuple[str, ...] = ()  # the arms the claim rests on
    paper: float | None = None  # the paper's effect: a point ((a), (b)); None: at least one margin, claimed side
    eps: float | None = None
    grid: tuple[tuple[float, _Effect], ...] = ()  # (d): every ε's drop
    sensitivity: str = ""
    comparison: Comparison | None = None  # a tested claim's comparison, for the Holm family


def unconverged_arms(train_metrics: Mapping[str, Any]) -> dict[str, str]:
    """Arm -> why it is not converged: a seed whose best epoch is its last at max_epochs (still improving when the
    cap stopped it; the sanity check 'best_epoch' warns on the same seeds). Untrained arms (max_epochs 0) pass."""
    out = {}
    for arm, metrics in train_metrics.items():
        seeds = (metrics or {}).get("seeds") or {}
        capped = [s for s, m in seeds.items() if (m.get("max_epochs") or 0) > 0
                  and m.get("best_epoch") == m.get("max_epochs")]
        if capped:
            cap = seeds[capped[0]]["max_epochs"]
            out[arm] = (f"{arm} was still improving at the epoch cap ({len(capped)} of {len(seeds)} seeds best at "
                        f"max_epochs {cap}: seed {', '.join(sorted(capped, key=str))})")
    return out


def _label(settings: Settings, role: str) -> str:
    return settings.arms.get(role) or role


def _absent(rs: ResultSet, settings: Settings, *roles: str) -> str | None:
    """None when every role names an arm with results, else the reason the claim is not evaluated."""
    for role in roles:
        arm = settings.arms.get(role)
        if arm is None:
            return f"report.arms.{role} is null"
        if arm not in rs.arms:
            return f"arm {arm!r} (report.arms.{role}) has no attack results"
    return None


def _claim_a(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    base = _label(settings, "baseline")
    n_val = settings.scope.n_val if settings.scope else None
    for role in ("lora_fc", "lora_fc_conv1"):
        arm = _label(settings, role)
        paper = PAPER_CLEAN[role] - PAPER_CLEAN["baseline"]
        statement = (f"{arm} reaches higher clean accuracy than {base} (paper: {100 * PAPER_CLEAN[role]:.0f} vs "
                     f"{100 * PAPER_CLEAN['baseline']:.0f} %)")
        reason = _absent(rs, settings, role, "baseline")
        if reason:
            out.append(_Raw("a", f"a/{role}", statement, None, 1, "paired comparison", reason, paper=paper))
            continue
        a, b = rs.clean(arm).clean_correct, rs.clean(base).clean_correct
        comparison = compare(a, b, settings)
        effect = _Effect.of(comparison, settings, "")
        of = (f"all {rs.n_images} val images" if n_val == rs.n_images else
              f"{rs.n_images} of the {n_val} val images (attack.n_images)" if n_val else f"{rs.n_images} val images")
        detail = f"clean accuracy {format_pct(a.mean())} % vs {format_pct(b.mean())} % on {of}"
        out.append(_Raw("a", f"a/{role}", statement, effect, 1, effect.method, detail, (arm, base), paper=paper,
                        comparison=comparison))
    return out


def _claim_b(rs: ResultSet, settings: Settings) -> list[_Raw]:
    ref, tol = settings.reference_fgsm_asr, settings.tolerance
    base, eps = _label(settings, "baseline"), settings.report_eps
    statement = (f"{base}'s FGSM success rate at ε = {format_eps(eps)} is about {format_pct(ref)} % "
                 f"(equivalence band {format_pct(ref - tol)}–{format_pct(ref + tol)} %)")
    test = "hierarchical bootstrap interval vs the band (TOST on the 1 − 2α interval)"
    reason = _absent(rs, settings, "baseline")
    cell = rs.get(base, "fgsm", eps) if reason is None else None
    if reason is None and cell is None:
        reason = f"no FGSM results at ε = {format_eps(eps)} for {base}"
    est = cell_estimate(cell, "attack_success_rate", settings) if cell is not None else None
    if reason is None and not est.n_seeds:
        reason = f"{base} classifies no attacked image correctly"
    if reason:
        return [_Raw("b", "b", statement, None, 0, test, reason, paper=ref)]
    detail = f"over each seed's clean-correct images of the {rs.n_images} attacked"
    return [_Raw("b", "b", statement, _Effect.of(est, settings, test), 0, test, detail, (base,), paper=ref, eps=eps)]


def _own_correct(a: Outcomes, b: Outcomes, settings: Settings) -> str:
    """The sensitivity line: a's and b's success rates, each over its own seeds' clean-correct images; the
    difference's interval combines the arms' half-widths in quadrature, as if independent (wider than paired)."""
    ea, eb = (cell_estimate(c, "attack_success_rate", settings) for c in (a, b))
    if not (ea.n_seeds and eb.n_seeds):
        return ""
    half = math.hypot(ea.ci_high - ea.ci_low, eb.ci_high - eb.ci_low) / 2
    diff = ea.value - eb.value
    return (f"on each arm's own clean-correct images: {format_pct(ea.value)} % vs {format_pct(eb.value)} %, "
            f"difference {format_points(diff)} points [{format_points(diff - half)}, {format_points(diff + half)}] "
            "(the arms' intervals combined as if independent)")


def _claim_c(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    eps = settings.report_eps
    paper_arms = [a for a in settings.paper_arms if a in rs.arms]
    for claim, role, ref_role, how in (("c1", "lora_fc", "baseline", "marginally"),
                                       ("c2", "lora_fc_conv1", "lora_fc", "further")):
        arm, ref = _label(settings, role), _label(settings, ref_role)
        for attack in ("fgsm", "pgd"):
            statement = (f"{arm} lowers the {ATTACK_NAMES[attack]} success rate at ε = {format_eps(eps)} {how} "
                         f"(vs {ref})")
            key = f"{claim}/{attack}"
            reason = _absent(rs, settings, role, ref_role)
            a = rs.get(arm, attack, eps) if reason is None else None
            b = rs.get(ref, attack, eps) if reason is None else None
            if reason is None and (a is None or b is None):
                reason = f"no {ATTACK_NAMES[attack]} results at ε = {format_eps(eps)} for {arm if a is None else ref}"
            mask = common_correct(rs, attack, eps, paper_arms) if reason is None else None
            if reason is None and not mask.any():
                reason = f"no image is classified correctly by every paper arm ({', '.join(paper_arms)}) in every seed"
            if reason:
                out.append(_Raw(claim, key, statement, None, -1, "paired comparison", reason, eps=eps))
                continue
            comparison = compare(a.success, b.success, settings, mask)
            effect = _Effect.of(comparison, settings, "")
            detail = (f"success {format_pct(a.success[:, mask].mean())} % vs {format_pct(b.success[:, mask].mean())} %"
                      f" on the {effect.n_images} images every paper arm ({', '.join(paper_arms)}) classifies "
                      "correctly in every seed")
            out.append(_Raw(claim, key, statement, effect, -1, effect.method, detail, (arm, ref), eps=eps,
                            sensitivity=_own_correct(a, b, settings), comparison=comparison))
    return out


def _claim_d(rs: ResultSet, settings: Settings,
             true_prob: Mapping[tuple[str, str, float], tuple[float, float]]) -> list[_Raw]:
    out = []
    grid = sorted(eps_key(e) for e in settings.eps_grid)
    test = "hierarchical bootstrap interval of the within-arm paired drop, per ε (no test)"
    for arm in settings.paper_arms:
        for attack in ("fgsm", "pgd"):
            statement = (f"{arm}'s certainty (max-softmax) drops under {ATTACK_NAMES[attack]} at every ε of the grid "
                         f"({', '.join(format_eps(e) for e in grid)})")
            cells = [(e, rs.get(arm, attack, e)) for e in grid]
            missing = [e for e, c in cells if c is None]
            if missing:
                reason = (f"arm {arm!r} has no attack results" if arm not in rs.arms else
                          f"no {ATTACK_NAMES[attack]} results at ε = {', '.join(format_eps(e) for e in missing)}")
                out.append(_Raw("d", f"d/{arm}/{attack}", statement, None, 1, test, reason, (arm,)))
                continue
            drops, parts = [], []
            for e, cell in cells:
                # same seed, same image: the pairing is exact, so the difference matrix is bootstrapped directly
                est = stats.hierarchical_mean(cell.clean_max_prob - cell.adv_max_prob, **settings.bootstrap)
                drops.append((e, _Effect.of(est, settings, test)))
                tp = true_prob.get((arm, attack, e))
                true_text = (f"; true class {format_pct(tp[0])} → {format_pct(tp[1])} %" if tp
                             else "; true-class probability not in the results")
                parts.append(f"{format_eps(e)}: max-softmax {format_pct(cell.clean_max_prob.mean())} → "
                             f"{format_pct(cell.adv_max_prob.mean())} % (drop {format_points(est.value)} "
                             f"[{format_points(est.ci_low)}, {format_points(est.ci_high)}]){true_text}")
            out.append(_Raw("d", f"d/{arm}/{attack}", statement, None, 1, test, "; ".join(parts), (arm,),
                            grid=tuple(drops)))
    return out


def _judge(e: _Effect, expect: int, p_holm: float | None, settings: Settings) -> str:
    """supported / contradicted / equivalent / underpowered for one effect (VERDICT_DEFINITIONS)."""
    if expect == 0:  # claim (b): about a level, the band reference ± tolerance
        lo, hi = settings.reference_fgsm_asr - settings.tolerance, settings.reference_fgsm_asr + settings.tolerance
        if e.inside(lo, hi):
            return "supported"
        if e.finite and (e.ci_high < lo or e.ci_low > hi):
            return "contradicted"
        return "underpowered"
    sign = direction(e.ci_low, e.ci_high, p_holm, settings.alpha)
    if sign:
        return "supported" if sign == expect else "contradicted"
    margin = settings.equivalence_margin
    return "equivalent" if e.inside(-margin, margin) else "underpowered"


def _rejected(e: _Effect, raw: _Raw, margin: float) -> bool | None:
    """The 95 % interval excludes the paper's effect: a point, or (no number) every effect of at least one margin on
    the claimed side."""
    if not e.finite:
        return None
    if raw.paper is not None:
        return bool(not (e.ci_low <= raw.paper <= e.ci_high))
    return bool(e.ci_high < margin if raw.expect > 0 else e.ci_low > -margin)


def _paper_text(raw: _Raw, margin: float) -> str:
    if raw.claim == "b":
        return f"{format_pct(raw.paper)} %"
    if raw.paper is not None:
        return f"{format_points(raw.paper)} points"
    what = "a drop" if raw.expect > 0 else "a reduction"
    where = " at every ε" if raw.grid else ""
    return f"{what} of at least {100 * margin:.1f} points{where}; the paper gives no size"


def _finish(raw: _Raw, p_holm: float | None, settings: Settings, unconverged: Mapping[str, str]) -> Finding:
    margin = settings.tolerance if raw.claim == "b" else settings.equivalence_margin
    centre = settings.reference_fgsm_asr if raw.claim == "b" else 0.0
    e, eps, rejected = raw.effect, raw.eps, None
    if raw.grid:  # (d): the grid's verdict is its worst ε's, and the effect shown is that ε's
        judged = [(e_, eff, _judge(eff, raw.expect, None, settings)) for e_, eff in raw.grid]
        eps, e, verdict = min(judged, key=lambda t: (_SEVERITY.index(t[2]), t[1].value))
        rejected = any(_rejected(eff, raw, margin) for _, eff, _ in judged)  # the paper's drop, at some ε
    elif e is not None:
        verdict, rejected = _judge(e, raw.expect, p_holm, settings), _rejected(e, raw, margin)
    else:
        verdict = "not evaluated"
    if verdict == "underpowered" and rejected and raw.claim != "b":
        verdict = "paper's effect rejected"
    note = ""
    scope = settings.scope
    if verdict != "not evaluated":
        stuck = [unconverged[a] for a in dict.fromkeys(raw.arms) if a in unconverged]
        if stuck:
            verdict, note = "not converged", f"Not converged: {'; '.join(stuck)}"
        elif raw.claim == "b" and scope is not None and scope.differences():
            verdict = "not testable in this configuration"
            note = f"An absolute level, measured with {', '.join(scope.differences())}; shown for reference"
    est = e or _Effect(*[math.nan] * 6, 0, 0, raw.test)
    found = Finding(
        raw.claim, raw.key, raw.statement, verdict, est.value, est.ci_low, est.ci_high,
        raw.comparison.p if raw.comparison is not None else None, p_holm, est.n_images, est.n_seeds, raw.test,
        raw.detail, "", "",
        paper_effect=raw.paper if raw.paper is not None else raw.expect * margin,
        paper_effect_text=_paper_text(raw, margin), paper_rejected=rejected,
        equivalence=est.inside(centre - margin, centre + margin) if e is not None else None, margin=margin,
        eq_low=est.eq_low, eq_high=est.eq_high, mde=est.mde, eps=eps, sensitivity=raw.sensitivity, note=note)
    evidence = _evidence(found, settings)
    return replace(found, evidence=evidence, sentence=f"{raw.statement}: {verdict} — {evidence}")


def _evidence(f: Finding, settings: Settings) -> str:
    """The finding after its statement: why no verdict, the effect with its interval and test, the measured
    numbers, the paper's effect, the equivalence test and the MDE."""
    if f.verdict == "not evaluated":
        return f"not evaluated: {f.detail}."
    lead = f"{f.note}. " if f.note else ""
    at = f" at ε = {format_eps(f.eps)}" if f.claim == "d" and f.eps is not None else ""
    yes = "yes" if f.equivalence else "no"
    tost = f"{100 * (1 - 2 * settings.alpha):.0f} % interval"
    if f.claim == "b":
        effect = (f"FGSM success {format_pct(f.effect)} % [{format_pct(f.ci_low)}, {format_pct(f.ci_high)}] "
                  f"{f.detail} ({f.n_seeds} seeds)")
        lo, hi = f.paper_effect - f.margin, f.paper_effect + f.margin
        eq = (f"Within {format_pct(lo)}–{format_pct(hi)} %: {yes} ({tost} [{format_pct(f.eq_low)}, "
              f"{format_pct(f.eq_high)}])")
        detail = ""
    else:
        word = "Drop" if f.claim == "d" else "Difference"
        effect = (f"{word}{at} {format_points(f.effect)} points [{format_points(f.ci_low)}, "
                  f"{format_points(f.ci_high)}] ({f.n_seeds} seeds, {f.n_images} images)")
        if f.p is not None:
            effect += f"; {p_phrase('p', f.p)}, {p_phrase('Holm p', f.p_holm)}"
        eq = (f"Equivalent within ±{100 * f.margin:.1f} points{at}: {yes} ({tost} [{format_points(f.eq_low)}, "
              f"{format_points(f.eq_high)}])")
        detail = f" {f.detail[:1].upper()}{f.detail[1:]}."
    paper = f"Paper's effect ({f.paper_effect_text}): {_excluded(f)}"
    sens = f" Sensitivity, {f.sensitivity}." if f.sensitivity else ""
    power = f"MDE ({100 * settings.power:.0f} % power){at}"
    return f"{lead}{effect}.{detail} {paper}. {eq}. {power}: {100 * f.mde:.1f} points.{sens}"


def _excluded(f: Finding) -> str:
    if f.paper_rejected is None:
        return "untested"
    if not f.paper_rejected:
        return "not excluded"
    if f.claim in ("a", "b") and math.isfinite(f.ci_high):
        return "excluded (the data show " + ("less" if f.ci_high < f.paper_effect else "more") + ")"
    return "excluded"


def findings(rs: ResultSet, settings: Settings, *, unconverged: Mapping[str, str] | None = None,
             true_prob: Mapping[tuple[str, str, float], tuple[float, float]] | None = None) -> list[Finding]:
    """The study's claims (a)-(d) decided from the data (VERDICT_DEFINITIONS); one Holm correction over every
    finding with a p-value. ``unconverged``: arm -> why (`unconverged_arms`); ``true_prob``: (arm, attack, ε key) ->
    mean true-class probability before / after the attack, shown beside certainty in (d)."""
    raws = (_claim_a(rs, settings) + _claim_b(rs, settings) + _claim_c(rs, settings)
            + _claim_d(rs, settings, true_prob or {}))
    tested = [r for r in raws if r.comparison is not None]
    family = holm_family([r.comparison for r in tested], settings.alpha)  # one Holm family: the tested findings
    p_holm = {r.key: c.p_holm for r, c in zip(tested, family)}
    return [_finish(r, p_holm.get(r.key), settings, unconverged or {}) for r in raws]


def findings_json(found: Sequence[Finding], settings: Settings, common_sizes: Mapping[str, Mapping[str, int]],
                  check_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A JSON-able dict of the findings, the settings and scope that decided them and the common-correct set sizes."""
    def clean(value: Any) -> Any:
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            return None  # JSON has no NaN
        return value.item() if isinstance(value, np.generic) else value

    scope = settings.scope
    return {
        "settings": {"report_eps": settings.report_eps, "report_eps_label": format_eps(settings.report_eps),
                     "arms": dict(settings.arms), "reference_fgsm_asr": settings.reference_fgsm_asr,
                     "tolerance": settings.tolerance, "equivalence_margin": settings.equivalence_margin,
                     "power": settings.power, "alpha": settings.alpha, "n_boot": settings.n_boot,
                     "seed": settings.seed, "confidence": settings.confidence},
        "scope": None if scope is None else {**asdict(scope), "differences": scope.differences()},
        "verdicts": {f.key: f.verdict for f in found},
        "findings": [{k: clean(v) for k, v in asdict(f).items()} for f in found],
        "common_correct_images": {a: dict(v) for a, v in common_sizes.items()},
        "checks": dict(check_counts or {}),
    }
