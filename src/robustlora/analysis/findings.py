"""The paper's claims (a)-(d), each decided from the per-image results with its estimate, interval and test.

(a) the LoRA arms reach higher clean accuracy than the baseline; (b) the baseline's FGSM success rate at the report
ε is about the reference (an equivalence band); (c) LoRA on fc lowers the FGSM / PGD success rate marginally, on fc
and conv1 further; (d) every arm's certainty drops under attack. Comparisons of arms use the one engine
(robustlora.analysis.compare) and ONE Holm family over every finding with a p-value; shares in [0,1], ε in [0,1]
pixel units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from robustlora import stats
from robustlora.analysis.compare import Comparison, common_correct, compare, direction, holm_family
from robustlora.analysis.estimates import cell_estimate
from robustlora.analysis.names import ATTACK_NAMES
from robustlora.analysis.settings import ROLES, Settings
from robustlora.analysis.tables import ResultSet
from robustlora.formatting import format_eps, format_pct, format_points, p_phrase

__all__ = ["VERDICTS", "PAPER_CLEAN", "Finding", "findings", "findings_json"]

VERDICTS = ("supported", "contradicted", "inconclusive", "not evaluated")
PAPER_CLEAN = {"baseline": 0.90, "lora_fc": 0.96, "lora_fc_conv1": 0.98}  # the paper's Table 1, claim (a)


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


@dataclass(frozen=True)
class _Raw:
    """A finding before the family's Holm correction decides its verdict."""

    claim: str
    key: str
    statement: str
    result: stats.Estimate | Comparison | None  # None: not evaluated; a Comparison: tested
    expect: int  # +1: the claim says the effect is > 0; -1: < 0; 0: equivalence band (claim b)
    test: str
    detail: str  # the data half of the sentence, or why it was not evaluated

    @property
    def p(self) -> float | None:
        """The test's p-value; None when untested."""
        return self.result.p if isinstance(self.result, Comparison) else None

    @property
    def estimate(self) -> stats.Estimate | None:
        """The effect with its interval (a comparison's difference)."""
        return self.result.estimate if isinstance(self.result, Comparison) else self.result


def _arm_label(settings: Settings, role: str) -> str:
    return settings.arms.get(role) or role


def _present(rs: ResultSet, settings: Settings, *roles: str) -> str | None:
    """None when every role names an arm with results, else the reason it is not evaluated."""
    for role in roles:
        arm = settings.arms.get(role)
        if arm is None:
            return f"report.arms.{role} is null"
        if arm not in rs.arms:
            return f"arm {arm!r} (report.arms.{role}) has no attack results"
    return None


