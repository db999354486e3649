"""Markdown and figures: the study's report and the sweep report.

The study report, top-down: study (from the pipeline's files to the report, one call; what the report stage runs)
reads through inputs and renders through report (ReportInputs and the order of the sections), whose sections are
overview (Findings, Threat model, Table 1, training curves), per_attack (FGSM, PGD, paired comparisons), crosscheck
(beyond FGSM and PGD), defences and appendix (sanity checks, definitions, parameters); cells are what those sections
share, figures the PNGs. The sweep report is sweep. Numbers are written by robustlora.formatting; nothing here
imports robustlora.tracking (the stage logs).
"""
