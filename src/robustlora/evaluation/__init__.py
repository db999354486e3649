"""The attack stage's suite and the summaries of its per-image rows (suite), the study's metrics over such rows
(metrics), and the reuse of unchanged rows across runs of the stages that attack every arm (rowcache)."""
