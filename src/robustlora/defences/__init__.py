"""Defences as arms: feature squeezing (squeeze), adapter switching (switching), the defences stage's per-image rows
(evaluation) and its metrics (metrics)."""
