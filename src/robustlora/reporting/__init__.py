"""Markdown and figures: the study's report and the sweep report."""
