"""Which DVC experiment (or workspace run) a stage belongs to, what it changed against its baseline, and the code
provenance tags every run carries. Only local git commands are run; DVC itself is never imported."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from robustlora.tracking.params import flatten_params
from robustlora.tracking.store import git

MAX_SWEPT_IN_NAME = 120


def git_tags(repo_root: Path | None = None) -> dict[str, str]:
    """Code provenance tags: git commit and dirty flag of ``repo_root`` (default cwd), DVC experiment env.

    Only local git commands are run; a missing git or a non-repo simply gives no git tags.
    """
    cwd = Path(repo_root) if repo_root is not None else Path.cwd()
    tags: dict[str, str] = {}
    commit = git(["rev-parse", "HEAD"], cwd)
    if commit:
        status = git(["status", "--porcelain", "--untracked-files=no"], cwd)
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        if status is not None:
            tags["git.dirty"] = "true" if status else "false"
    # DVC sets these during `dvc exp run` / `dvc repro`
    for env, tag in [("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")]:
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@dataclass(frozen=True)
class DvcExperiment:
    """Which DVC experiment (or workspace run) the current stage belongs to, and what it changed.

    ``name``: ``$DVC_EXP_NAME`` (set by ``dvc exp run``, also in a queue worker), else ``workspace@<commit>``.
    ``swept``: the params that differ from the baseline commit's params.yaml (``$DVC_EXP_BASELINE_REV``, else HEAD),
    flattened, e.g. ``{"lora.rank": "8"}``: what ``-S`` set, or what was edited by hand before ``dvc repro``.
    """

    name: str
    baseline_rev: str | None
    commit: str | None
    swept: Mapping[str, str]
    group: str | None = None  # the key as recorded by a stage (an outbox entry), logged later by another process

    @property
    def swept_text(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in sorted(self.swept.items()))
        return text if len(text) <= MAX_SWEPT_IN_NAME else text[: MAX_SWEPT_IN_NAME - 1] + "…"

    @property
    def label(self) -> str:
        """The run-name suffix: the experiment's name and its swept values, e.g. ``exp-1a2b3 lora.rank=8``."""
        return f"{self.name} {self.swept_text}".strip()

    @property
    def key(self) -> str:
        """Unique per experiment: DVC names are; a workspace run is keyed by its commit and its edits."""
        if self.group:
            return self.group
        if os.environ.get("DVC_EXP_NAME"):
            return f"exp:{self.name}"
        return f"workspace:{self.commit or 'nogit'}:{self.swept_text}"


def params_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, str]:
    """Flattened keys whose value differs between two params mappings (added keys included, removed as '∅')."""
    old, new = flatten_params(before), flatten_params(after)
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    changed.update({k: "∅" for k in old if k not in new})
    return changed


def dvc_experiment(params_file: str | os.PathLike = "params.yaml") -> DvcExperiment:
    """The current DVC experiment from DVC's environment and git (local commands only); see DvcExperiment.

    Computed once per process for the same params file, its content and DVC's variables (a stage opens several
    runs, each of which asks)."""
    params_file = Path(params_file).resolve()
    text = params_file.read_text() if params_file.is_file() else None
    return _dvc_experiment(params_file, text, os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_EXP_BASELINE_REV"))


@functools.lru_cache(maxsize=8)
def _dvc_experiment(params_file: Path, text: str | None, exp_name: str | None, baseline_rev: str | None
                    ) -> DvcExperiment:
    import yaml

    cwd = params_file.parent
    commit = git(["rev-parse", "HEAD"], cwd)
    baseline = baseline_rev or commit
    swept: dict[str, str] = {}
    if baseline and text is not None:
        before = git(["show", f"{baseline}:./{params_file.name}"], cwd)
        try:
            swept = params_diff(yaml.safe_load(before or "") or {}, yaml.safe_load(text) or {})
        except yaml.YAMLError:
            swept = {}
    name = exp_name or f"workspace@{(commit or 'nogit')[:7]}"
    return DvcExperiment(name=name, baseline_rev=baseline, commit=commit, swept=swept)