def _claim_a(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    for role in ("lora_fc", "lora_fc_conv1"):
        arm, base = _arm_label(settings, role), _arm_label(settings, "baseline")
        statement = (f"{arm} reaches higher clean accuracy than {base} (paper: {100 * PAPER_CLEAN[role]:.0f} vs "
                     f"{100 * PAPER_CLEAN['baseline']:.0f} %)")
        test = "paired bootstrap difference; exact McNemar on clean correctness"
        reason = _present(rs, settings, role, "baseline")
        if reason:
            out.append(_Raw("a", f"a/{role}", statement, None, 1, test, reason))
            continue
        a, b = rs.clean(arm).clean_correct, rs.clean(base).clean_correct
        comparison = compare(a, b, settings)
        detail = (f"clean accuracy {format_pct(a.mean())} % vs {format_pct(b.mean())} % on the "
                  f"{comparison.n_images} attacked images")
        out.append(_Raw("a", f"a/{role}", statement, comparison, 1, test, detail))
    return out


def _claim_b(rs: ResultSet, settings: Settings) -> list[_Raw]:
    ref, tol = settings.reference_fgsm_asr, settings.tolerance
    base, eps = _arm_label(settings, "baseline"), settings.report_eps
    statement = (f"{base}'s FGSM success rate at ε = {format_eps(eps)} is about {format_pct(ref)} % "
                 f"(equivalence band {format_pct(ref - tol)}–{format_pct(ref + tol)} %)")
    test = "hierarchical bootstrap CI inside / outside the equivalence band"
    reason = _present(rs, settings, "baseline")
    cell = rs.get(base, "fgsm", eps) if reason is None else None
    if reason is None and cell is None:
        reason = f"no FGSM results at ε = {format_eps(eps)} for {base}"
    est = cell_estimate(cell, "attack_success_rate", settings) if cell is not None else None
    if reason is None and not est.n_seeds:
        reason = f"{base} classifies no attacked image correctly"
    if reason:
        return [_Raw("b", "b", statement, None, 0, test, reason)]
    detail = (f"FGSM success {format_pct(est.value)} % [{format_pct(est.ci_low)}, {format_pct(est.ci_high)}] over "
              f"each seed's clean-correct images ({est.n_seeds} seeds)")
    return [_Raw("b", "b", statement, est, 0, test, detail)]


def _claim_c(rs: ResultSet, settings: Settings, common_arms: Sequence[str] | None) -> list[_Raw]:
    out = []
    eps = settings.report_eps
    for claim, role, ref_role, how in (("c1", "lora_fc", "baseline", "marginally"),
                                       ("c2", "lora_fc_conv1", "lora_fc", "further")):
        arm, ref = _arm_label(settings, role), _arm_label(settings, ref_role)
        for attack in ("fgsm", "pgd"):
            statement = (f"{arm} lowers the {ATTACK_NAMES[attack]} success rate at ε = {format_eps(eps)} {how} "
                         f"(vs {ref})")
            test = "paired bootstrap difference on common-correct images; exact McNemar"
            key = f"{claim}/{attack}"
            reason = _present(rs, settings, role, ref_role)
            a = rs.get(arm, attack, eps) if reason is None else None
            b = rs.get(ref, attack, eps) if reason is None else None
            if reason is None and (a is None or b is None):
                reason = f"no {ATTACK_NAMES[attack]} results at ε = {format_eps(eps)} for {arm if a is None else ref}"
            if reason:
                out.append(_Raw(claim, key, statement, None, -1, test, reason))
                continue
            mask = common_correct(rs, attack, eps, common_arms)
            if not mask.any():
                out.append(_Raw(claim, key, statement, None, -1, test,
                                "no image is classified correctly by every arm in every seed"))
                continue
            comparison = compare(a.success, b.success, settings, mask)
            detail = (f"success {format_pct(a.success[:, mask].mean())} % vs {format_pct(b.success[:, mask].mean())} %"
                      f" on the {comparison.n_images} common-correct images (correct in every seed of every adapted "
                      "arm)")
            out.append(_Raw(claim, key, statement, comparison, -1, test, detail))
    return out


def _claim_d(rs: ResultSet, settings: Settings) -> list[_Raw]:
    out = []
    eps = settings.report_eps
    arms = list(dict.fromkeys(a for role in ROLES if (a := settings.arms.get(role)) is not None))
    for arm in arms:
        for attack in ("fgsm", "pgd"):
            statement = f"{arm}'s certainty drops under {ATTACK_NAMES[attack]} at ε = {format_eps(eps)}"
            test = "hierarchical bootstrap CI of the within-arm paired drop (no test)"
            key = f"d/{arm}/{attack}"
            cell = rs.get(arm, attack, eps)
            if cell is None:
                reason = (f"arm {arm!r} has no attack results" if arm not in rs.arms
                          else f"no {ATTACK_NAMES[attack]} results at ε = {format_eps(eps)}")
                out.append(_Raw("d", key, statement, None, 1, test, reason))
                continue
            # same seed, same image: the pairing is exact, so the difference matrix is bootstrapped directly
            est = stats.hierarchical_mean(cell.clean_max_prob - cell.adv_max_prob, **settings.bootstrap)
            detail = (f"mean max-softmax probability {format_pct(cell.clean_max_prob.mean())} % before, "
                      f"{format_pct(cell.adv_max_prob.mean())} % after the attack")
            out.append(_Raw("d", key, statement, est, 1, test, detail))
    return out


def _decide(raw: _Raw, p_holm: float | None, settings: Settings) -> str:
    est = raw.estimate
    if est is None:
        return "not evaluated"
    if raw.expect == 0:  # equivalence: the whole CI inside the band, or entirely outside it
        lo, hi = settings.reference_fgsm_asr - settings.tolerance, settings.reference_fgsm_asr + settings.tolerance
        if not (math.isfinite(est.ci_low) and math.isfinite(est.ci_high)):
            return "inconclusive"
        if lo <= est.ci_low and est.ci_high <= hi:
            return "supported"
        if est.ci_high < lo or est.ci_low > hi:
            return "contradicted"
        return "inconclusive"
    sign = direction(est.ci_low, est.ci_high, p_holm, settings.alpha)
    if sign == 0:
        return "inconclusive"
    return "supported" if sign == raw.expect else "contradicted"


def _sentence(raw: _Raw, verdict: str, p_holm: float | None) -> str:
    est = raw.estimate
    if est is None:
        return f"{raw.statement}: not evaluated — {raw.detail}."
    if raw.claim == "b":
        return f"{raw.statement}: {verdict} — {raw.detail}."
    effect = (f"{'drop' if raw.claim == 'd' else 'difference'} {format_points(est.value)} points "
              f"[{format_points(est.ci_low)}, {format_points(est.ci_high)}]")
    tested = f"; {p_phrase('McNemar p', raw.p)}, {p_phrase('Holm p', p_holm)}" if raw.p is not None else ""
    return f"{raw.statement}: {verdict} — {raw.detail}; {effect}{tested} ({est.n_seeds} seeds)."


def findings(rs: ResultSet, settings: Settings, common_arms: Sequence[str] | None = None) -> list[Finding]:
    """The study's claims (a)-(d) decided from the data; one Holm correction over every finding with a p-value.

    Verdicts: (a) and (c) 'supported' when the CI lies on the claimed side of 0 and the Holm p < alpha,
    'contradicted' when on the other side with Holm p < alpha; (b) equivalence band reference ± tolerance;
    (d) CI above 0; otherwise 'inconclusive'; 'not evaluated' when a named arm or cell is absent.
    """
    raws = (_claim_a(rs, settings) + _claim_b(rs, settings) + _claim_c(rs, settings, common_arms)
            + _claim_d(rs, settings))
    # one Holm family: the tested findings, in order
    holm = iter(holm_family([r.result for r in raws if r.p is not None], settings.alpha))
    out = []
    for raw in raws:
        p_holm = None if raw.p is None else next(holm).p_holm
        verdict = _decide(raw, p_holm, settings)
        est = raw.estimate or stats.Estimate(math.nan, math.nan, math.nan, 0, 0)
        out.append(Finding(raw.claim, raw.key, raw.statement, verdict, est.value, est.ci_low, est.ci_high,
                           raw.p, p_holm, est.n_images, est.n_seeds, raw.test, raw.detail,
                           _sentence(raw, verdict, p_holm)))
    return out


def findings_json(found: Sequence[Finding], settings: Settings, common_sizes: Mapping[str, Mapping[str, int]],
                  check_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A JSON-able dict of the findings, the settings that decided them and the common-correct set sizes."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON has no NaN
        return value

    return {
        "settings": {"report_eps": settings.report_eps, "report_eps_label": format_eps(settings.report_eps),
                     "arms": dict(settings.arms), "reference_fgsm_asr": settings.reference_fgsm_asr,
                     "tolerance": settings.tolerance, "alpha": settings.alpha, "n_boot": settings.n_boot,
                     "seed": settings.seed, "confidence": settings.confidence},
        "verdicts": {f.key: f.verdict for f in found},
        "findings": [{k: clean(v) for k, v in asdict(f).items()} for f in found],
        "common_correct_images": {a: dict(v) for a, v in common_sizes.items()},
        "checks": dict(check_counts or {}),
    }
