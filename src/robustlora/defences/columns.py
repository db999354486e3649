"""The defences stage's table columns and attack names, apart from its torch code: the report reads the tables
without importing torch."""

SQUEEZE_COLUMNS = ["attack", "eps", "eps_label", "image", "label", "clean_correct", "adv_correct", "clean_score",
                   "adv_score", "clean_flagged", "adv_flagged", "threshold", "holdout_fpr"]
SWITCHING_COLUMNS = ["attack", "eps", "eps_label", "image", "label", "clean_correct", "adv_correct",
                     "clean_switched", "adv_switched"]
# the switching table's columns before SWITCHING_COLUMNS: which system (standard + robust arm) and training seed
SYSTEM_COLUMNS = ["system", "standard", "robust", "seed"]
# attacks on the switching system: an attacker unaware of it (PGD on the standard adapter), PGD on the robust
# adapter, the detector-evading adaptive attack on the standard adapter, PGD through the routed system; `worst`:
# per image, the system counts as robust only if it survives all of them
SWITCHING_ATTACKS = ("pgd_standard", "pgd_robust", "adaptive_evade", "pgd_system", "worst")
