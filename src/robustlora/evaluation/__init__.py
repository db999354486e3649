"""The attack stage's suite, its per-image results and their summaries."""
