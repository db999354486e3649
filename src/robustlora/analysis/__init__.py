"""The study's numbers from per-image results: estimates, paired comparisons, findings, checks, defences.

Layers above (reporting, the stages) import from ``robustlora.analysis``; the modules inside, in the order data
flows: settings (what params decide), names (attack names), tables (per-image tables into (seeds, images) cells),
estimates (per-arm shares), compare (the one paired comparison and its Holm family), findings (the paper's claims),
summary (training table, headline), study (all of it at once), checks and masking (sanity and gradient-masking
checks), crosscheck (attacks beyond FGSM/PGD vs PGD), adversarial / squeezing / switching / defences (the defences).
The ε, share and p-value formatting re-exported here is robustlora.formatting's.
"""

from robustlora.analysis.adversarial import (ADVERSARIAL_COLUMNS, AUTOATTACK_COLUMNS, DIFFERENCE_COLUMNS,
                                             SHARE_INTERVAL, AdversarialArm, adversarial_arms,
                                             adversarial_differences, adversarial_table, defence_eps)
from robustlora.analysis.checks import (MIN_SANITY_SUCCESS, SLACK_IMAGES, STATUSES, TITLES, Check, attack_checks,
                                        count, run_checks, training_checks)
from robustlora.analysis.compare import (COMPARISON_COLUMNS, DIRECTION_WORDS, Comparison, common_correct, compare,
                                         comparison_table, direction, holm_family, paired_comparisons)
from robustlora.analysis.crosscheck import query_curves, settings_lines, subset, transfer_matrix, versus_pgd
from robustlora.analysis.defences import POINT_COLUMNS, Defences, analyse_defences, tradeoff_points
from robustlora.analysis.estimates import (METRICS, PROPORTIONS, arm_estimates, cell_estimate, grid_cells,
                                           seed_estimates)
from robustlora.analysis.findings import PAPER_CLEAN, VERDICTS, Finding, findings, findings_json
from robustlora.analysis.masking import masking_checks
from robustlora.analysis.names import (ATTACK_NAMES, ATTACK_ORDER, BLACK_BOX, TRANSFER_PREFIX, WHITE_BOX,
                                       attack_name, convergence_title, strong_pgd_name, transfer_source)
from robustlora.analysis.settings import ROLES, Settings
from robustlora.analysis.squeezing import (SQUEEZE_ORDER, SQUEEZE_TABLE_COLUMNS, SQUEEZE_VERDICT_COLUMNS,
                                           SQUEEZE_VERDICTS, THRESHOLD_COLUMNS, squeeze_table, squeeze_thresholds,
                                           squeeze_verdicts)
from robustlora.analysis.study import Analysis, analyse
from robustlora.analysis.summary import HEADLINE, headline, train_table
from robustlora.analysis.switching import (SWITCHING_COMPARISON_COLUMNS, SWITCHING_TABLE_COLUMNS,
                                           switching_comparisons, switching_table)
from robustlora.analysis.tables import (RESULT_COLUMNS, Cell, Outcomes, ResultSet, lookup_key, result_set,
                                        row_index, validate_results, validate_table, with_eps_key)
from robustlora.formatting import (EPS_DECIMALS, MISSING, eps_key, eps_text, format_eps, format_p, format_pct,
                                   format_points, p_phrase)

__all__ = [
    # settings and names
    "Settings", "ROLES", "ATTACK_ORDER", "ATTACK_NAMES", "WHITE_BOX", "BLACK_BOX", "TRANSFER_PREFIX", "attack_name",
    "transfer_source", "strong_pgd_name", "convergence_title",
    # per-image tables
    "RESULT_COLUMNS", "Cell", "Outcomes", "ResultSet", "result_set", "validate_table", "validate_results",
    "with_eps_key", "lookup_key", "row_index",
    # estimates, comparisons, findings, summaries
    "METRICS", "PROPORTIONS", "grid_cells", "cell_estimate", "arm_estimates", "seed_estimates",
    "COMPARISON_COLUMNS", "DIRECTION_WORDS", "Comparison", "compare", "direction", "holm_family",
    "comparison_table", "common_correct", "paired_comparisons",
    "VERDICTS", "PAPER_CLEAN", "Finding", "findings", "findings_json",
    "HEADLINE", "train_table", "headline", "Analysis", "analyse",
    # checks and cross-checks
    "STATUSES", "TITLES", "MIN_SANITY_SUCCESS", "SLACK_IMAGES", "Check", "attack_checks", "training_checks",
    "run_checks", "count", "masking_checks",
    "subset", "versus_pgd", "query_curves", "transfer_matrix", "settings_lines",
    # defences
    "AdversarialArm", "adversarial_arms", "AUTOATTACK_COLUMNS", "ADVERSARIAL_COLUMNS", "DIFFERENCE_COLUMNS",
    "SHARE_INTERVAL", "defence_eps", "adversarial_table", "adversarial_differences",
    "SQUEEZE_ORDER", "SQUEEZE_VERDICTS", "SQUEEZE_TABLE_COLUMNS", "SQUEEZE_VERDICT_COLUMNS", "THRESHOLD_COLUMNS",
    "squeeze_table", "squeeze_thresholds", "squeeze_verdicts",
    "SWITCHING_TABLE_COLUMNS", "SWITCHING_COMPARISON_COLUMNS", "switching_table", "switching_comparisons",
    "POINT_COLUMNS", "Defences", "analyse_defences", "tradeoff_points",
    # robustlora.formatting, re-exported for the layers above
    "MISSING", "EPS_DECIMALS", "eps_key", "eps_text", "format_eps", "format_pct", "format_points", "format_p",
    "p_phrase",
]
